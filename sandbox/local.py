"""``dangerous-local``: the driver as a plain subprocess of the host, WITHOUT ANY ISOLATION.

The model's code can read and change everything the host user can, and reach the network. Only
for trusted code and for debugging the driver; the backend's name says so on purpose. A timeout
kills the driver's process group (children that start a new session survive it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from .limits import Limits
from .repl import Channel, PipeChannel, ReplSession, describe_exit, driver_source, sandbox_env

__all__ = ["DangerousLocalSession"]


class DangerousLocalSession(ReplSession):
    """A session with no sandbox at all: the working directory is a temporary folder."""

    backend = "dangerous-local"

    def __init__(self, limits: Limits | None = None, *, python: str | None = None) -> None:
        super().__init__(limits or Limits())
        self.python = python or sys.executable
        self.workdir = tempfile.mkdtemp(prefix="gptoss-dangerous-local-")
        self._process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> Channel:
        env = {**sandbox_env(self.limits), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update(
            HOME=self.workdir, SANDBOX_CWD=self.workdir, MPLCONFIGDIR=os.path.join(self.workdir, ".mpl")
        )
        os.makedirs(self.workdir, exist_ok=True)
        self._process = subprocess.Popen(
            [self.python, "-I", "-c", driver_source()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        return PipeChannel(self._process)

    def _death_reason(self) -> str:
        if self._process is None:
            return describe_exit(None)
        try:
            return describe_exit(self._process.wait(timeout=1))
        except subprocess.TimeoutExpired:
            return "the Python process stopped answering"

    def _kill(self) -> bool:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # its process group outlives it while members remain
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        return True

    def _teardown(self) -> None:
        self._kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
