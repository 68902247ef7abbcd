"""The skip policy, run on a throwaway test file by a real pytest in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

CASES = '''
import pytest

def test_needs_docker():
    pytest.skip("no Docker engine answers (scripts/setup_sandbox.sh starts one)")

@pytest.mark.skipif(True, reason="compiled kernels unavailable (no C compiler, or GPTOSS_KERNELS=0)")
def test_needs_kernels():
    pass

def test_needs_the_extras():
    pytest.importorskip("a_module_nobody_has")

def test_other_architecture():
    pytest.skip("the attack's system call numbers are x86-64's")

@pytest.mark.xfail(reason="docker is flaky", run=False)
def test_expected_failure():
    pass
'''


def _pytest(tmp_path: Path, **env: str) -> str:
    (tmp_path / "conftest.py").write_text("from _skip_policy import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_cases.py").write_text(CASES)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "GPTOSS_CI")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(tmp_path)],
        env={**base, "PYTHONPATH": str(TESTS), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return done.stdout


def test_in_ci_a_skip_for_what_ci_provides_fails(tmp_path):
    out = _pytest(tmp_path, GPTOSS_CI="1")
    # a skipif marker skips in setup, so that one counts as an error: either way the run fails
    assert "2 failed, 1 skipped, 1 xfailed, 1 error" in out, out
    assert "compiled kernels unavailable" in out
    assert "scripts/test.sh provides what this test needs: no Docker engine answers" in out
    assert "x86-64" in out.split("short test summary")[1]  # still listed, as a skip


def test_outside_ci_skips_stay_skips(tmp_path):
    out = _pytest(tmp_path)
    assert "4 skipped, 1 xfailed" in out, out
