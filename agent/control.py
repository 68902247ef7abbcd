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

__all__ = ["END_GENERATION", "NEXT_TOKEN", "Dispatch", "Generate", "Stopped", "SyncRunner", "drive"]

T = TypeVar("T")
_TOOL_GRACE = 0.5  # seconds a cancelled async tool gets to run its cleanup before the run goes on
_POLL = 0.02


# -- effects: what the core asks the driver for ---------------------------------------------------


class _Effect:
    """Something the core needs done outside it; the driver sends back the answer."""


@dataclass(frozen=True)
class Generate(_Effect):
    """Start a generation of ``prompt`` in the engine (answer: None)."""

    prompt: list[int]
    max_tokens: int | None
    constraint: Any = None
    """A ``HarmonyGrammar`` for engines that take one (``supports_constraints``)."""


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
    """One ``engine.generate`` call in a daemon thread; its tokens go to the run's inbox."""

    def __init__(self, agent: Agent, effect: Generate, control: RunControl) -> None:
        self.engine = agent.engine
        self.effect = effect
        self.sampling = agent.sampling
        self.stops = agent._stops
        self.post = control.post
        self.deadline = Deadline(control.deadline.at)
        self.stats: Any = None
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

    def _work(self) -> None:
        tokens: Any = None
        try:
            options: dict[str, Any] = {"deadline": self.deadline} if _accepts_deadline(self.engine) else {}
            if self.effect.constraint is not None:
                options["constraint"] = self.effect.constraint
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
                self.post(("token", self, int(token)))
                if self.deadline.expired():
                    break
            self.post(("end", self, None))
        except BaseException as e:
            self.post(("error", self, e))
        finally:
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
    """Run one turn of ``agent`` (its core ``_run``) on the running event loop, yielding events."""
    if not agent._lock.acquire(blocking=False):
        raise RuntimeError("this agent is already running; one session runs one turn at a time")
    control = RunControl(agent.timeout)
    agent._control = control
    core = agent._run(task)
    reply: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                item = core.throw(error) if error is not None else core.send(reply)
            except StopIteration:
                return
            reply, error = None, None
            if not isinstance(item, _Effect):
                yield item
                continue
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


async def _perform(agent: Agent, control: RunControl, effect: _Effect) -> Any:
    if effect is NEXT_TOKEN:
        producer = control.generation
        assert producer is not None, "NEXT_TOKEN outside a generation"
        kind, _, value = await control.take(lambda item: item[1] is producer)
        if kind == "error":
            raise value
        return value if kind == "token" else None
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
