"""Building the C kernels: a cache key per CPU, a failed compile reported once with the compiler's
message, the path in use named, and ``GPTOSS_REQUIRE_KERNELS=1`` turning a failure into an error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gptoss_agent.model import kernels

PROBE = """
import warnings
warnings.simplefilter("always")
import torch
from gptoss_agent.model import kernels
x, w = torch.randn(1, 64), torch.randn(8, 64).bfloat16()
for _ in range(3):
    kernels.linear(x, w, None)
print("available", kernels.available())
print(kernels.describe())
"""


def _fake_compiler(tmp_path: Path) -> Path:
    cc = tmp_path / "fakecc"
    cc.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fakecc 1.0; exit 0; }\necho 'kernels.c:1:1: error: the test compiler refuses' >&2\nexit 1\n")
    cc.chmod(0o755)
    return cc


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("GPTOSS_REQUIRE_KERNELS", "GPTOSS_KERNELS")}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, "GPTOSS_KERNEL_CACHE": str(tmp_path / "cache"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_library_in_use_is_named():
    assert kernels.available(), kernels.describe()  # CI has a C compiler: the kernels must build
    described = kernels.describe()
    assert described.startswith("C kernels ") and ".so" in described
    path = Path(described.removeprefix("C kernels ").split(" (")[0])
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    assert path.is_file() and kernels.cache_key(cc) in path.name


def test_the_cache_key_follows_the_cpu(monkeypatch):
    key = kernels.cache_key("cc")
    assert kernels.cache_key("cc") == key  # stable
    assert "flags=" in kernels.cpu_signature() or "Features=" in kernels.cpu_signature()
    monkeypatch.setattr(kernels, "cpu_signature", lambda: "x86_64\nflags=fpu sse sse2")  # an older CPU
    assert kernels.cache_key("cc") != key
    monkeypatch.setattr(kernels, "FLAGS", [*kernels.FLAGS, "-DNDEBUG"])
    assert kernels.cache_key("cc") != key


def test_a_failed_compile_is_reported_once_with_the_compilers_message(tmp_path):
    done = _run(tmp_path, CC=str(_fake_compiler(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "available False" in done.stdout
    assert "the test compiler refuses" in done.stdout  # describe() says why plain torch runs
    warned = [line for line in done.stderr.splitlines() if "C kernels are off" in line]
    assert len(warned) == 1 and "the test compiler refuses" in warned[0], done.stderr


def test_required_kernels_that_do_not_compile_are_an_error(tmp_path):
    done = _run(tmp_path, CC=str(_fake_compiler(tmp_path)), GPTOSS_REQUIRE_KERNELS="1")
    assert done.returncode != 0
    assert "KernelBuildError" in done.stderr and "the test compiler refuses" in done.stderr


def test_kernels_switched_off_say_so(tmp_path):
    done = _run(tmp_path, GPTOSS_KERNELS="0", GPTOSS_REQUIRE_KERNELS="1")
    assert done.returncode == 0, done.stderr
    assert "available False" in done.stdout and "GPTOSS_KERNELS=0" in done.stdout
    assert "C kernels are off" not in done.stderr  # asked for, so not warned about
