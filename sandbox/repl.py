"""The host side of a session: talks to the in-sandbox driver, enforces timeouts, restarts.

Backends differ only in how they start the driver and how they kill everything it started;
``ReplSession`` does the rest (framing, output assembly, timeouts, crash recovery, locking).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from .base import Execution, SandboxError
from .driver import HEADER, MAX_FRAME, clean, encode_frame
from .limits import Limits, MiB

__all__ = [
    "Channel",
    "PipeChannel",
    "ReplSession",
    "SocketChannel",
    "describe_exit",
    "driver_source",
    "sandbox_env",
]

STARTUP_TIMEOUT = 60.0
"""Seconds a fresh driver may take to say it is ready."""
DIAGNOSTICS_CAP = 16_000


def driver_source() -> str:
    """The driver's source, passed to the sandbox's Python with ``-c`` (nothing is mounted)."""
    return (Path(__file__).with_name("driver.py")).read_text()


def sandbox_env(limits: Limits) -> dict[str, str]:
    """The whole environment of sandboxed code: nothing of the host's."""
    threads = str(max(1, int(limits.cpus)))
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "OPENBLAS_NUM_THREADS": threads,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


def describe_exit(code: int | None, *, memory_killed: bool | None = None) -> str:
    """An exit status in words: ``exit status 3``, ``killed by SIGSEGV``. ``memory_killed``: whether
    the memory limit killed a process (None when the backend cannot tell)."""
    if code is None:
        return "the Python process ended"
    number = -code if code < 0 else code - 128 if code > 128 else 0
    if not number:
        return f"exit status {code}"
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"exit status {code}"
    if number == signal.SIGKILL and memory_killed is None:
        return "killed by SIGKILL: most likely the memory limit was reached"
    if number == signal.SIGKILL and memory_killed:
        return "killed by SIGKILL: the memory limit was reached"
    return f"killed by {name}"


class Channel(ABC):
    """The byte pipe to one driver process: the driver's stdin, stdout and stderr."""

    diagnostics: str = ""

    @abstractmethod
    def send(self, data: bytes) -> None: ...

    @abstractmethod
    def read(self, timeout: float) -> bytes | None:
        """Bytes of the driver's stdout; ``b""`` at end of file; None when ``timeout`` passed."""

    @abstractmethod
    def close(self) -> None: ...

    def _note(self, data: bytes) -> None:
        if len(self.diagnostics) < DIAGNOSTICS_CAP:
            self.diagnostics += clean(data.decode("utf-8", "backslashreplace"))[:DIAGNOSTICS_CAP]


class PipeChannel(Channel):
    """A local process (bubblewrap, or the dangerous local backend) over its three pipes."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin and process.stdout and process.stderr
        self.process = process
        self._out, self._err = process.stdout.fileno(), process.stderr.fileno()
        self._err_open = True

    def send(self, data: bytes) -> None:
        assert self.process.stdin
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the read side reports the end of the driver

    def read(self, timeout: float) -> bytes | None:
        import os

        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            fds = [self._out, self._err] if self._err_open else [self._out]
            ready, _, _ = select.select(fds, [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                return None
            if self._err in ready:
                data = os.read(self._err, 65536)
                if data:
                    self._note(data)
                else:
                    self._err_open = False
            if self._out in ready:
                return os.read(self._out, 1 << 20)

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass


class SocketChannel(Channel):
    """A Docker exec attached over the engine's socket: stdout and stderr arrive multiplexed in
    frames of an 8-byte header (stream, 0, 0, 0, big-endian size) and the payload."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._raw = b""
        self._pending = 0  # payload bytes left in the current frame
        self._stream = 1
        self.sock.setblocking(True)

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def read(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            out = self._demux()
            if out:
                return out
            ready, _, _ = select.select([self.sock], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                return None
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                return b""
            self._raw += data

    def _demux(self) -> bytes:
        out = bytearray()
        while self._raw:
            if self._pending == 0:
                if len(self._raw) < 8:
                    break
                self._stream = self._raw[0]
                self._pending = int.from_bytes(self._raw[4:8], "big")
                self._raw = self._raw[8:]
                continue
            payload, self._raw = self._raw[: self._pending], self._raw[self._pending :]
            self._pending -= len(payload)
            if self._stream == 1:
                out += payload
            else:
                self._note(payload)
        return bytes(out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class FrameReader:
    """Frames (length + JSON) out of a channel's byte stream."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.buf = bytearray()

    def next(self, deadline: float) -> dict[str, Any] | None:
        """The next message; None at the deadline; raises EOFError when the driver is gone."""
        while True:
            if len(self.buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buf)
                if size > MAX_FRAME:
                    raise EOFError("the driver sent a frame that is too large")
                if len(self.buf) >= HEADER.size + size:
                    body = bytes(self.buf[HEADER.size : HEADER.size + size])
                    del self.buf[: HEADER.size + size]
                    try:
                        message = json.loads(body)
                    except ValueError as exc:
                        raise EOFError("the driver sent a malformed frame") from exc
                    if not isinstance(message, dict):
                        raise EOFError("the driver sent a malformed frame")
                    return message
            data = self.channel.read(deadline - time.monotonic())
            if data is None:
                return None
            if not data:
                raise EOFError("the driver's output ended")
            self.buf += data


def _join(parts: list[str]) -> str:
    out = ""
    for part in parts:
        if not part:
            continue
        if out and not out.endswith("\n"):
            out += "\n"
        out += part
    return out


def _restarted(
    head: list[tuple[str, str]], note: str, started: float, *, timed_out: bool = False
) -> Execution:
    """The result of a run the session had to restart: what it printed before, then ``note``."""
    return Execution(
        output=_join(["".join(t for _, t in head), note]),
        stdout="".join(t for s, t in head if s == "stdout"),
        stderr="".join(t for s, t in head if s == "stderr"),
        error=note,
        timed_out=timed_out,
        restarted=True,
        duration=time.monotonic() - started,
    )


def _lost(files_kept: bool) -> str:
    files = "files in /mnt/data were kept" if files_kept else "the files in /mnt/data were lost too"
    return f"all variables, imports and definitions were lost; {files}"


class ReplSession(ABC):
    """A stateful Python session driven over a channel; subclasses supply the isolation."""

    backend: str = "?"
    start_grace: float = 10.0
    """Seconds the sandbox's Python has to take a request before the session counts it broken
    (code left running by an earlier cell is reading the requests); it is restarted then."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.timeout = limits.timeout
        self._lock = threading.Lock()
        self._channel: Channel | None = None
        self._reader: FrameReader | None = None
        self._closed = False
        self.python_version: str | None = None

    # -- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _spawn(self) -> Channel:
        """Start a fresh driver (and whatever it lives in) and return its channel."""

    @abstractmethod
    def _kill(self) -> bool:
        """Kill every process the session's code started. True when /mnt/data survived."""

    @abstractmethod
    def _teardown(self) -> None:
        """Release everything (container, temporary directories)."""

    def _death_reason(self) -> str:
        """Why the driver ended, as well as the backend can tell."""
        return "the Python process exited"

    # -- the session -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the driver now (otherwise the first ``run`` does)."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox session is closed")
        if self._channel is not None:
            return
        channel = self._spawn()
        reader = FrameReader(channel)
        try:
            message = reader.next(time.monotonic() + STARTUP_TIMEOUT)
        except EOFError:
            message = None
        if not message or message.get("type") != "ready":
            channel.close()
            self._kill()
            detail = channel.diagnostics.strip()[-2000:] or "no output"
            raise SandboxError(f"the {self.backend} sandbox's Python did not start: {detail}")
        self.python_version = str(message.get("python"))
        self._channel, self._reader = channel, reader

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._reader = None

    def run(self, code: str, timeout: float | None = None) -> Execution:
        """Run one cell of code in the session and return what it printed, showed or raised."""
        timeout = self.timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        with self._lock:
            self._ensure_started()  # a fresh driver's start has its own limit, STARTUP_TIMEOUT
            started = time.monotonic()
            assert self._channel and self._reader
            request_id = secrets.token_hex(8)  # frames of any other request are not this call's
            self._channel.send(
                encode_frame(
                    {
                        "type": "run",
                        "id": request_id,
                        "code": code,
                        "output_chars": self.limits.output_chars,
                        "cpu_seconds": timeout * max(1.0, self.limits.cpus) + 5,
                        "start_grace": self.start_grace,
                    }
                )
            )
            head: list[tuple[str, str]] = []
            head_len = 0
            deadline = started + timeout
            while True:
                try:
                    message = self._reader.next(deadline)
                except EOFError:
                    return self._after_death(head, started)
                if message is None:
                    return self._after_timeout(head, started, timeout)
                kind = message.get("type")
                if message.get("id") != request_id:
                    continue
                if kind == "out" and head_len < self.limits.output_chars:
                    text = clean(str(message.get("text", "")))[: self.limits.output_chars - head_len]
                    head.append((str(message.get("stream")), text))
                    head_len += len(text)
                elif kind == "done":
                    return self._finish(head, message, started)

    async def arun(self, code: str, timeout: float | None = None) -> Execution:
        """``run`` for async code: the call runs in a worker thread."""
        import asyncio

        return await asyncio.to_thread(self.run, code, timeout)

    def _finish(self, head: list[tuple[str, str]], done: dict[str, Any], started: float) -> Execution:
        tail = [(str(s), clean(str(t))) for s, t in done.get("tail") or []]
        cut = int(done.get("cut") or 0)
        value = done.get("value")
        error = done.get("error")
        value = clean(value) if isinstance(value, str) else None
        error = clean(error) if isinstance(error, str) else None
        chunks = head + tail
        text = "".join(t for _, t in head)
        if cut:
            text = _join([text, f"[... {cut} characters of output cut ...]\n"])
        text += "".join(t for _, t in tail)
        return Execution(
            output=_join([text, value or "", error or ""]),
            stdout="".join(t for s, t in chunks if s == "stdout"),
            stderr="".join(t for s, t in chunks if s == "stderr"),
            value=value,
            error=error,
            duration=time.monotonic() - started,
        )

    def _after_timeout(self, head: list[tuple[str, str]], started: float, timeout: float) -> Execution:
        kept = self._kill()
        self._drop_channel()
        note = (
            f"[Timed out after {timeout:g} s: the code was stopped and the Python session was restarted; "
            f"{_lost(kept)}.]"
        )
        return _restarted(head, note, started, timed_out=True)

    def _after_death(self, head: list[tuple[str, str]], started: float) -> Execution:
        if self._closed:
            raise SandboxError("the sandbox session was closed while code was running")
        diagnostics = self._channel.diagnostics.strip() if self._channel else ""
        reason = self._death_reason()
        kept = self._kill()
        self._drop_channel()
        note = f"[The Python process died ({reason}). The session was restarted; {_lost(kept)}.]"
        if diagnostics:
            note = _join([diagnostics[-2000:], note])
        return _restarted(head, note, started)

    def reset(self) -> None:
        """Forget all state: a fresh interpreter and empty /mnt/data and /tmp."""
        with self._lock:
            self._drop_channel()
            self._reset_everything()

    def _reset_everything(self) -> None:
        self._kill()
        self._teardown()

    def close(self) -> None:
        """Stop the session and release everything it holds (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._teardown()  # without the lock: a running call ends at once
        with self._lock:
            self._drop_channel()
            self._teardown()

    def __enter__(self) -> ReplSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        memory = self.limits.memory // MiB
        return f"<{type(self).__name__} timeout={self.timeout:g}s memory={memory}MiB closed={self._closed}>"
