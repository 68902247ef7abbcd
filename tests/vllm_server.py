"""Starting a short-lived vLLM CPU server for one test module (``scripts/setup_vllm.sh`` starts the
long-lived one and exports ``GPTOSS_VLLM_PYTHON``, vLLM's interpreter)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def vllm_python() -> str:
    """vLLM's interpreter; the test fails when it is missing (the test command installs vLLM)."""
    if error := os.environ.get("GPTOSS_VLLM_ERROR"):
        pytest.fail(f"vLLM was to be set up but was not: {error}")
    python = os.environ.get("GPTOSS_VLLM_PYTHON")
    if not python:
        pytest.fail(
            "GPTOSS_VLLM_PYTHON (vLLM's interpreter) is not set: run the tests through scripts/test.sh, "
            "whose scripts/setup_vllm.sh installs vLLM and exports it"
        )
    return python


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def vllm_server(
    model: Path, name: str, log: Path, *extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """vLLM serving ``model`` as ``name`` in float32 (greedy output then matches ``LocalEngine``) on a
    free port of 127.0.0.1 while the block runs: ``(url, process)``. The test fails with the end of
    ``log`` when the server does not come up within 5 minutes."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    args = [
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--enforce-eager",
        *extra,
    ]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"vLLM serving {model} did not start:\n{log.read_text(errors='replace')[-3000:]}"
                    )
                time.sleep(1)
            yield url, proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
