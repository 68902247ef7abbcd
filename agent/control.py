"""Run control: the driver of the agent loop, its deadline, interruption and cancellation.

The loop itself (``Agent._run``) is a plain generator that never blocks: it yields the events
the caller sees and, where it needs the outside world, an *effect* (``Generate``,
``NEXT_TOKEN``, ``END_GENERATION``, ``Dispatch``) whose answer it receives back from ``send``.
``drive`` performs the effects on an asyncio event loop, which makes one core serve every
caller:

- ``Agent.astream`` / ``arun`` drive it on the caller's event loop: an async tool is awaited
  there, in a task created at call time (so it sees the caller's ``contextvars`` and may await
  the caller's objects); a sync tool runs on the toolbox's worker threads with the context
  copied; the engine's blocking ``generate`` runs in a worker thread of its own (``_Producer``),
  its tokens crossing over through the run's queue, so the event loop never blocks on the model.
- ``Agent.stream`` / ``run`` drive it on a private event loop (``SyncRunner``): in the caller's
  thread, or in a helper thread when the caller's thread already runs a loop.

Every wait of the driver is bounded by the run's deadline and woken by ``Agent.interrupt()``.
When one of them ends the run, the driver throws ``Stopped`` into the core at the effect it was
waiting on; the core records the cut in the conversation (and so the transcript): a tool call
in flight gets a tool message saying it was stopped, a generation in flight a system message
saying where the turn was cut off; then it ends with ``stop_reason`` ``timeout`` or
``interrupted``. Cancelling the task (``arun``), or leaving an ``astream`` loop early, takes the
same path (the result is dropped and ``CancelledError`` / ``GeneratorExit`` goes on). The engine
gets a ``Deadline`` that the driver cancels (``LocalEngine`` checks it between prefill chunks
and decode steps, ``RemoteEngine`` between stream reads, and its HTTP timeout follows it); an
engine that ignores it is abandoned, and the agent's next generation waits for that thread to
end before it touches the engine again.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import contextvars
import inspect
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from gptoss_agent.agent.events import AgentEvent, StopReason
from gptoss_agent.agent.messages import Message, Role
from gptoss_agent.model.engine import Deadline
from gptoss_agent.tools.base import ToolOutput

if TYPE_CHECKING:
    from gptoss_agent.agent.loop import Agent

__all__ = [
    "END_GENERATION",
    "NEXT_TOKEN",
    "Dispatch",
    "Generate",
    "Lazy",
    "Stopped",
    "SyncRunner",
    "drive",
    "drive_batches",
]

T = TypeVar("T")
_TOOL_GRACE = 0.5  # seconds a cancelled async tool gets to run its cleanup before the run goes on
_POLL = 0.02
_YIELD_EVERY = 64  # tokens taken from a producer's buffer between two turns of the event loop
_BATCH = 256  # most events in one batch of drive_batches


# -- effects: what the core asks the driver for ---------------------------------------------------


class _Effect:
    """Something the core needs done outside it; the driver sends back the answer."""


@dataclass(frozen=True)
class Generate(_Effect):
    """Start a generation of ``prompt`` in the engine (answer: None)."""

    prompt: list[int]
    max_tokens: int | None
    constraint: Any = None
    """A ``HarmonyGrammar`` for engines that take one (``supports_constraints``), or a ``Lazy``
    one (compiled in the engine's thread, off the event loop and outside the run's waits)."""


class Lazy:
    """A value computed when the worker thread first needs it (``Generate.constraint``)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


@dataclass(frozen=True)
class Dispatch(_Effect):
    """Run a tool call (answer: its ``ToolOutput``)."""

    recipient: str
    body: str


class _Marker(_Effect):
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEXT_TOKEN = _Marker("NEXT_TOKEN")
"""The next token of the generation (answer: its id, or None when the stream ended)."""
END_GENERATION = _Marker("END_GENERATION")
"""The generation is over (answer: the engine's ``GenerationStats`` of it, or None)."""


class Stopped(Exception):
    """Thrown into the core where the run must stop: its deadline passed, or it was interrupted."""

    def __init__(self, reason: StopReason, why: str) -> None:
        super().__init__(why)
        self.reason = reason
        self.why = why

    def note(self) -> Message:
        """The system message that marks where a generation was cut off."""
        return Message.from_role_and_content(
            Role.SYSTEM, f"The assistant's turn was cut off here: {self.why}."
        )

    def tool_output(self, recipient: str) -> ToolOutput:
        """The tool message of a call the stop cut off."""
        return ToolOutput(
            author=recipient,
            content=f"{recipient} was stopped before it finished ({self.why}); it may have run in part.",
            is_error=True,
            metadata={"error": "stopped", "stop_reason": self.reason.value},
        )


_TIMEOUT_WHY = "the run's time limit passed"
_INTERRUPT_WHY = "the run was interrupted"
_CANCEL_WHY = "the run was cancelled"


# -- one run's limits ---------------------------------------------------------------------------------


class RunControl:
    """The deadline, the interruption flag and the event queue of one run (its driver's loop)."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = Deadline.after(timeout)
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self.interrupted = False
        self.generation: _Producer | None = None
        self.tokens = 0

    def interrupt(self) -> None:
        """Stop the run (thread-safe, and safe in a signal handler)."""
        self.interrupted = True
        generation = self.generation
        if generation is not None:
            generation.deadline.cancel()
        self.post(("wake", None, None))

    def post(self, item: tuple[str, Any, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, item)

    def check(self) -> None:
        """Raise ``Stopped`` when the run must end now."""
        if self.interrupted:
            raise Stopped(StopReason.INTERRUPTED, _INTERRUPT_WHY)
        if self.deadline.expired():
            raise Stopped(StopReason.TIMEOUT, _TIMEOUT_WHY)

    async def take(self, want: Callable[[tuple[str, Any, Any]], bool]) -> tuple[str, Any, Any]:
        """The next item of the inbox that ``want``s, within the deadline (others are stale)."""
        while True:
            self.check()
            if self.inbox.empty():
                try:
                    item = await asyncio.wait_for(self.inbox.get(), self.deadline.remaining())
                except TimeoutError:
                    continue  # check() raises
            else:
                item = self.inbox.get_nowait()
            if want(item):
                return item


# -- the engine's thread ------------------------------------------------------------------------------


def _accepts_deadline(engine: Any) -> bool:
    try:
        return "deadline" in inspect.signature(engine.generate).parameters
    except (TypeError, ValueError):
        return False


class _Producer:
    """One ``engine.generate`` call in a daemon thread.

    Its tokens go into ``buffer`` (a deque: appends and pops are atomic); the driver drains it
    without waking anyone and is woken through the run's inbox only when it waits for a token
    (``waiting``), so a fast engine costs no cross-thread call per token."""

    def __init__(self, agent: Agent, effect: Generate, control: RunControl) -> None:
        self.engine = agent.engine
        self.effect = effect
        self.sampling = agent.sampling
        self.stops = agent._stops
        self.post = control.post
        self.deadline = Deadline(control.deadline.at)
        self.stats: Any = None
        self.buffer: collections.deque[int] = collections.deque()
        self.ended = False
        self.error: BaseException | None = None
        self.waiting = False
        self.done = threading.Event()
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._work,), name="agent-engine", daemon=True)

    def start(self) -> None:
        _LIVE.add(self)
        self.thread.start()

    def join(self, timeout: float | None) -> bool:
        """Stop it and wait (at most ``timeout`` seconds) for its thread to end."""
        self.stop()
        return self.done.wait(timeout)

    def stop(self) -> None:
        self.deadline.cancel()

    def _wake(self) -> None:
        if self.waiting:
            self.waiting = False
            self.post(("wake", self, None))

    async def next(self, control: RunControl) -> int | None:
        """The next token; None at the end of the stream (the engine's error is raised)."""
        while True:
            if self.buffer:
                return self.buffer.popleft()
            if self.ended:
                if self.buffer:
                    continue
                if self.error is not None:
                    raise self.error
                control.check()  # a stream the run's deadline ended (the engine stops on it too) is cut
                return None
            self.waiting = True
            if self.buffer or self.ended:
                continue  # it came in meanwhile (a spare wake-up may follow: harmless)
            await control.take(lambda item: item[1] is self)

    def _work(self) -> None:
        tokens: Any = None
        try:
            options: dict[str, Any] = {"deadline": self.deadline} if _accepts_deadline(self.engine) else {}
            constraint = self.effect.constraint
            if isinstance(constraint, Lazy):
                constraint = constraint.make()  # a grammar compiles for seconds: here, not on the loop
            if constraint is not None:
                options["constraint"] = constraint
            tokens = iter(
                self.engine.generate(
                    self.effect.prompt,
                    stop=self.stops,
                    sampling=self.sampling,
                    max_tokens=self.effect.max_tokens,
                    **options,
                )
            )
            for token in tokens:
                self.stats = getattr(self.engine, "last_stats", None)  # RemoteEngine's is per thread
                self.buffer.append(int(token))
                self._wake()
                if self.deadline.expired():
                    break
        except BaseException as e:
            self.error = e
        finally:
            self.ended = True
            self.waiting = True  # the end is always announced
            self._wake()
            close = getattr(tokens, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            self.done.set()


_LIVE: weakref.WeakSet[_Producer] = weakref.WeakSet()
_EXIT_WAIT = 30.0


@atexit.register
def _stop_engines() -> None:
    """At exit, let abandoned generations end at their next step: a thread torn down inside
    the model's native code aborts the process."""
    for producer in list(_LIVE):
        producer.join(_EXIT_WAIT)


def stop_engine(agent: Agent, timeout: float | None = _EXIT_WAIT) -> bool:
    """Stop the agent's latest generation and wait for its thread (``Agent.close`` does)."""
    producer = agent._engine_thread
    return producer is None or producer.join(timeout)


# -- the driver ---------------------------------------------------------------------------------------


async def drive(agent: Agent, task: str | None) -> AsyncGenerator[AgentEvent, None]:
    """Run one turn of ``agent`` (its core ``_run``) on the running event loop, yielding events
    one by one: the core waits for the consumer at each of them."""
    async with contextlib.aclosing(drive_batches(agent, task, batched=False)) as batches:
        async for batch in batches:
            for event in batch:
                yield event


async def drive_batches(agent: Agent, task: str | None, *, batched: bool = True) -> AsyncGenerator[list[AgentEvent], None]:
    """``drive`` yielding the events in batches: each batch holds the events the core produced
    until it had to wait (for the engine's next token, a tool, a new generation); no effect with
    a side effect starts before the events before it were handed over. ``Agent.stream`` uses it,
    so a sync caller pays one turn of the private event loop per batch, not per token."""
    if not agent._lock.acquire(blocking=False):
        raise RuntimeError("this agent is already running; one session runs one turn at a time")
    control = RunControl(agent.timeout)
    agent._control = control
    core = agent._run(task)
    reply: Any = None
    error: BaseException | None = None
    pending: list[AgentEvent] = []
    try:
        while True:
            try:
                item = core.throw(error) if error is not None else core.send(reply)
            except StopIteration:
                if pending:
                    yield pending
                return
            reply, error = None, None
            if not isinstance(item, _Effect):
                pending.append(item)
                if not batched or len(pending) >= _BATCH:
                    batch, pending = pending, []
                    yield batch
                continue
            if pending and not _ready(control, item):
                batch, pending = pending, []
                yield batch
            try:
                reply = await _perform(agent, control, item)
            except (Stopped, Exception) as e:  # the run's limits, or an engine or tool failure
                error = e
    except BaseException as e:  # cancelled, the consumer left, or an error out of the core
        if inspect.getgeneratorstate(core) == inspect.GEN_SUSPENDED:
            why = _CANCEL_WHY if not isinstance(e, KeyboardInterrupt) else _INTERRUPT_WHY
            _finish(core, control, Stopped(StopReason.INTERRUPTED, why))
        raise
    finally:
        core.close()
        _end_generation(agent, control)
        agent._control = None
        agent._lock.release()


def _ready(control: RunControl, effect: _Effect) -> bool:
    """Whether ``effect`` can be answered at once (no wait, no side effect)."""
    if effect is END_GENERATION:
        return True
    producer = control.generation
    return effect is NEXT_TOKEN and producer is not None and bool(producer.buffer or producer.ended)


async def _perform(agent: Agent, control: RunControl, effect: _Effect) -> Any:
    if effect is NEXT_TOKEN:
        producer = control.generation
        assert producer is not None, "NEXT_TOKEN outside a generation"
        control.check()
        control.tokens += 1
        if control.tokens % _YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a fast engine must not starve the caller's loop
        return await producer.next(control)
    if effect is END_GENERATION:
        return _end_generation(agent, control)
    if isinstance(effect, Generate):
        control.check()
        previous = agent._engine_thread
        while previous is not None and not previous.done.is_set():
            control.check()  # an abandoned generation still runs: the engine is not ours yet
            await asyncio.sleep(_POLL)
        producer = control.generation = agent._engine_thread = _Producer(agent, effect, control)
        producer.start()
        return None
    if isinstance(effect, Dispatch):
        return await _dispatch(agent, control, effect)
    raise TypeError(f"unknown effect {effect!r}")


async def _dispatch(agent: Agent, control: RunControl, effect: Dispatch) -> ToolOutput:
    """The tool call as a task of this loop, created now (it gets the current context)."""
    call = agent.toolbox.adispatch(effect.recipient, effect.body, timeout=control.deadline.remaining())
    task: asyncio.Task[ToolOutput] = asyncio.ensure_future(call)
    task.add_done_callback(lambda t: control.inbox.put_nowait(("tool", t, None)))
    try:
        await control.take(lambda item: item[1] is task)
    except BaseException:  # stopped or cancelled: an async tool is cancelled, a sync one abandoned
        task.cancel()
        await asyncio.wait({task}, timeout=_TOOL_GRACE)
        raise
    return task.result()


def _end_generation(agent: Agent, control: RunControl) -> Any:
    """Stop the generation in flight (if any); its stats."""
    producer, control.generation = control.generation, None
    if producer is None:
        return None
    producer.stop()
    return producer.stats


def _finish(core: Generator[Any, Any, Any], control: RunControl, stop: Stopped) -> None:
    """Let the core record where it was cut (no new work is started; its events are dropped)."""
    error: BaseException | None = stop
    reply: Any = None
    while True:
        try:
            item = core.throw(error) if error is not None else core.send(reply)
        except (StopIteration, Stopped):
            return
        error, reply = None, None
        if item is END_GENERATION:
            producer, control.generation = control.generation, None
            if producer is not None:
                producer.stop()
                reply = producer.stats
        elif isinstance(item, _Effect):
            error = stop


# -- sync callers -------------------------------------------------------------------------------------


class SyncRunner:
    """Runs coroutines on a private event loop for sync code: in this thread, or in a helper
    thread when this thread already runs an event loop. Each coroutine runs in a copy of the
    caller's context."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-sync-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        context = contextvars.copy_context()
        if self.thread is None:
            task = self.loop.create_task(coro, context=context)
            try:
                return self.loop.run_until_complete(task)
            except BaseException:  # Ctrl-C (KeyboardInterrupt) lands here: let the run clean up
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        self.loop.run_until_complete(task)
                raise
        import concurrent.futures

        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            task = self.loop.create_task(coro, context=context)

            def settle(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    result.cancel()
                elif t.exception() is not None:
                    result.set_exception(t.exception())
                else:
                    result.set_result(t.result())

            task.add_done_callback(settle)

        self.loop.call_soon_threadsafe(start)
        return result.result()

    def close(self) -> None:
        if self.thread is None:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        else:
            asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        self.loop.close()
