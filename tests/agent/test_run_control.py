"""Run control: the timeout bounds the whole run, async tools run on the caller's loop with its
context, cancelling or interrupting frees the agent and records the cut, a local engine stops
mid-prefill. Real sleeping tools (sync and async), a real local engine on a random checkpoint.

Timing bounds are generous relative to the limit under test (the machine is shared); exact
latencies belong in a benchmark.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import signal
import subprocess
import threading
import time

import pytest
from agent_helpers import DATE, call, final
from gptoss_agent.agent import Agent, RunDone, ScriptedEngine, StopReason, ToolCallStarted, load_transcript
from gptoss_agent.agent.messages import Role
from gptoss_agent.tools import Toolset, tool

SLACK = 1.5  # seconds past a limit that still count as "about a second" on a loaded machine
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def make(enc, script, tools=(), **kw) -> tuple[Agent, ScriptedEngine]:
    engine = ScriptedEngine(script, enc=enc, repeat_last=kw.pop("repeat_last", False))
    return Agent(engine, tools, enc=enc, date=DATE, **kw), engine


@tool
def nap(seconds: float) -> str:
    """Sleep (a sync tool that ignores every deadline).

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return f"slept {seconds}"


class Started:
    """Set by async tools when they begin, so a test can act while they run."""

    event: asyncio.Event | None = None
    cancelled = False


@tool
async def doze(seconds: float) -> str:
    """Sleep (an async tool).

    Args:
        seconds: How long.
    """
    if Started.event is not None:
        Started.event.set()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Started.cancelled = True
        raise
    return f"dozed {seconds}"


def last_tool_message(messages):
    return next(m for m in reversed(messages) if m.author.role is Role.TOOL)


# -- the timeout bounds the run in every state ----------------------------------------------------


def test_timeout_bounds_a_sync_tool_that_ignores_it(enc, tmp_path):
    agent, _ = make(enc, [call("functions.nap", '{"seconds": 30}')], [nap], timeout=2, transcript=tmp_path / "t.jsonl")
    t0 = time.monotonic()
    result = agent.run("nap")
    elapsed = time.monotonic() - t0
    assert result.stop_reason is StopReason.TIMEOUT and elapsed < 2 + SLACK, elapsed
    (record,) = result.tool_calls
    assert record.is_error and ("abandoned" in record.output or "stopped before it finished" in record.output)
    assert load_transcript(tmp_path / "t.jsonl")[-1].author.role is Role.TOOL  # the call has its answer
    agent.close()


def test_timeout_bounds_an_async_tool_and_cancels_it(enc):
    Started.cancelled = False
    agent, _ = make(enc, [call("functions.doze", '{"seconds": 30}')], [doze], timeout=2)

    async def go():
        t0 = time.monotonic()
        result = await agent.arun("doze")
        return result, time.monotonic() - t0

    result, elapsed = asyncio.run(go())
    assert result.stop_reason is StopReason.TIMEOUT and elapsed < 2 + SLACK, elapsed
    assert Started.cancelled  # the tool saw its cancellation before the run returned
    assert result.tool_calls[0].is_error


def test_each_tool_call_gets_the_time_left(enc):
    @tool(timeout=60)
    def clock() -> str:
        """Sleep a long time."""
        time.sleep(20)
        return "late"

    # the tool's own limit is 60 s, the run's 1.5 s: the call is stopped at the run's
    agent, _ = make(enc, [call("functions.clock", "{}"), final("no")], [clock], timeout=1.5)
    t0 = time.monotonic()
    result = agent.run("go")
    assert result.stop_reason is StopReason.TIMEOUT and time.monotonic() - t0 < 1.5 + SLACK


def test_a_toolset_with_an_abandoned_call_is_not_entered_again(enc):
    release = threading.Event()

    class Counter(Toolset):
        def __init__(self) -> None:
            self.inside = 0
            self.most_inside = 0

        @tool
        def work(self, wait: bool) -> str:
            """Do some work.

            Args:
                wait: Block until released.
            """
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            try:
                if wait:
                    release.wait(30)
                return "worked"
            finally:
                self.inside -= 1

    counter = Counter()
    script = [
        call("functions.work", '{"wait": true}'),
        call("functions.work", '{"wait": false}'),
        final("gave up"),
        call("functions.work", '{"wait": false}'),
        final("done"),
    ]
    agent, _ = make(enc, script, [counter], tool_timeout=0.5)
    first = agent.run("work")
    hung, busy = first.tool_calls
    assert "did not finish within 0.5 seconds and was abandoned" in hung.output
    assert busy.is_error and "still busy with an earlier call" in busy.output
    assert counter.most_inside == 1 and first.answer == "gave up"
    release.set()
    deadline = time.monotonic() + 5
    while counter.inside and time.monotonic() < deadline:
        time.sleep(0.01)
    second = agent.run("again")
    assert second.tool_calls[0].output == "worked" and second.answer == "done"


# -- async first: the caller's loop and context ----------------------------------------------------


def test_async_tools_run_on_the_callers_loop_with_its_context(enc):
    seen: dict[str, object] = {}

    async def main():
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[str] = asyncio.Queue()  # bound to the caller's loop

        @tool
        async def wait_for_message() -> str:
            """Wait for the caller's message."""
            seen["loop"] = asyncio.get_running_loop() is loop
            seen["context"] = REQUEST_ID.get()
            return await inbox.get()

        @tool
        def sync_context() -> str:
            """Report the context var (a sync tool, in a worker thread)."""
            seen["sync_thread"] = threading.current_thread() is not threading.main_thread()
            return REQUEST_ID.get()

        script = [
            call("functions.wait_for_message", "{}"),
            call("functions.sync_context", "{}"),
            final("ok"),
        ]
        agent, _ = make(enc, script, [wait_for_message, sync_context])
        REQUEST_ID.set("req-42")
        result = None
        async for event in agent.astream("listen"):
            if isinstance(event, ToolCallStarted) and event.recipient == "functions.wait_for_message":
                loop.call_later(0.2, inbox.put_nowait, "hello from the caller")
            if isinstance(event, RunDone):
                result = event.result
        return result

    result = asyncio.run(main())
    assert [c.output for c in result.tool_calls] == ["hello from the caller", "req-42"]
    assert seen == {"loop": True, "context": "req-42", "sync_thread": True}


def test_sync_callers_get_the_same_loop_with_context(enc):
    @tool
    async def whoami() -> str:
        """The request id."""
        return REQUEST_ID.get()

    agent, _ = make(enc, [call("functions.whoami", "{}"), final("ok")], [whoami])
    token = REQUEST_ID.set("sync-7")
    try:
        assert agent.run("who").tool_calls[0].output == "sync-7"
    finally:
        REQUEST_ID.reset(token)

    async def inside_a_loop():  # run() inside a running loop drives a private loop in a helper thread
        agent2, _ = make(enc, [call("functions.whoami", "{}"), final("ok")], [whoami])
        REQUEST_ID.set("nested")
        return agent2.run("who")

    assert asyncio.run(inside_a_loop()).tool_calls[0].output == "nested"


# -- cancellation and interruption -----------------------------------------------------------------


def test_cancelling_arun_mid_tool_frees_the_agent_and_records_the_cut(enc, tmp_path):
    path = tmp_path / "t.jsonl"
    Started.cancelled = False
    script = [call("functions.doze", '{"seconds": 30}'), final("second run works")]
    agent, _ = make(enc, script, [doze], transcript=path)

    async def main():
        Started.event = asyncio.Event()
        task = asyncio.create_task(agent.arun("doze"))
        await asyncio.wait_for(Started.event.wait(), 30)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled_in = time.monotonic() - t0
        again = await agent.arun("next")
        return cancelled_in, again

    try:
        cancelled_in, again = asyncio.run(main())
    finally:
        Started.event = None
    assert cancelled_in < 1.0 + SLACK and Started.cancelled
    assert again.answer == "second run works"
    messages = load_transcript(path)
    cut = last_tool_message(messages)
    assert cut.author.name == "functions.doze" and "was stopped before it finished (the run was cancelled)" in cut.text
    assert messages[-1].channel == "final"


def test_cancelling_arun_mid_sync_tool_returns_at_once(enc):
    agent, _ = make(enc, [call("functions.nap", '{"seconds": 20}'), final("fine")], [nap])

    async def main():
        task = asyncio.create_task(agent.arun("nap"))
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0, await agent.arun("again")

    cancelled_in, again = asyncio.run(main())
    assert cancelled_in < 1.0 + SLACK and again.answer == "fine"


def test_leaving_astream_early_stops_the_run(enc, tmp_path):
    path = tmp_path / "t.jsonl"
    Started.cancelled = False
    agent, _ = make(enc, [call("functions.doze", '{"seconds": 30}'), final("after")], [doze], transcript=path)

    async def main():
        async for event in agent.astream("doze"):
            if isinstance(event, ToolCallStarted):
                break  # the tool is about to run: the generator is finalised as the loop exits
        t0 = time.monotonic()
        while agent._lock.locked() and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.01)
        freed_in = time.monotonic() - t0
        return freed_in, await agent.arun("next")

    freed_in, again = asyncio.run(main())
    assert freed_in < 1.0 + SLACK and again.answer == "after"
    cut = last_tool_message(load_transcript(path))
    assert "stopped before it finished" in cut.text


def test_leaving_stream_early_stops_the_run(enc):
    long = "<|channel|>analysis<|message|>" + "thinking " * 300 + "<|end|><|start|>assistant" + final("x")
    agent, _ = make(enc, [long, final("second")])
    for _event in agent.stream("think"):
        break
    assert agent.messages[-1].author.role is Role.SYSTEM and "cut off here" in agent.messages[-1].text
    assert agent.run("again").answer == "second"


def test_interrupt_stops_the_run_with_interrupted(enc, tmp_path):
    path = tmp_path / "t.jsonl"
    agent, _ = make(enc, [call("functions.nap", '{"seconds": 20}'), final("resumed")], [nap], transcript=path)
    threading.Timer(0.5, agent.interrupt).start()
    t0 = time.monotonic()
    result = agent.run("nap")
    assert result.stop_reason is StopReason.INTERRUPTED and time.monotonic() - t0 < 0.5 + 1.0 + SLACK
    assert "was stopped before it finished (the run was interrupted)" in result.tool_calls[0].output
    agent.close()
    # the transcript records the cut; a resumed session continues from there
    resumed = Agent.from_transcript(path, ScriptedEngine([final("resumed")], enc=enc), [nap], enc=enc)
    assert resumed.resume().answer == "resumed"
    resumed.close()


# -- a local engine stops mid-prefill --------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_engine(tiny_checkpoint, enc):
    """The tiny random model with small prefill chunks: a long prompt takes seconds to prefill."""
    from gptoss_agent.model.local import LocalEngine

    engine = LocalEngine.from_checkpoint(tiny_checkpoint, device="cpu", dtype="fp32")
    engine.prefill_chunk = 32
    # once per process, the grammar of constrained decoding needs llguidance's view of the
    # vocabulary, built in native code that holds the GIL (a second, or 20 on a loaded machine)
    Agent(engine, enc=enc, date=DATE, max_steps=1, max_generation_tokens=1).run("warm up")
    return engine


def long_task(word: str) -> str:
    """~9,000 tokens: several seconds to prefill in chunks of 32 even on a fast, idle machine; each
    test its own word, so that no test reuses the prefix another one prefilled (an earlier 4,500-token
    task shared by two tests left the second less than a second of prefill once prefill got faster)."""
    return "Summarise this. " + " ".join(f"{word}{i}" for i in range(3000))


def test_timeout_mid_prefill_on_a_local_engine(enc, slow_engine):
    agent = Agent(slow_engine, enc=enc, date=DATE, timeout=2.0, max_generation_tokens=8)
    t0 = time.monotonic()
    result = agent.run(long_task("word"))
    elapsed = time.monotonic() - t0
    assert result.stop_reason is StopReason.TIMEOUT and elapsed < 2.0 + SLACK, elapsed
    assert result.usage.generated_tokens == 0  # it was still prefilling
    assert "cut off here: the run's time limit passed" in agent.messages[-1].text
    # the engine stops at its next chunk: its thread ends soon after the deadline
    assert agent._engine_thread.done.wait(2.0 + SLACK)
    nxt = Agent(slow_engine, enc=enc, date=DATE, max_steps=1, max_generation_tokens=4).run("hi")
    assert nxt.usage.generated_tokens >= 1


def test_cancel_mid_prefill_on_a_local_engine(enc, slow_engine):
    agent = Agent(slow_engine, enc=enc, date=DATE, max_steps=1, max_generation_tokens=4)

    async def main():
        task = asyncio.create_task(agent.arun(long_task("item")))
        await asyncio.sleep(1.0)
        assert not task.done()
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    cancelled_in = asyncio.run(main())
    assert cancelled_in < 1.0 + SLACK
    assert agent._engine_thread.done.wait(1.0 + SLACK)  # the engine itself stopped at a chunk's end
    assert "cut off here: the run was cancelled" in agent.messages[-1].text
    agent.reset()  # (a short conversation: the long prompt need not be prefilled again)
    assert agent.run("short").usage.generated_tokens >= 1  # the agent and the engine work again


# -- Ctrl-C in the command line --------------------------------------------------------------------


def _start_cli(tiny_checkpoint, transcript, task="Tell me a very long story."):
    from test_cli import COMMAND, FAST

    return subprocess.Popen(
        [*COMMAND, task, "--model", str(tiny_checkpoint), "--jsonl", "--transcript", str(transcript), *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_the_run(proc, transcript) -> None:
    """Until the user's message is in the transcript, and a little more (the first generation
    builds the constrained-decoding grammar in native code that holds the GIL for about a
    second: signal handlers wait for it)."""
    deadline = time.monotonic() + 120
    while not (transcript.exists() and '"user"' in transcript.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the CLI never started its run"
        time.sleep(0.1)
    time.sleep(3.0)


@pytest.mark.slow
def test_first_ctrl_c_stops_the_run_and_says_how_to_resume(tiny_checkpoint, tmp_path):
    transcript = tmp_path / "t.jsonl"
    proc = _start_cli(tiny_checkpoint, transcript)
    _wait_for_the_run(proc, transcript)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    # no tight bound here: at a load of 20 on 2 cores the grammar build above can hold the GIL
    # (and so the signal handler) for half a minute; the tests above bound interrupt() itself
    assert time.monotonic() - t0 < 100
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = json.loads(stdout.strip().splitlines()[-1])
    assert done["type"] == "run_done" and done["result"]["stop_reason"] == "interrupted"
    assert f"gptoss-agent --resume {transcript}" in stderr
    messages = load_transcript(transcript)
    assert "cut off here: the run was interrupted" in messages[-1].text
    # the printed command continues the session
    from test_cli import FAST, cli

    resumed = cli("--resume", str(transcript), "--json", "--max-steps", "1", "--max-generation-tokens", "4", "--model", str(tiny_checkpoint), *FAST)
    assert resumed.returncode == 0, resumed.stderr
    assert len(load_transcript(transcript)) > len(messages)


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(tiny_checkpoint, tmp_path):
    transcript = tmp_path / "t.jsonl"
    proc = _start_cli(tiny_checkpoint, transcript)
    _wait_for_the_run(proc, transcript)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 100
    assert proc.stderr is not None
    seen = ""
    while "stopping the run" not in seen and time.monotonic() < deadline:  # the first was handled
        seen += proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    stderr = seen + stderr
    assert proc.returncode == 130 and time.monotonic() - t0 < 100, stderr
    assert "Traceback" not in stderr
    load_transcript(transcript)  # whatever was written still loads


def test_a_stream_the_deadline_ended_is_a_timeout_not_malformed_output():
    # the engine checks the deadline itself (between prefill chunks) and ends its stream; when its
    # wake-up reached the driver before the driver's own timer fired, the empty stream read as the
    # model's end of output: "not valid harmony" was fed back (seen in CI, mid-prefill)
    from types import SimpleNamespace

    from gptoss_agent.agent.control import Generate, RunControl, Stopped, _Producer

    async def scenario() -> None:
        control = RunControl(timeout=0.01)
        agent = SimpleNamespace(engine=None, sampling=None, _stops=[])
        producer = _Producer(agent, Generate([1, 2, 3], 8, None), control)  # type: ignore[arg-type]
        producer.ended = True  # the engine returned without a token, as at an expired deadline
        await asyncio.sleep(0.05)
        with pytest.raises(Stopped) as info:
            await producer.next(control)
        assert info.value.reason is StopReason.TIMEOUT

    asyncio.run(scenario())
