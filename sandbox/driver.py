"""The REPL driver that runs inside the sandbox: a notebook kernel in one small file.

It runs under the sandbox's own Python (standard library only, Python 3.9+) as two processes:

- the *supervisor* (``Supervisor``), the process the host starts. It talks to the host over its
  stdin/stdout, runs no user code, and cannot be reached by it: it marks itself non-dumpable, so
  processes of the same user cannot open its ``/proc/PID/fd`` or trace it (under bubblewrap it is
  also PID 1, which no process of the sandbox can signal);
- the *kernel* (``Driver``), forked by the supervisor, which runs the cells. It holds no
  descriptor of the host's: it speaks the same frames to the supervisor over two pipes.

Code in a cell can therefore write or read only the kernel's pipes. The supervisor relays to the
host only well-formed frames of the request it is serving (each request carries a random id that
the kernel echoes), so forged frames are dropped and the session stays in step; malformed data
ends the kernel like a crash would. When the host's end closes, the supervisor kills the kernel
and exits (the session's liveness link).

Frames are a 4-byte big-endian length, then UTF-8 JSON:

host -> driver  ``{"type": "run", "id": str, "code": str, "output_chars": int, "cpu_seconds": float,
                "start_grace": float}``
driver -> host  ``{"type": "ready", "python": str}`` once, at start
                ``{"type": "out", "id": str, "stream": "stdout"|"stderr", "text": str}`` while a
                cell runs (only the head of long output; the host keeps what came before a timeout)
                ``{"type": "done", "id": str, "tail": [[stream, text], ...], "cut": int,
                "value": str|None, "error": str|None}`` when the cell is finished

A cell runs like a notebook cell: every statement is executed and the value of a final expression
is shown as its ``repr``. Output written to ``sys.stdout``/``sys.stderr`` and to file descriptors
1 and 2 (subprocesses) is captured in order.
"""

from __future__ import annotations

import ast
import codecs
import collections
import contextlib
import io
import json
import linecache
import os
import resource
import select
import signal
import struct
import sys
import threading
import time
import traceback
import types

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
START_GRACE = 10.0
"""Seconds the kernel has to acknowledge a request (its main thread is idle, waiting for it),
unless the request says otherwise."""


def encode_frame(message: dict) -> bytes:
    """One frame: the length of the JSON body, then the body."""
    body = json.dumps(message, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return HEADER.pack(len(body)) + body


def clean(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates (undecodable bytes) become backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cap(text: str, limit: int) -> str:
    """``text`` whole, or its head and tail with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}\n[... {len(text) - limit} characters cut ...]\n{text[-(limit // 2) :]}"


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        data = os.read(fd, n)
        if not data:
            raise EOFError
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Recorder:
    """Output of one cell in order: the head is sent as it comes, the tail kept for the end."""

    def __init__(self, send, limit: int) -> None:
        self.send = send
        self.head_left = limit - limit // 2
        self.tail_limit = limit // 2
        self.tail: collections.deque = collections.deque()
        self.tail_len = 0
        self.cut = 0
        self.lock = threading.Lock()

    def add(self, stream: str, text: str) -> None:
        if not text:
            return
        if not text.isascii():
            text = clean(text)
        with self.lock:
            if self.head_left > 0:
                head, text = text[: self.head_left], text[self.head_left :]
                self.head_left -= len(head)
                self.send({"type": "out", "stream": stream, "text": head})
                if not text:
                    return
            self.tail.append([stream, text])
            self.tail_len += len(text)
            if self.tail_len > 2 * self.tail_limit + 65536:
                self._trim()  # amortized: a flood of small writes stays cheap

    def _trim(self) -> None:
        while self.tail_len > self.tail_limit:
            excess = self.tail_len - self.tail_limit
            first = self.tail[0]
            if len(first[1]) <= excess:
                self.tail.popleft()
                dropped = len(first[1])
            else:
                first[1] = first[1][excess:]
                dropped = excess
            self.tail_len -= dropped
            self.cut += dropped

    def finish(self) -> tuple[list, int]:
        """The tail and how many characters were cut; later output is dropped."""
        with self.lock:
            self._trim()
            self.head_left = 0
            tail, self.tail = [list(item) for item in self.tail], collections.deque()
            cut, self.tail_len, self.tail_limit = self.cut, 0, 0
            return tail, cut


class TextStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` during a cell: text and bytes go straight to the recorder."""

    def __init__(self, driver: Driver, name: str, fd: int) -> None:
        super().__init__()
        self._driver, self._name, self._fd = driver, name, fd
        self.buffer = BytesStream(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        driver = self._driver
        # Under the pump's lock: a pump thread that is recording what a subprocess wrote (it sets
        # ``collected`` before it reads) finishes first, so that output keeps its place.
        with driver.pump_lock:
            if time.monotonic() - driver.collected > 0.0002:  # at most every 0.2 ms: cheap for print loops
                driver.collect_pipes()
            driver.recorder.add(self._name, s)
        return len(s)


class BytesStream(io.RawIOBase):
    """``sys.stdout.buffer``: bytes are decoded as UTF-8, invalid bytes shown as ``\\xNN``."""

    def __init__(self, text: TextStream) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._text.fileno()

    def write(self, b) -> int:
        data = bytes(b)
        self._text.write(self._decoder.decode(data))
        return len(data)

    def flush(self) -> None:
        pass


class Driver:
    def __init__(self) -> None:
        # The protocol moves to private descriptors; 0, 1 and 2 become /dev/null and two pipes
        # whose other ends pump into the recorder (this captures subprocesses too).
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        self.pid = os.getpid()
        self.send_lock = threading.Lock()
        self.recorder = Recorder(self.send, 1)
        self.pump_lock = threading.RLock()  # reentrant: a write holds it while it collects
        self.pipes = {}
        self.collected = 0.0
        for fd, name in ((1, "stdout"), (2, "stderr")):
            r, w = os.pipe()
            os.set_blocking(r, False)
            decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
            self.pipes[fd] = (r, w, name, decoder)
            threading.Thread(target=self._pump, args=(r,), daemon=True).start()
        self._reset_fds()
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = self.module
        self.cells = 0
        self.request_id = None
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past RLIMIT_FSIZE fail with EFBIG
        os.register_at_fork(after_in_child=self._after_fork)

    def send(self, message: dict) -> None:
        if message.get("type") != "ready":
            message["id"] = self.request_id
        frame = encode_frame(message)
        with self.send_lock:
            _write_all(self.proto_out, frame)

    def _after_fork(self) -> None:
        # A forked child writes to the pipes like any subprocess, never into the protocol.
        os.close(self.proto_in)
        os.close(self.proto_out)
        for fd in (1, 2):
            stream = io.TextIOWrapper(
                io.FileIO(fd, "w", closefd=False),
                encoding="utf-8",
                errors="backslashreplace",
                write_through=True,
            )
            setattr(sys, "stdout" if fd == 1 else "stderr", stream)

    def _pump(self, r: int) -> None:
        while True:
            select.select([r], [], [])
            self.collect_pipes()

    def collect_pipes(self) -> None:
        """Record what is waiting in the pipes of fds 1 and 2 (subprocesses, ``os.write``).
        Called before each Python-level write too, so both kinds of output keep their order."""
        with self.pump_lock:
            self.collected = time.monotonic()
            for r, _, name, decoder in self.pipes.values():
                while True:
                    try:
                        data = os.read(r, 65536)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    self.recorder.add(name, decoder.decode(data))

    def _reset_fds(self) -> None:
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
        for fd, (_, w, _, _) in self.pipes.items():
            os.dup2(w, fd)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        for fd, name in ((1, "stdout"), (2, "stderr")):
            stream = TextStream(self, name, fd)
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)

    def run_cell(self, code: str, filename: str):
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = ast.Expression(final.value)
        namespace = self.module.__dict__
        exec(compile(tree, filename, "exec"), namespace)
        if last is None:
            return None
        value = eval(compile(last, filename, "eval"), namespace)
        if value is not None:
            namespace["_"] = value
        return value

    def format_error(self, exc: BaseException) -> str:
        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
            tb = tb.tb_next  # the driver's own frames (and ast.parse's, for a SyntaxError)
        return clean("".join(traceback.format_exception(type(exc), exc, tb)))

    def handle(self, request: dict) -> None:
        self.request_id = request.get("id")
        limit = max(int(request.get("output_chars", 20000)), 2)
        self.recorder = Recorder(self.send, limit)
        self._reset_fds()
        cpu_seconds = request.get("cpu_seconds")
        if cpu_seconds:
            used = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(used.ru_utime + used.ru_stime + cpu_seconds) + 1
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            if hard == resource.RLIM_INFINITY or soft <= hard:
                resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        self.cells += 1
        value = error = None
        try:
            result = self.run_cell(request["code"], f"<cell-{self.cells}>")
            if result is not None:
                value = cap(clean(repr(result)), limit)
        except BaseException as exc:
            error = cap(self.format_error(exc), limit)
        if os.getpid() != self.pid:
            # A child forked by the cell came back here: it must not act as a second driver.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    if error:
                        stream.write(error)
                    stream.flush()
            os._exit(1 if error else 0)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.collect_pipes()  # what subprocesses wrote before the cell ended
        tail, cut = self.recorder.finish()
        self.send({"type": "done", "tail": tail, "cut": cut, "value": value, "error": error})

    def serve(self) -> None:
        self.send({"type": "ready", "python": sys.version.split()[0]})
        while True:
            try:
                (size,) = HEADER.unpack(_read_exact(self.proto_in, HEADER.size))
                request = json.loads(_read_exact(self.proto_in, size))
            except EOFError:
                return
            if request.get("type") == "run":
                self.request_id = request.get("id")
                self.send({"type": "start"})  # the supervisor knows the request arrived here
                self.handle(request)


def _set_dumpable(flag: int) -> None:
    """``prctl(PR_SET_DUMPABLE, flag)``: with 0, only processes with CAP_SYS_PTRACE (none in the
    sandbox) may open this process's ``/proc/PID/fd``, read its memory or trace it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, flag, 0, 0, 0)
    except Exception:
        pass


def _read_frame(buf: bytearray):
    """One message out of ``buf`` (removed from it), None when incomplete; ValueError when the
    bytes are not a frame."""
    if len(buf) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buf)
    if size > MAX_FRAME:
        raise ValueError("a frame that is too large")
    if len(buf) < HEADER.size + size:
        return None
    body = bytes(buf[HEADER.size : HEADER.size + size])
    del buf[: HEADER.size + size]
    try:
        message = json.loads(body)
    except RecursionError:
        raise ValueError("a frame nested too deeply") from None
    if not isinstance(message, dict):
        raise ValueError("a frame that is not an object")
    return message


def _relayed(message: dict, request_id):
    """The frame the host gets for a kernel's message about ``request_id``, or None (stale,
    forged for another request, or not a message of the protocol)."""
    if message.get("id") != request_id:
        return None
    kind = message.get("type")
    if kind == "out":
        stream, text = message.get("stream"), message.get("text")
        if stream in ("stdout", "stderr") and isinstance(text, str):
            return {"type": "out", "id": request_id, "stream": stream, "text": text}
        return None
    if kind == "done":
        tail = [
            [item[0], item[1]]
            for item in message.get("tail") or []
            if isinstance(item, list)
            and len(item) == 2
            and item[0] in ("stdout", "stderr")
            and isinstance(item[1], str)
        ]
        cut = message.get("cut")
        value, error = message.get("value"), message.get("error")
        return {
            "type": "done",
            "id": request_id,
            "tail": tail,
            "cut": cut if isinstance(cut, int) else 0,
            "value": value if isinstance(value, str) else None,
            "error": error if isinstance(error, str) else None,
        }
    return None


class KernelGone(Exception):
    """The kernel process ended, or broke its channel (``alive``: it still runs)."""

    def __init__(self, note: str = "", alive: bool = False) -> None:
        super().__init__(note)
        self.note, self.alive = note, alive


class Supervisor:
    """The host's end inside the sandbox: forks the kernel and relays its frames, checked."""

    def __init__(self) -> None:
        _set_dumpable(0)
        self.host_buf = bytearray()
        self.kernel_buf = bytearray()
        self.kernel_status: int | None = None
        self.kernel_pid, self.kernel_in, self.kernel_out = self._fork_kernel()

    def _fork_kernel(self):
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                # Stdin and stdout become the kernel's pipes; stderr stays the host's until the
                # Driver replaces it (before any cell runs), so that a failing start is reported.
                os.dup2(req_r, 0)
                os.dup2(res_w, 1)
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                os.closerange(3, limit if 0 < limit < 1 << 20 else 1 << 20)
                _set_dumpable(1)
                Driver().serve()
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
                os._exit(1)
            os._exit(0)
        os.close(req_r)
        os.close(res_w)
        return pid, req_w, res_r

    def _reap(self) -> None:
        """Collect every child that ended: the kernel, or orphans (as PID 1 they are ours)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.kernel_pid:
                self.kernel_status = status

    def _wait(self, timeout: float = 1.0) -> None:
        """Wait until the host or the kernel sent something (at most ``timeout`` seconds); read
        it into the buffers."""
        ready, _, _ = select.select([0, self.kernel_out], [], [], max(timeout, 0.0))
        self._reap()
        if 0 in ready:
            data = os.read(0, 1 << 20)
            if not data:  # the host is gone (or closed the session): so is the kernel
                self.exit(0)
            self.host_buf += data
        if self.kernel_out in ready:
            data = os.read(self.kernel_out, 1 << 20)
            if not data:
                raise KernelGone()
            self.kernel_buf += data

    def _kernel_message(self, deadline: float | None = None) -> dict | None:
        """The kernel's next message; None once ``deadline`` (monotonic) has passed."""
        while True:
            try:
                message = _read_frame(self.kernel_buf)
            except ValueError as exc:
                raise KernelGone(f"the Python process wrote {exc} into the driver's channel", True) from None
            if message is not None:
                return message
            if deadline is None:
                self._wait()
            elif time.monotonic() >= deadline:
                return None
            else:
                self._wait(min(1.0, deadline - time.monotonic()))

    def _host_message(self) -> dict:
        while True:
            message = _read_frame(self.host_buf)
            if message is not None:
                return message
            self._wait()

    def send_host(self, message: dict) -> None:
        try:
            _write_all(1, encode_frame(message))
        except OSError:
            self.exit(0)

    def serve(self) -> None:
        try:
            ready = self._kernel_message() or {}
            self.send_host({"type": "ready", "python": str(ready.get("python"))})
            while True:
                request = self._host_message()
                if request.get("type") != "run":
                    continue
                request_id = request.get("id")
                self.kernel_buf.clear()  # whatever a stray thread of the kernel wrote between cells
                _write_all(self.kernel_in, encode_frame(request))
                grace = request.get("start_grace")
                self._await_start(request_id, grace if isinstance(grace, (int, float)) else START_GRACE)
                while True:
                    message = self._kernel_message()
                    assert message is not None
                    relayed = _relayed(message, request_id)
                    if relayed is not None:
                        self.send_host(relayed)
                        if relayed["type"] == "done":
                            break
        except KernelGone as gone:
            self.kernel_ended(gone)
        except OSError:  # the kernel's request pipe is broken: it is gone
            self.kernel_ended(KernelGone())

    def _await_start(self, request_id, grace: float) -> None:
        """The kernel says it took the request within ``grace`` seconds, or something else (a
        thread an earlier cell left running) is reading its requests: then it is ended."""
        deadline = time.monotonic() + grace
        while True:
            message = self._kernel_message(deadline)
            if message is None:
                raise KernelGone(
                    f"the Python process did not take the code within {grace:g} s (is code of an "
                    "earlier cell reading the driver's requests?)",
                    alive=True,
                )
            if message.get("type") == "start" and message.get("id") == request_id:
                return

    def kernel_ended(self, gone: KernelGone) -> None:
        """Exit as the kernel did (its exit status, or 128 + its signal), so that the host can
        tell a crash from a kill; one that broke its channel but lives on is killed."""
        deadline = time.monotonic() + (0.0 if gone.alive else 1.0)
        while self.kernel_status is None and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.002)
        note, status = gone.note, self.kernel_status
        if status is None:
            note = note or "the Python process closed the driver's channel"
            code = 1
        elif os.WIFSIGNALED(status):
            code = 128 + os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status) or (1 if note else 0)
        if note:
            with contextlib.suppress(OSError):
                os.write(2, (note + "\n").encode())
        self.exit(code)

    def exit(self, code: int) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.kernel_pid, signal.SIGKILL)
        os._exit(code)


def main() -> None:
    os.chdir(os.environ.get("SANDBOX_CWD", "/mnt/data"))
    Supervisor().serve()
    os._exit(0)


if __name__ == "__main__":
    main()
