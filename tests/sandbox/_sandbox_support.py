"""Helpers of the sandbox tests: sessions on every backend with small limits, so that the
adversarial cases end quickly."""

from __future__ import annotations

import functools
import os
import subprocess
import time

import pytest
from gptoss_agent.sandbox import Limits, open_sandbox
from gptoss_agent.sandbox.image import DEFAULT_IMAGE

MiB = 1024 * 1024
SMALL = Limits(
    timeout=4, memory=384 * MiB, cpus=1, pids=64, data_disk=16 * MiB, tmp_disk=16 * MiB, output_chars=4000
)


_docker_seen = False


def docker_ready() -> str | None:
    """None when a Docker engine answers and the sandbox image exists, else why not.

    A yes is remembered; a no is not, and under CI (where the test command has started the engine)
    the engine gets 30 s to answer a 10 s ping: a CI run once met the engine slow to answer the
    product's 3 s ping, and the no remembered from that moment failed every docker test after it."""
    global _docker_seen
    if _docker_seen:
        return None
    import docker

    deadline = time.monotonic() + (30 if os.environ.get("CI") else 0)
    while True:
        try:
            client = docker.from_env(timeout=10)
            try:
                client.ping()
                client.images.get(DEFAULT_IMAGE)
            finally:
                client.close()
        except docker.errors.ImageNotFound:
            return f"the image {DEFAULT_IMAGE} is missing (scripts/setup_sandbox.sh builds it)"
        except Exception as exc:  # any failure to reach the engine is a "no"
            if time.monotonic() >= deadline:
                return f"no Docker engine answers (scripts/setup_sandbox.sh starts one): {type(exc).__name__}: {exc}"
            time.sleep(2)
            continue
        _docker_seen = True
        return None


@functools.cache
def bwrap_ready() -> str | None:
    from gptoss_agent.sandbox.bubblewrap import bubblewrap_available

    return None if bubblewrap_available() else "bubblewrap is missing or cannot create namespaces here"


BACKENDS = [
    pytest.param("docker", marks=pytest.mark.docker),
    pytest.param("bubblewrap", marks=pytest.mark.bwrap),
]


def open_backend(backend: str, limits: Limits = SMALL):
    reason = {"docker": docker_ready, "bubblewrap": bwrap_ready}.get(backend, lambda: None)()
    if reason:
        if os.environ.get("CI"):  # the test command starts both: a missing one is a failure there
            pytest.fail(f"{backend}: {reason}")
        pytest.skip(reason)
    return open_sandbox(backend, limits=limits)


def host_processes_matching(marker: str) -> list[str]:
    """Command lines of host processes that contain ``marker`` (the sandbox shares the kernel)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def assert_answers(session) -> None:
    """The session still works after the attack."""
    ex = session.run("6 * 7")
    assert ex.value == "42", ex.output


def assert_host_fine() -> None:
    """The host can still start processes and write files."""
    assert subprocess.run(["true"], timeout=10).returncode == 0
