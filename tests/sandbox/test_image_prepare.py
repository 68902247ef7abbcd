"""The sandbox image is built before it is needed, or the user is told the one command (issue 17).

Against the real Docker engine CI starts (no registry reachable, as in CI); the image name is
swapped for one that does not exist, so the shared image is never touched.
"""

from __future__ import annotations

import io
import logging
import time

import pytest
from gptoss_agent.sandbox import image as image_mod
from gptoss_agent.sandbox.base import SandboxError

MISSING = "gptoss-agent-sandbox:missing-in-this-test"


@pytest.fixture
def client():
    from _sandbox_support import docker_ready

    reason = docker_ready()
    if reason:
        pytest.skip(reason)  # in CI a failure (tests/_skip_policy.py): CI starts the engine
    import docker

    return docker.from_env()


@pytest.fixture
def no_debootstrap(monkeypatch, tmp_path):
    """A machine without debootstrap and with nothing built yet."""
    real_which = image_mod.shutil.which
    monkeypatch.setattr(image_mod.shutil, "which", lambda name: None if name == "debootstrap" else real_which(name))
    monkeypatch.setenv("GPTOSS_SANDBOX_CACHE", str(tmp_path / "cache"))


def test_no_debootstrap_and_no_registry_names_the_package(client, no_debootstrap):
    assert not image_mod._registry_answers(client)  # CI reaches no registry
    problem = image_mod.build_problem(client)
    assert problem is not None and "apt-get install debootstrap" in problem and "\n" not in problem
    started = time.monotonic()
    with pytest.raises(SandboxError) as info:
        image_mod.build_image(client, MISSING)  # auto: no silent Dockerfile attempt
    assert str(info.value) == problem
    assert time.monotonic() - started < 60  # generous: it must not sit in a doomed build


def test_debootstrap_as_root_can_build(client, monkeypatch, tmp_path):
    monkeypatch.setenv("GPTOSS_SANDBOX_CACHE", str(tmp_path / "cache"))
    if image_mod.shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (CI installs it)")
    import os

    assert (image_mod.build_problem(client) is None) == (os.geteuid() == 0)


def test_expected_time_comes_from_the_last_build(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTOSS_SANDBOX_CACHE", str(tmp_path))
    assert image_mod.expected_build_seconds() == image_mod.DEBOOTSTRAP_SECONDS
    (tmp_path / "rootfs-" f"{image_mod.IMAGE_VERSION}").mkdir()
    (tmp_path / f"rootfs-{image_mod.IMAGE_VERSION}" / ".complete").touch()
    assert image_mod.expected_build_seconds() == image_mod.IMPORT_SECONDS
    (tmp_path / "last-build-seconds").write_text("97\n")
    assert image_mod.expected_build_seconds() == 97


def test_the_progress_bar_shows_the_expected_time(monkeypatch, tmp_path):
    """The bar against the expected time, on a terminal (the build itself replaced: it takes minutes)."""
    from gptoss_agent.sandbox import __main__ as cli
    from rich.console import Console

    monkeypatch.setenv("GPTOSS_SANDBOX_CACHE", str(tmp_path))
    (tmp_path / "last-build-seconds").write_text("150\n")

    def fake_build(client, image, *, method, progress, force):
        for line in ("I: Retrieving python3", "I: Extracting base-files", "importing 803 MiB"):
            progress(line)
            time.sleep(0.4)

    monkeypatch.setattr(cli, "build_image", fake_build)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    cli.build_with_progress(None, MISSING, method="debootstrap", console=console)
    text = out.getvalue()
    assert "of about 2 min 30 s" in text and f"built the sandbox image {MISSING}" in text


def test_auto_falls_back_to_bubblewrap_in_one_line_when_no_image_can_be_built(
    client, no_debootstrap, monkeypatch, tmp_path, capsys
):
    """The CLI notices before loading the model: one line, then bubblewrap."""
    from _sandbox_support import bwrap_ready
    from gptoss_agent.agent.cli import main

    if bwrap_ready():
        pytest.skip(bwrap_ready())
    monkeypatch.setattr(image_mod, "DEFAULT_IMAGE", MISSING)
    status = main(["x", "--tools", "python", "--model", str(tmp_path)])  # tmp_path: no config.json
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(err) == 2, err
    assert err[0].startswith("gptoss-agent: python runs under bubblewrap: Docker answers, but ")
    assert "apt-get install debootstrap" in err[0]
    assert "no config.json" in err[1]  # the model came after the image, as it should


def test_docker_chosen_and_no_image_buildable_is_one_sentence(client, no_debootstrap, monkeypatch, tmp_path, capsys):
    from gptoss_agent.agent.cli import main

    monkeypatch.setattr(image_mod, "DEFAULT_IMAGE", MISSING)
    status = main(["x", "--tools", "python", "--sandbox", "docker", "--model", str(tmp_path)])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and "apt-get install debootstrap" in line and line.endswith(".")


def test_the_python_tool_never_builds_inside_a_call(client, monkeypatch, caplog):
    """First use inside a tool call with the image missing: no build, bubblewrap instead, said once."""
    from _sandbox_support import bwrap_ready
    from gptoss_agent.tools import Python

    if bwrap_ready():
        pytest.skip(bwrap_ready())
    monkeypatch.setattr(image_mod, "DEFAULT_IMAGE", MISSING)
    monkeypatch.setattr(image_mod, "build_image", lambda *a, **k: pytest.fail("built inside a tool call"))
    with caplog.at_level(logging.WARNING, logger="gptoss_agent.sandbox.open"), Python(timeout=30) as tool:
        out = tool.call("python", "print(6 * 7)")
        assert out.content.strip() == "42"
        assert tool.session.backend == "bubblewrap"
    (record,) = [r for r in caplog.records if "bubblewrap" in r.getMessage()]
    assert MISSING in record.getMessage() and "build-image" in record.getMessage()


def test_build_image_command_without_debootstrap_or_registry_is_one_sentence(client, tmp_path):
    """`python -m gptoss_agent.sandbox build-image` used to fall back to a Dockerfile build silently
    and fail with `no such host`."""
    import os
    import shutil
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"  # a PATH with the usual tools but no debootstrap
    bin_dir.mkdir()
    for tool in ("tar", "umount"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir), "GPTOSS_SANDBOX_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "gptoss_agent.sandbox", "build-image", "--image", MISSING],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: the sandbox image cannot be built") and "apt-get install debootstrap" in line
    assert "Traceback" not in done.stderr and "no such host" not in done.stderr
