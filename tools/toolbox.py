"""The toolbox: routes a tool call by its recipient, checks the arguments, and turns every mistake
of the model into a tool message that says exactly what was wrong.

    box = Toolbox([Browser(), Python(), get_weather])
    out = box.dispatch("functions.get_weather", '{"city": "Paris"}')   # -> ToolOutput
    out = await box.adispatch("python", "print(1 + 1)")

What goes back to the model as an error message (``is_error=True``), never as an exception:
invalid JSON (with its position), a schema violation (each path and message), an unknown
recipient (with the list of tools that exist), an exception inside a tool (its type, message
and the last frames of its traceback), and a call that outlives its timeout. Only failures of
the runtime itself propagate (a sandbox that cannot start, a bug in the toolbox).

Where calls run: ``adispatch`` awaits an async tool on the caller's event loop, in the caller's
context; a sync ``@tool`` function (or a sync method of a ``Toolset``) runs on the toolbox's
bounded pool of worker threads (``workers``) with a copy of the caller's context. Each call gets
the smaller of its own timeout and the ``timeout`` the caller passes (the agent passes the run's
time left). An async tool is cancelled at its timeout; a sync one cannot be, so it is
**abandoned**: the model is told so, and the same tool object (a whole ``Toolset``) is not
entered again while the abandoned call still runs: a later call waits for it within its own
timeout, then is answered that the tool is still busy. An abandoned call keeps its worker until it
returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import difflib
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from gptoss_agent.sandbox.base import SandboxError
from gptoss_agent.tools.base import NamespaceSpec, Tool, ToolError, ToolOutput
from gptoss_agent.tools.function import FunctionTool, Toolset
from gptoss_agent.tools.schema import ArgumentError, check_arguments, compile_validator, validation_schema
from gptoss_agent.tools.text import clean, clean_json
from jsonschema.protocols import Validator

__all__ = ["Route", "Toolbox"]

# Frames of these modules are left out of the traceback the model reads.
_OWN_MODULES = {f"gptoss_agent.tools.{m}" for m in ("base", "function", "schema", "toolbox")}
_TRACEBACK_FRAMES = 3
_GUARD_SECONDS = 2.0  # how long sync dispatch waits past a timeout for the tool to honour cancellation
# Words the model sometimes appends to a free-form tool's name: ``python.exec``, ``python.run``.
_FREEFORM_SUFFIXES = {"exec", "execute", "run", "run_code", "code", "eval", "call", "python"}


@dataclass(frozen=True)
class Route:
    """Where one recipient goes: the tool, the function name it receives, the canonical name."""

    tool: Tool
    function: str
    name: str
    """``browser.search``, ``python``, ``functions.get_weather``: the tool message's author."""
    validator: Validator | None
    """Checks the JSON arguments; None for a free-form body (``python``'s code)."""
    timeout: float | None


class Toolbox:
    """The tools of one agent, reachable by recipient.

    Args:
        tools: ``Tool`` objects (``Browser()``, ``Python()``, ``@tool`` functions, ``Toolset``
            instances); plain callables are wrapped with ``@tool``.
        timeout: Default seconds one call may take (None: no limit). A tool's own
            ``call_timeout`` attribute wins over it, and ``timeouts`` (by canonical name, e.g.
            ``{"functions.crawl": 300}``) wins over both.
        max_chars: Longer results are cut to this many characters (head and tail kept, with a
            note in the middle saying how much was cut). None keeps everything.
        workers: Threads that run sync tools (calls beyond that wait for a free one).
    """

    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        timeout: float | None = 120.0,
        timeouts: Mapping[str, float] | None = None,
        max_chars: int | None = 20_000,
        workers: int = 8,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.timeout = timeout
        self._pool = _Workers(workers)
        self._abandoned: dict[int, concurrent.futures.Future[Any]] = {}  # id(tool) -> call still running
        self.timeouts = dict(timeouts or {})
        self.max_chars = max_chars
        self.tools: list[Tool] = []
        self._routes: dict[str, Route] = {}
        self._freeform: dict[str, str] = {}  # namespace -> canonical name, for python.exec & co.
        self._lazy: list[list[Any]] = []  # [tool, spec routed, route names]: MCP servers, see _sync
        for t in tools:
            self.add(t)

    # -- building ------------------------------------------------------------------------

    def add(self, tool: Tool | Callable[..., Any]) -> Tool:
        """Register one tool (wrapping a plain callable with ``@tool``); returns it.

        Raises ValueError when a name is already taken, and ``jsonschema.SchemaError`` when a
        tool's parameter schema is not a valid JSON Schema (both are the caller's bugs).
        """
        if getattr(tool, "lazy_spec", False):  # an MCP server: listed on first use, may change
            self._lazy.append([tool, None, []])
            self.tools.append(cast(Tool, tool))  # (isinstance would read .spec and start it)
            return cast(Tool, tool)
        if not isinstance(tool, Tool):
            if not callable(tool):
                raise TypeError(f"not a tool or a callable: {tool!r}")
            tool = FunctionTool(tool)
        spec = tool.spec
        routes: dict[str, Route] = {}
        own_timeout = getattr(tool, "call_timeout", None)
        if not spec.functions:
            name = spec.name
            routes[name] = Route(tool, name, name, None, self._timeout_for(name, own_timeout))
        for f in spec.functions:
            name = f"{spec.name}.{f.name}"
            validator = (
                compile_validator(validation_schema(f.parameters)) if f.parameters is not None else None
            )
            routes[name] = Route(tool, f.name, name, validator, self._timeout_for(name, own_timeout))
        taken = sorted(set(routes) & set(self._routes))
        if taken:
            raise ValueError(f"tool names already registered: {', '.join(taken)}")
        self._routes.update(routes)
        if not spec.functions:
            self._freeform[spec.name] = spec.name
        self.tools.append(tool)
        return tool

    def _sync(self) -> None:
        """(Re)build the routes of tools whose functions are listed on first use and may change
        (``lazy_spec``: MCP servers). Their arguments are checked by the tool itself, against
        the server's own schema."""
        for entry in self._lazy:
            tool, routed, names = entry
            spec = tool.spec
            if spec is routed:
                continue
            own_timeout = getattr(tool, "call_timeout", None)
            routes: dict[str, Route] = {}
            for f in spec.functions:
                name = f"{spec.name}.{f.name}"
                routes[name] = Route(tool, f.name, name, None, self._timeout_for(name, own_timeout))
            for old in names:
                self._routes.pop(old, None)
            taken = sorted(set(routes) & set(self._routes))
            if taken:
                raise ValueError(f"tool names already registered: {', '.join(taken)}")
            self._routes.update(routes)
            entry[1:] = [spec, list(routes)]

    def _timeout_for(self, name: str, own: float | None) -> float | None:
        if name in self.timeouts:
            return self.timeouts[name]
        return own if own is not None else self.timeout

    # -- what the renderer needs ---------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every recipient the model can address, canonical form, in registration order."""
        self._sync()
        return list(self._routes)

    @property
    def builtin_namespaces(self) -> list[NamespaceSpec]:
        """The built-in namespaces (``browser``, ``python``) for the system message's ``# Tools``."""
        return [t.spec for t in self.tools if t.spec.builtin]

    @property
    def functions(self) -> NamespaceSpec | None:
        """All user functions merged into one ``functions`` namespace (None when there are none)."""
        merged = tuple(
            f
            for t in self.tools
            if not t.spec.builtin and t.spec.name == "functions"
            for f in t.spec.functions
        )
        return NamespaceSpec(name="functions", functions=merged) if merged else None

    @property
    def developer_namespaces(self) -> list[NamespaceSpec]:
        """The namespaces for the developer message: ``functions`` first, then any other
        non-builtin namespace (a ``Toolset`` with its own ``namespace``)."""
        out = [self.functions] if self.functions else []
        out += [t.spec for t in self.tools if not t.spec.builtin and t.spec.name != "functions"]
        return out

    # -- routing -------------------------------------------------------------------------

    def route(self, recipient: str) -> Route | None:
        """The route for a recipient as the model wrote it, or None when no tool has that name.

        Tolerates what the model gets wrong in practice: ``functions.browser.search`` for
        ``browser.search``, ``python.exec`` or ``functions.python`` for ``python``, a missing
        ``functions.`` prefix, trailing header words (``<|constrain|>json``).
        """
        self._sync()
        name = recipient.strip().split()[0] if recipient.strip() else ""
        name = name.split("<|", 1)[0].strip().strip(".")
        if name.startswith("to="):
            name = name[3:]
        candidates = [name]
        if name.startswith("functions."):
            candidates.append(name.removeprefix("functions."))
        else:
            candidates.append(f"functions.{name}")
        for candidate in candidates:
            if candidate in self._routes:
                return self._routes[candidate]
            head, _, tail = candidate.partition(".")
            if head in self._freeform and tail in _FREEFORM_SUFFIXES:
                return self._routes[self._freeform[head]]
        # A bare function name that only one namespace has: "search" -> "browser.search".
        bare = name.removeprefix("functions.")
        matches = [r for key, r in self._routes.items() if "." in key and key.rpartition(".")[2] == bare]
        return matches[0] if len(matches) == 1 and "." not in bare else None

    def _unknown(self, recipient: str) -> str:
        name = recipient.strip() or "(none)"
        message = f"Unknown tool {name!r}."
        close = difflib.get_close_matches(name, self.names, n=1, cutoff=0.6)
        if close:
            message += f" Did you mean {close[0]}?"
        if self.names:
            message += " Available tools: " + ", ".join(self.names) + "."
        else:
            message += " No tools are available."
        return message

    # -- calling -------------------------------------------------------------------------

    def dispatch(self, recipient: str, body: str, *, timeout: float | None = None) -> ToolOutput:
        """Run one tool call and return what goes back to the model (blocking).

        The same steps as ``adispatch``, run on a private event loop in a worker thread (so it
        also works inside a running loop); a tool that ignores cancellation is abandoned once
        its timeout has passed.
        """
        start = time.perf_counter()
        route = self.route(recipient)
        limit = _smaller(route.timeout, timeout) if route is not None else timeout
        guard = limit + _GUARD_SECONDS if limit is not None else None
        try:
            return _run_in_thread(lambda: asyncio.run(self.adispatch(recipient, body, timeout=timeout)), guard)
        except _Abandoned:
            assert route is not None and limit is not None
            return self._finish(self._timed_out(route, limit, abandoned=True), start)

    async def adispatch(self, recipient: str, body: str, *, timeout: float | None = None) -> ToolOutput:
        """Run one tool call and return what goes back to the model (async).

        ``timeout`` (seconds) further bounds this call: it gets the smaller of that and its own.
        """
        start = time.perf_counter()
        route, early = self._prepare(recipient, body)
        if early is not None:
            return self._finish(early, start)
        assert route is not None
        limit = _smaller(route.timeout, timeout)
        sync_call = _sync_call(route, body)
        if sync_call is not None:
            return self._finish(await self._call_sync(route, sync_call, limit, start), start)
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                output = await route.tool.acall(route.function, body)
        except (Exception, SystemExit) as e:  # sys.exit() in a tool ends the call, not the run
            if isinstance(e, TimeoutError) and scope.expired():
                assert limit is not None
                return self._finish(self._timed_out(route, limit), start)
            return self._finish(self._failure(route, e), start)
        return self._finish(self._normalise(route, output), start)

    async def _call_sync(
        self, route: Route, fn: Callable[[], ToolOutput], limit: float | None, start: float
    ) -> ToolOutput:
        """Run a sync tool on the worker pool (the caller's context copied) within ``limit``
        seconds; past it, or when the awaiting task is cancelled, the call is abandoned."""
        key = id(route.tool)
        running = self._abandoned.get(key)
        if running is not None:  # an earlier call of this tool ignored its deadline: wait for it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), limit)
            if not running.done():
                return _error(
                    route.name,
                    f"{route.name} is still busy with an earlier call that did not stop at its time "
                    "limit; try again later or do without it.",
                    "busy",
                )
        future = self._pool.submit(contextvars.copy_context().run, fn)
        try:
            await asyncio.wait({asyncio.wrap_future(future)}, timeout=limit)
        except BaseException:  # cancelled: the thread cannot be stopped, so it is left to finish
            if not future.done():
                self._abandon(key, future)
            raise
        if not future.done():
            self._abandon(key, future)
            assert limit is not None
            return self._timed_out(route, limit, abandoned=True)
        error = future.exception()  # (not re-raised here: its traceback stays the tool's own)
        if error is not None:
            if not isinstance(error, Exception | SystemExit):  # sys.exit() ends the call, not the run
                raise error
            return self._failure(route, error)
        return self._normalise(route, future.result())

    def _abandon(self, key: int, future: concurrent.futures.Future[Any]) -> None:
        self._abandoned[key] = future
        future.add_done_callback(lambda f: self._abandoned.pop(key, None) if self._abandoned.get(key) is f else None)

    def _prepare(self, recipient: str, body: str) -> tuple[Route | None, ToolOutput | None]:
        """Routing and argument checking, shared by both dispatch forms."""
        route = self.route(recipient)
        if route is None:
            author = recipient.strip() or "functions"
            return None, _error(author, self._unknown(recipient), "unknown_tool")
        if route.validator is not None:
            try:
                check_arguments(body, route.validator, name=route.name)
            except ArgumentError as e:
                return route, _error(route.name, str(e), e.kind)
        return route, None

    def _failure(self, route: Route, error: Exception | SystemExit) -> ToolOutput:
        """An exception from a tool, as the model should read it (runtime failures propagate)."""
        if isinstance(error, SandboxError):
            raise error
        if isinstance(error, ToolError):
            return _error(route.name, str(error), "tool_error")
        return _error(route.name, _describe_exception(route.name, error), "exception")

    def _timed_out(self, route: Route, seconds: float, abandoned: bool = False) -> ToolOutput:
        if abandoned:
            text = (
                f"{route.name} did not finish within {seconds:g} seconds and was abandoned "
                "(it may still be running; its result will not be seen)."
            )
        else:
            text = f"{route.name} did not finish within {seconds:g} seconds and was stopped."
        return _error(route.name, text, "timeout")

    def _normalise(self, route: Route, output: Any) -> ToolOutput:
        if not isinstance(output, ToolOutput):  # a tool that broke the protocol: still say something
            output = ToolOutput(author=route.name, content=str(output))
        return output

    def _finish(self, output: ToolOutput, start: float) -> ToolOutput:
        output.content = truncate(clean(output.content), self.max_chars, output.metadata)
        output.metadata = clean_json(output.metadata)
        output.duration = time.perf_counter() - start
        return output

    def reset(self) -> None:
        """Reset every tool that has a ``reset()`` (the browser's pages, a python session's
        variables): a new conversation starts from a clean state."""
        for t in self.tools:
            reset = getattr(t, "reset", None)
            if callable(reset):
                reset()

    def close(self) -> None:
        """Close every tool that has a ``close()`` (sandbox sessions, HTTP clients)."""
        for t in self.tools:
            close = getattr(t, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> Toolbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_external(self, recipient: str) -> bool:
        """Whether the tool behind ``recipient`` is run by the agent's caller, not here (a tool
        with ``external = True``: the run stops at its call with ``stop_reason=tool_call``)."""
        route = self.route(recipient)
        return route is not None and bool(getattr(route.tool, "external", False))

    def __contains__(self, recipient: str) -> bool:
        return self.route(recipient) is not None

    def __repr__(self) -> str:
        return f"Toolbox({', '.join(self.names)})"


def _error(author: str, content: str, kind: str) -> ToolOutput:
    return ToolOutput(author=author, content=content, is_error=True, metadata={"error": kind})


def _describe_exception(name: str, error: BaseException) -> str:
    """``functions.x raised ValueError: message`` plus the last frames outside this package."""
    message = str(error).strip()
    head = f"{name} raised {type(error).__name__}" + (f": {message}" if message else "")
    walked = [
        (frame, line)
        for frame, line in traceback.walk_tb(error.__traceback__)
        if frame.f_globals.get("__name__") not in _OWN_MODULES
    ]
    if not walked:
        return head
    frames = traceback.StackSummary.extract(iter(walked[-_TRACEBACK_FRAMES:]))
    tail = traceback.format_list(frames)
    return head + "\nTraceback (most recent call last):\n" + "".join(tail).rstrip()


def truncate(text: str, max_chars: int | None, metadata: dict[str, Any] | None = None) -> str:
    """Cut ``text`` to about ``max_chars`` characters, keeping the head (two thirds) and the
    tail (one third) around a note that says how much was cut. Records ``truncated_chars``
    in ``metadata`` when given."""
    if max_chars is None or len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    cut = len(text) - head - tail
    if metadata is not None:
        metadata["truncated_chars"] = cut
    return (
        f"{text[:head]}\n\n[... {cut:,} of {len(text):,} characters cut here; the output was too long ...]\n\n"
        f"{text[len(text) - tail :]}"
    )


def _smaller(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional limits (None: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _sync_call(route: Route, body: str) -> Callable[[], ToolOutput] | None:
    """The blocking call of a sync ``@tool`` function or sync ``Toolset`` method (None for
    anything else: those are awaited through ``acall``)."""
    tool = route.tool
    if isinstance(tool, FunctionTool):
        target: FunctionTool | None = tool
    elif isinstance(tool, Toolset):
        target = next((t for t in tool.tools if route.function in (t.name, t.author)), None)
    else:
        return None
    if target is None or target.is_async:
        return None
    return lambda: tool.call(route.function, body)


class _Workers:
    """A bounded pool of daemon threads for sync tools.

    Unlike ``ThreadPoolExecutor`` its threads are daemons: a call abandoned at its timeout never
    holds up the interpreter's exit.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._idle = 0  # threads waiting for a job
        self._pending = 0  # jobs no thread has taken yet
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._pending += 1
            if self._pending > self._idle and self._threads < self.size:
                self._threads += 1
                threading.Thread(target=self._work, name="toolbox-worker", daemon=True).start()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, fn, args = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._pending -= 1
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:
                    future.set_exception(e)
            del future, fn, args


class _Abandoned(Exception):
    """The worker thread outlived its guard time."""


def _run_in_thread(fn: Callable[[], ToolOutput], timeout: float | None) -> ToolOutput:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` seconds for it; past that,
    raise _Abandoned and leave the thread to finish on its own."""
    box: list[tuple[bool, Any]] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:
            box.append((False, e))
        finally:
            done.set()

    threading.Thread(target=work, name="toolbox-dispatch", daemon=True).start()
    if not done.wait(timeout):
        raise _Abandoned
    ok, value = box[0]
    if not ok:
        raise value
    return value
