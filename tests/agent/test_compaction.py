"""A full context is managed, not fatal: compaction before the prompt would pass the context."""

from __future__ import annotations

import pytest
from agent_helpers import DATE
from gptoss_agent.agent import (
    Agent,
    ContextCompacted,
    Message,
    ParseProblem,
    Role,
    ScriptedEngine,
    StepDone,
    StopReason,
    render_conversation_for_completion,
)
from gptoss_agent.agent.compaction import ELIDED_KEY, Compactor, reserve_tokens
from gptoss_agent.agent.messages import Author, TextContent
from gptoss_agent.tools import tool


@tool
def read_chunk(i: int) -> str:
    """Read one chunk of the report.

    Args:
        i: Which chunk.
    """
    return f"Chunk {i} of the report:" + " alpha" * 590


def _call(i: int) -> str:
    # gpt-oss's own form: reasoning, then the recipient after the channel, in one generation
    return (
        f"<|channel|>analysis<|message|>Read chunk {i} next.<|end|>"
        f'<|start|>assistant<|channel|>commentary to=functions.read_chunk <|constrain|>json<|message|>{{"i": {i}}}<|call|>'
    )


ANSWER = "<|channel|>final<|message|>The report has eight chunks.<|return|>"


def _eight_chunks(enc, **kw) -> tuple[Agent, ScriptedEngine]:
    engine = ScriptedEngine([_call(i) for i in range(8)] + [ANSWER], enc=enc)
    engine.context_length = 3000  # type: ignore[attr-defined]
    return Agent(engine, [read_chunk], enc=enc, date=DATE, max_steps=12, **kw), engine


def test_eight_long_tool_results_in_a_small_context_reach_the_answer(enc, tmp_path):
    path = tmp_path / "t.jsonl"
    agent, engine = _eight_chunks(enc, transcript=path)
    events = list(agent.stream("Read the whole report, chunk by chunk."))
    result = events[-1].result
    assert result.stop_reason is StopReason.ANSWER and result.answer == "The report has eight chunks."
    assert len(result.tool_calls) == 8 and result.steps == 9
    compactions = [e for e in events if isinstance(e, ContextCompacted)]
    assert compactions and all(e.tokens_after < e.tokens_before <= 3000 for e in compactions)
    assert all(e.elided_tool_results >= 1 and "elided" in e.detail for e in compactions)
    assert max(len(p) for p in engine.prompts) <= 3000 - reserve_tokens(3000)
    # the last two results stay whole, older ones became a one-line note; calls all stay
    tools = [m for m in agent.messages if m.author.role is Role.TOOL]
    assert len(tools) == 8 and all("alpha alpha" in m.text for m in tools[-2:])
    elided = [m for m in tools if ELIDED_KEY in m.metadata]
    assert elided and all("\n" not in m.text and "elided to fit the context" in m.text for m in elided)
    assert sum(1 for m in agent.messages if m.recipient == "functions.read_chunk") == 8
    # the transcript keeps every result whole
    agent.close()
    from gptoss_agent.agent import load_transcript

    kept = [m for m in load_transcript(path) if m.author.role is Role.TOOL]
    assert len(kept) == 8 and all("alpha alpha" in m.text for m in kept)


def test_without_compaction_the_same_run_stops_with_context(enc):
    agent, _ = _eight_chunks(enc, compaction=None)
    result = agent.run("Read the whole report, chunk by chunk.")
    assert result.stop_reason is StopReason.CONTEXT and result.answer == ""
    assert len(result.tool_calls) < 8


def test_one_chunk_is_about_600_tokens(enc):
    # (the scenario of the issue: eight 600-token tool results in a 3,000-token context)
    text = "Chunk 0 of the report:" + " alpha" * 590
    assert 590 <= len(enc.encode_ordinary(text)) <= 610


def test_a_generation_cut_off_by_the_context_end_is_context_not_bad_harmony(enc):
    rambling = "<|channel|>analysis<|message|>" + "I keep thinking. " * 200
    engine = ScriptedEngine([rambling], enc=enc)
    agent = Agent(engine, [read_chunk], enc=enc, date=DATE)
    prompt = render_conversation_for_completion(
        [
            agent._system_message(),
            agent._developer_message(),
            Message.from_role_and_content(Role.USER, "Go."),
        ],
        Role.ASSISTANT,
        enc,
    )
    agent.context_budget = len(prompt) + 60
    events = list(agent.stream("Go."))
    result = events[-1].result
    assert result.stop_reason is StopReason.CONTEXT
    assert not [e for e in events if isinstance(e, ParseProblem) and e.fed_back]
    assert not [m for m in agent.messages if m.author.role is Role.SYSTEM and "not valid harmony" in m.text]
    assert 0 < result.usage.generated_tokens <= 60 and len(engine.prompts) == 1
    assert [e.ended_with for e in events if isinstance(e, StepDone)] == ["context"]


def test_a_custom_policy_is_called_and_its_result_used(enc):
    seen = []

    def keep_recent(messages, budget, measure):
        seen.append((len(messages), budget, measure(messages)))
        head, rest = messages[:2], messages[2:]
        while rest and measure(head + rest) > budget // 2:
            rest = rest[1:]
        while rest and rest[0].author.role is not Role.USER and rest[0].author.role is not Role.ASSISTANT:
            rest = rest[1:]
        return head + rest

    agent, _ = _eight_chunks(enc, compaction=keep_recent)
    result = agent.run("Read the whole report, chunk by chunk.")
    assert result.stop_reason is StopReason.ANSWER and seen
    assert all(budget == 3000 - reserve_tokens(3000) and size > budget for _, budget, size in seen)
    assert agent.messages[0].author.role is Role.SYSTEM


def test_a_policy_that_frees_nothing_stops_the_run_and_loses_nothing(enc):
    agent, _ = _eight_chunks(enc, compaction=lambda messages, budget, measure: messages)
    result = agent.run("Read the whole report, chunk by chunk.")
    assert result.stop_reason is StopReason.CONTEXT
    assert all("alpha alpha" in m.text for m in agent.messages if m.author.role is Role.TOOL)


def _tool(name: str, text: str) -> Message:
    return Message(
        author=Author(Role.TOOL, name),
        content=[TextContent(text)],
        channel="commentary",
        recipient="assistant",
    )


def _assistant(channel: str, text: str, recipient: str | None = None) -> Message:
    return Message(
        author=Author(Role.ASSISTANT), content=[TextContent(text)], channel=channel, recipient=recipient
    )


def test_the_default_policy_elides_old_results_then_drops_old_turns_then_reasoning(enc):
    def measure(ms):
        return len(render_conversation_for_completion(ms, Role.ASSISTANT, enc, auto_drop_analysis=False))

    big = " beta" * 300
    system = Message.from_role_and_content(Role.SYSTEM, "You are a test.")
    turn1 = [
        Message.from_role_and_content(Role.USER, "first"),
        _assistant("commentary", "{}", "functions.f"),
        _tool("functions.f", "old" + big),
        _assistant("final", "done"),
    ]
    turn2 = [Message.from_role_and_content(Role.USER, "second")]
    for i in range(3):
        turn2 += [
            _assistant("analysis", f"thinking {i}" + " gamma" * 100),
            _assistant("commentary", "{}", "functions.f"),
            _tool("functions.f", f"new {i}" + big),
        ]
    messages = [system, *turn1, *turn2]
    total = measure(messages)

    # a little over: only the oldest result goes
    out = Compactor(keep_tool_results=2)(messages, budget=int((total - 100) / 0.75), measure=measure)
    elided = [m for m in out if ELIDED_KEY in m.metadata]
    assert [m.text[:0] for m in elided] == [""] and len(out) == len(messages)
    assert out[3] is not messages[3] and ELIDED_KEY in out[3].metadata and out[1:3] == messages[1:3]

    # more: results older than the last two, then the finished turn goes whole
    out = Compactor(keep_tool_results=2)(messages, budget=int((total - 700) / 0.75), measure=measure)
    assert out[0] is system and [m.text for m in out if m.author.role is Role.USER] == ["second"]
    assert sum(ELIDED_KEY in m.metadata for m in out) == 1  # "new 0"; the last two stay whole
    assert measure(out) <= int((total - 700) / 0.75) * 0.75

    # much more: the current turn's earlier reasoning, then all results but the newest
    out = Compactor(keep_tool_results=2)(messages, budget=500, measure=measure)
    assert out[0] is system and out[1].text == "second"
    tools = [m for m in out if m.author.role is Role.TOOL]
    assert len(tools) == 3 and ELIDED_KEY not in tools[-1].metadata
    assert not [m for m in out[:-3] if m.channel == "analysis"]
    assert sum(1 for m in out if m.recipient == "functions.f") == 3  # every call stays


def test_compactor_options_are_checked(enc):
    with pytest.raises(ValueError, match="keep_tool_results"):
        Compactor(keep_tool_results=-1)
    with pytest.raises(ValueError, match="target"):
        Compactor(target=0)
    with pytest.raises(ValueError, match="context_budget"):
        Agent(ScriptedEngine([], enc=enc), enc=enc, context_budget=3)
