"""The agent loop end to end: a scripted engine emitting real harmony tokens, real tools."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from agent_helpers import DATE, add, call, final
from gptoss_agent.agent import (
    Agent,
    AnswerDelta,
    ParseProblem,
    ReasoningDelta,
    RunDone,
    ScriptedEngine,
    StepDone,
    StopReason,
    ToolCallFinished,
    ToolCallStarted,
)
from gptoss_agent.agent.harmony import render_conversation
from gptoss_agent.agent.messages import Role, SystemContent
from gptoss_agent.tools import Browser, tool
from gptoss_agent.tools.search import get_backend


def make(enc, script, tools=(), **kw) -> tuple[Agent, ScriptedEngine]:
    engine = ScriptedEngine(script, enc=enc, repeat_last=kw.pop("repeat_last", False))
    return Agent(engine, tools, enc=enc, date=DATE, **kw), engine


def tool_messages(result):
    return [m for m in result.new_messages if m.author.role is Role.TOOL]


def assert_prefix_reuse(engine: ScriptedEngine, enc) -> None:
    """Each prompt extends the previous prompt plus what the model generated (nothing re-rendered)."""
    for prev, nxt in zip(engine.prompts, engine.prompts[1:], strict=False):
        assert nxt[: len(prev)] == prev


def test_browser_search_open_answer(enc, web):
    browser = Browser(get_backend("searxng", base_url=web.url), allow_private_urls=True)
    agent, engine = make(
        enc,
        [
            call(
                "browser.search", '{"query": "largest tidal power station"}', "analysis", think="Search it."
            ),
            call("browser.open", '{"id": 0}', "analysis"),
            final("Sihwa Lake, 254 MW 【1†L2-L3】.", think="Found it."),
        ],
        [browser],
        reasoning_effort="high",
    )
    events = list(agent.stream("Which tidal power station is the largest?"))
    result = events[-1].result
    assert result.stop_reason is StopReason.ANSWER and result.ok
    assert result.answer == "Sihwa Lake, 254 MW 【1†L2-L3】."
    assert [c.recipient for c in result.tool_calls] == ["browser.search", "browser.open"]
    assert not any(c.is_error for c in result.tool_calls)
    search_out, open_out = (m.text for m in tool_messages(result))
    assert "Tidal power" in search_out and "【0†Tidal power" in search_out
    assert "Sihwa Lake station" in open_out and "254 MW" in open_out
    assert web.requests == ["/search", "/tidal"]
    # tool messages: author = tool, to=assistant, on the caller's channel
    replies = tool_messages(result)
    assert [(m.author.name, m.recipient, m.channel) for m in replies] == [
        ("browser.search", "assistant", "analysis"),
        ("browser.open", "assistant", "analysis"),
    ]
    # the system message carries the date, effort and the browser namespace; no developer message
    system = result.messages[0].content[0]
    assert isinstance(system, SystemContent)
    assert system.conversation_start_date == DATE and system.reasoning_effort.value == "High"
    assert list(system.tools or {}) == ["browser"]
    assert result.messages[1].author.role is Role.USER
    # events: reasoning streamed, tool calls bracketed, answer streamed, one StepDone per step
    kinds = [type(e) for e in events]
    assert kinds.count(StepDone) == 3 and kinds[-1] is RunDone
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Search it.Found it."
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == result.answer
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    assert [e.recipient for e in started] == ["browser.search", "browser.open"]
    assert kinds.index(ToolCallStarted) < kinds.index(ToolCallFinished)
    assert [c.duration > 0 for c in result.tool_calls] == [True, True]
    # citations resolve against the browser's pages
    assert (
        browser.resolve_citations(result.answer) == f"Sihwa Lake, 254 MW ([{web.url[7:]}]({web.url}/tidal))."
    )
    assert result.steps == 3 and result.usage.generated_tokens == sum(
        len(engine.encode(s)) for s in engine.responses
    )
    assert_prefix_reuse(engine, enc)


def test_custom_tool_bad_arguments_then_good(enc):
    agent, engine = make(
        enc,
        [
            call("functions.add", '{"a": "one", "b": 2}'),
            call("functions.add", '{"a": 1, "b": 2}'),
            final("3"),
        ],
        [add],
        instructions="Use the add tool.",
    )
    result = agent.run("1+2?")
    assert result.answer == "3"
    bad, good = result.tool_calls
    assert bad.is_error and "a" in bad.output and "integer" in bad.output
    assert not good.is_error and good.output == "3"
    assert [m.author.name for m in tool_messages(result)] == ["functions.add", "functions.add"]
    # the developer message holds the instructions and the functions namespace
    rendered = enc.decode(render_conversation(result.messages[:2], enc))
    assert "# Instructions\n\nUse the add tool." in rendered
    assert "namespace functions {" in rendered and "type add = (_: {" in rendered
    # the model read the error: it is in the next prompt
    assert bad.output in enc.decode(engine.prompts[1])


def test_unknown_tool_is_fed_back(enc):
    agent, engine = make(enc, [call("functions.multiply", '{"a": 2}'), final("ok")], [add])
    result = agent.run("2*3?")
    assert result.stop_reason is StopReason.ANSWER
    (unknown,) = result.tool_calls
    assert unknown.is_error and "Unknown tool" in unknown.output and "functions.add" in unknown.output
    assert unknown.author == "functions.multiply"
    assert "Unknown tool 'functions.multiply'" in enc.decode(engine.prompts[1])


def test_malformed_output_is_fed_back(enc):
    agent, engine = make(
        enc,
        [
            "<|channel|>commentary<|message|>calling nobody<|call|>",  # <|call|> without a recipient
            "I forgot the format entirely",  # no header, no stop token: the stream just ends
            final("fine"),
        ],
    )
    events = list(agent.stream("hi"))
    result = events[-1].result
    assert result.answer == "fine" and result.steps == 3
    fed = [e for e in events if isinstance(e, ParseProblem) and e.fed_back]
    assert [e.kind for e in fed] == ["call_without_recipient", "truncated"]
    systems = [m for m in result.new_messages if m.author.role is Role.SYSTEM]
    assert len(systems) == 2 and "not valid harmony" in systems[0].text
    assert "call_without_recipient" in enc.decode(engine.prompts[1])
    assert [e.ended_with for e in events if isinstance(e, StepDone)] == ["error", "error", "answer"]


def test_final_with_end_token_still_answers(enc):
    agent, _ = make(enc, ["<|channel|>final<|message|>done<|end|>"])
    result = agent.run("hi")
    assert (result.answer, result.stop_reason) == ("done", StopReason.ANSWER)


def test_max_steps(enc):
    agent, engine = make(
        enc, [call("functions.add", '{"a": 1, "b": 1}')], [add], max_steps=3, repeat_last=True
    )
    result = agent.run("loop forever")
    assert result.stop_reason is StopReason.MAX_STEPS and result.answer == ""
    assert result.steps == 3 and engine.calls == 3 and len(result.tool_calls) == 3


def test_max_tokens(enc):
    long_thought = "<|channel|>analysis<|message|>" + "think " * 200 + "<|end|>"
    agent, _ = make(enc, [long_thought + final("x")], max_tokens=50)
    result = agent.run("hi")
    assert result.stop_reason is StopReason.MAX_TOKENS
    assert result.usage.generated_tokens == 50 and result.steps == 1


def test_wall_clock_timeout(enc):
    @tool
    def slow() -> str:
        """Take a while."""
        time.sleep(0.4)
        return "done"

    agent, _ = make(enc, [call("functions.slow", "{}")], [slow], timeout=0.3, repeat_last=True)
    t0 = time.monotonic()
    result = agent.run("go")
    assert result.stop_reason is StopReason.TIMEOUT and time.monotonic() - t0 < 2
    assert len(result.tool_calls) == 1


def test_hung_tool_is_bounded_by_the_toolbox_timeout(enc):
    @tool
    def hang() -> str:
        """Never returns."""
        time.sleep(30)
        return "never"

    agent, _ = make(enc, [call("functions.hang", "{}"), final("gave up")], [hang], tool_timeout=0.5)
    t0 = time.monotonic()
    result = agent.run("go")
    assert time.monotonic() - t0 < 5
    (hung,) = result.tool_calls
    assert hung.is_error and "did not finish within 0.5 seconds" in hung.output
    assert result.answer == "gave up"


def test_a_tool_that_raises_is_fed_back(enc):
    @tool
    def boom(x: int) -> int:
        """Fail.

        Args:
            x: Anything.
        """
        raise ValueError(f"cannot handle {x}")

    agent, _ = make(enc, [call("functions.boom", '{"x": 7}'), final("sorry")], [boom])
    result = agent.run("go")
    assert "ValueError: cannot handle 7" in result.tool_calls[0].output and result.answer == "sorry"


def test_session_continues_and_drops_finished_reasoning(enc):
    agent, engine = make(
        enc,
        [
            call("functions.add", '{"a": 1, "b": 2}', think="Use add."),
            final("3", think="It is 3."),
            final("6", think="Double."),
        ],
        [add],
    )
    first = agent.run("1+2?")
    assert first.answer == "3"
    # within the turn, reasoning stayed in the prompt of step 2
    assert "Use add." in enc.decode(engine.prompts[1])
    second = agent.run("and doubled?")
    assert second.answer == "6"
    prompt = enc.decode(engine.prompts[2])
    assert "Use add." not in prompt and "It is 3." not in prompt  # the finished turn's reasoning is gone
    assert "1+2?" in prompt and "<|channel|>final<|message|>3<|end|>" in prompt and "and doubled?" in prompt
    assert [m.author.role for m in second.new_messages] == [Role.USER, Role.ASSISTANT, Role.ASSISTANT]
    assert second.messages[0] is first.messages[0]  # one session, one system message


def test_keep_reasoning_keeps_prefix(enc):
    agent, engine = make(enc, [final("a", think="t1"), final("b", think="t2")], keep_reasoning=True)
    agent.run("one")
    agent.run("two")
    assert "t1" in enc.decode(engine.prompts[1])


def test_caller_system_text_and_reasoning_line(enc):
    agent, engine = make(
        enc,
        [final("arr")],
        system="You are a pirate.\nReasoning: low",
        instructions="Answer in one word.",
        reasoning_effort="high",
    )
    agent.run("hi")
    prompt = enc.decode(engine.prompts[0])
    assert prompt.startswith("<|start|>system<|message|>You are a pirate.\nKnowledge cutoff: 2024-06\n")
    assert "Current date: 2026-01-02\n\nReasoning: low\n\n" in prompt
    assert "<|start|>developer<|message|># Instructions\n\nAnswer in one word.<|end|>" in prompt
    agent2, engine2 = make(enc, [final("x")], instructions="Be brief.\nReasoning: high")
    agent2.run("hi")
    prompt2 = enc.decode(engine2.prompts[0])
    assert "Reasoning: high" in prompt2 and "# Instructions\n\nBe brief.<|end|>" in prompt2


def test_astream_gives_the_same_events(enc):
    script = [call("functions.add", '{"a": 1, "b": 2}', think="add"), final("3")]
    sync_agent, _ = make(enc, script, [add])
    sync_events = list(sync_agent.stream("1+2"))

    async def collect():
        agent, _ = make(enc, script, [add])
        return [e async for e in agent.astream("1+2")]

    async_events = asyncio.run(collect())
    strip = lambda es: [(type(e).__name__, getattr(e, "text", None)) for e in es]  # noqa: E731
    assert strip(async_events) == strip(sync_events)
    assert async_events[-1].result.answer == "3"


def test_astream_raises_engine_errors_and_frees_the_session(enc):
    agent, _ = make(enc, [final("only one")])

    async def go():
        assert (await agent.arun("a")).answer == "only one"
        with pytest.raises(RuntimeError, match="script"):
            await agent.arun("b")

    asyncio.run(go())


def test_result_json_roundtrip(enc):
    agent, _ = make(enc, [call("functions.add", '{"a": 1, "b": 2}'), final("3")], [add])
    data = json.loads(json.dumps(agent.run("x").to_dict()))
    assert data["answer"] == "3" and data["stop_reason"] == "answer" and data["steps"] == 2
    assert data["tool_calls"][0]["output"] == "3"
    assert data["messages"][0] == {"role": "user", "name": None, "content": [{"type": "text", "text": "x"}]}


@pytest.mark.bwrap
def test_python_twice_keeps_state(enc):
    from gptoss_agent.sandbox import open_sandbox
    from gptoss_agent.sandbox.bubblewrap import bubblewrap_available
    from gptoss_agent.tools import Python

    if not bubblewrap_available():
        pytest.skip("bubblewrap is missing or cannot create namespaces here (CI installs it)")
    with open_sandbox("bubblewrap", timeout=30) as session:
        agent, _ = make(
            enc,
            [
                call("python", "x = 6 * 7\nprint('set')", "analysis", think="Compute."),
                call("python", "x + 1", "analysis"),
                final("43"),
            ],
            [Python(session)],
        )
        result = agent.run("what is 6*7+1?")
    first, second = result.tool_calls
    assert (first.output.strip(), second.output.strip()) == ("set", "43")
    assert not first.is_error and not second.is_error
    assert [m.author.name for m in tool_messages(result)] == ["python", "python"]
    assert list(result.messages[0].content[0].tools or {}) == ["python"]
    assert result.answer == "43"


def test_each_step_prefills_only_new_tokens_on_the_real_engine(enc, tiny_engine):
    """The real LocalEngine's cache across the loop's steps and turns (tokens forced from a script)."""
    from gptoss_agent.agent.scripted import ForcedEngine

    tiny_engine.reset()
    script = [
        call("functions.add", '{"a": 1, "b": 2}', think="Add them."),
        call("functions.add", '{"a": 3, "b": 3}'),
        final("6", think="Done."),
        final("again 6"),
    ]
    engine = ForcedEngine(tiny_engine, script, enc=enc)
    agent = Agent(engine, [add], enc=enc, date=DATE)
    stats = []
    for task in ("add twice", "once more"):
        for event in agent.stream(task):
            if isinstance(event, StepDone):
                stats.append(event.usage)
    prompts = engine.script.prompts
    generated = [engine.script.encode(s) for s in script]
    assert stats[0].reused_tokens == 0 and stats[0].prefilled_tokens == len(prompts[0])
    for k in (1, 2):  # within the turn: everything before is reused; only the tool reply + header is new
        previous = len(prompts[k - 1]) + len(generated[k - 1]) - 1  # the stop token never ran
        assert stats[k].reused_tokens == previous
        assert stats[k].prefilled_tokens == len(prompts[k]) - previous
        assert stats[k].prefilled_tokens < 40
    # a new turn: the finished turn's reasoning is dropped, so reuse ends where it was
    dropped_at = next(i for i, (a, b) in enumerate(zip(prompts[2], prompts[3], strict=False)) if a != b)
    assert stats[3].reused_tokens == dropped_at
    assert stats[3].prefilled_tokens == len(prompts[3]) - dropped_at


def test_a_full_context_ends_the_run(enc):
    # without compaction (compaction=None); tests/agent/test_compaction.py has the default
    agent, engine = make(
        enc, [call("functions.add", '{"a": 1, "b": 2}'), final("never")], [add], compaction=None
    )
    engine.context_length = 10_000
    agent.run("warm up")  # fits
    engine.context_length = len(engine.prompts[-1]) + 1  # the next prompt is longer than this
    engine.responses.append(final("x"))
    result = agent.run("and now?")
    assert result.stop_reason is StopReason.CONTEXT and result.steps == 1 and result.answer == ""
