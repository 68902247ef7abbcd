"""The tool seam: what a tool tells the model about itself, and one call.

A tool is data plus one call. Its ``spec`` says how it renders for the model: the built-in
namespaces ``browser`` and ``python`` go in the system message's ``# Tools`` section, user tools
in the developer message under ``namespace functions``. The agent converts specs into harmony's
``ToolNamespaceConfig`` (``tools`` knows nothing of the agent or the codec).

Errors are sorted by who is at fault: the model's mistakes (bad arguments, unknown names, a tool
that raised or timed out) come back as a ``ToolOutput`` with ``is_error=True`` whose ``content``
the model reads; bugs in the runtime propagate.

Optional attributes the ``Toolbox`` honours when a tool has them (not part of the protocol, so
existing tools need not change):

- ``call_timeout: float | None`` -- the wall-clock limit of one call; None means the toolbox's
  default. (``Python`` sets it a little above its sandbox timeout, since the sandbox enforces
  its own limit and restarts itself.)
- ``close()`` -- called by ``Toolbox.close()``.

Two helpers for tools that are sync on one side and async on the other: ``call_in_thread`` (await
a blocking call in a daemon thread, abandoned if the awaiting task is cancelled, so a hung call
never blocks the event loop's shutdown) and ``run_coroutine`` (run a coroutine to completion
from sync code, also when the calling thread already runs an event loop).

Changes since the seam was first committed (names and semantics unchanged): the two helpers and
the optional attributes above.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

__all__ = [
    "FunctionSpec",
    "NamespaceSpec",
    "Tool",
    "ToolError",
    "ToolOutput",
    "call_in_thread",
    "run_coroutine",
]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """One callable in a namespace: ``browser.search``, ``functions.get_weather``."""

    name: str
    description: str
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments (an ``object`` schema), or None for free-form input."""


@dataclass(frozen=True, kw_only=True)
class NamespaceSpec:
    """A namespace as harmony renders it (``namespace browser { ... }``)."""

    name: str
    """``functions`` for user tools; ``browser`` or ``python`` for the built-ins."""
    description: str | None = None
    functions: tuple[FunctionSpec, ...] = ()
    builtin: bool = False
    """Built-ins render in the system message; the rest in the developer message."""


@dataclass(kw_only=True)
class ToolOutput:
    """What a tool call returns to the model, as one tool message."""

    author: str
    """The tool message's author name: ``browser.search``, ``python``, ``functions.get_weather``."""
    content: str
    is_error: bool = False
    duration: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra data for callers (never shown to the model), e.g. the browser's page URLs."""


class ToolError(Exception):
    """Raised inside a tool for a failure the model should read (the message goes back as-is)."""


@runtime_checkable
class Tool(Protocol):
    """A tool: its spec and one call per function it exposes.

    ``call`` receives the function name within the namespace (``search`` for ``browser.search``,
    ``get_weather`` for ``functions.get_weather``; the namespace name itself for ``python``) and
    the raw message body the model wrote (JSON arguments, or code for ``python``).
    """

    @property
    def spec(self) -> NamespaceSpec: ...

    def call(self, function: str, body: str) -> ToolOutput: ...

    async def acall(self, function: str, body: str) -> ToolOutput: ...


def call_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]:
    """Run a blocking call in a fresh daemon thread and await its result.

    Unlike ``asyncio.to_thread`` the thread is not part of the loop's executor: when the awaiting
    task is cancelled (a timeout), the thread is left to finish on its own and nothing waits
    for it, not even ``asyncio.run``'s shutdown or the interpreter's exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            result = context.run(fn, *args, **kwargs)
        except BaseException as e:
            outcome: tuple[bool, Any] = (False, e)
        else:
            outcome = (True, result)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name=f"tool-call-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return future


def run_coroutine(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine to completion from sync code and return its result.

    Uses ``asyncio.run`` when this thread runs no event loop, else a helper thread with its own
    loop. ``timeout`` cancels the coroutine (raising ``TimeoutError``) after that many seconds.
    """

    async def main() -> T:
        return await asyncio.wait_for(coro, timeout) if timeout is not None else await coro

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: list[Any] = []

    def work() -> None:
        try:
            box.append((True, asyncio.run(main())))
        except BaseException as e:
            box.append((False, e))

    thread = threading.Thread(target=work, name="tool-coroutine", daemon=True)
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return cast(T, value)
