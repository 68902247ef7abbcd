"""Long sessions: the prompt holds what the model generated, token for token.

The scripted completions are in the forms gpt-oss really emits: the recipient after the channel
(``<|channel|>commentary to=functions.add <|constrain|>json``), `` json`` without
``<|constrain|>``, and reasoning ``<|end|>`` then the call in one generation. Rendered
canonically, each of these differs from what was generated (``to=`` moves before the channel).
"""

from __future__ import annotations

import json

import pytest
from agent_helpers import DATE, add
from gptoss_agent.agent import (
    Agent,
    Message,
    Role,
    ScriptedEngine,
    StepDone,
    StopReason,
    StreamParser,
    render_conversation,
    render_conversation_for_completion,
    render_message,
)
from gptoss_agent.agent.harmony import CALL, END, RETURN, START

THINK_THEN_CALL = (
    "<|channel|>analysis<|message|>The user wants 1+2; use the add tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.add <|constrain|>json<|message|>"
    '{"a": 1, "b": 2}<|call|>'
)
CALL_JSON_WITHOUT_CONSTRAIN = '<|channel|>commentary to=functions.add json<|message|>{"a": 3, "b": 4}<|call|>'
THINK_THEN_ANSWER = (
    "<|channel|>analysis<|message|>Both sums are known: 3 and 7.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>3 and 7.<|return|>"
)
SECOND_TURN = [
    '<|channel|>commentary to=functions.add <|constrain|>json<|message|>{"a": 3, "b": 7}<|call|>',
    "<|channel|>analysis<|message|>10.<|end|><|start|>assistant<|channel|>final<|message|>10<|return|>",
]


def _agent(enc, script, **kw):
    engine = ScriptedEngine(script, enc=enc)
    return Agent(engine, [add], enc=enc, date=DATE, **kw), engine


def _header(enc) -> list[int]:
    return [START, *enc.encode_ordinary("assistant")]


def test_within_a_turn_each_prompt_is_the_last_one_plus_what_was_generated(enc):
    script = [THINK_THEN_CALL, CALL_JSON_WITHOUT_CONSTRAIN, THINK_THEN_ANSWER]
    agent, engine = _agent(enc, script)
    result = agent.run("What are 1+2 and 3+4?")
    assert result.stop_reason is StopReason.ANSWER and result.answer == "3 and 7."
    prompts = engine.prompts
    tools = [m for m in result.messages if m.author.role is Role.TOOL]
    assert len(prompts) == 3 and len(tools) == 2
    for k in range(2):
        generated = engine.encode(script[k])
        tool = render_message(tools[k], enc)
        assert prompts[k + 1] == prompts[k] + generated + tool + _header(enc)
    # the canonical rendering of the same messages would not continue the cache
    plain = [Message.from_dict({**m.to_dict(), "metadata": {}}) for m in result.messages[:-2]]
    canonical = render_conversation_for_completion(plain, Role.ASSISTANT, enc, auto_drop_analysis=False)
    assert canonical != prompts[2] and canonical[:50] == prompts[2][:50]
    # a perfect prefix cache (the scripted engine's) then prefills only the new tokens
    stats = [e.usage for e in _rerun(enc, script)]
    for k in (1, 2):
        assert stats[k].reused_tokens == len(prompts[k - 1]) + len(engine.encode(script[k - 1])) - 1
        assert stats[k].prefilled_tokens == len(prompts[k]) - stats[k].reused_tokens
        assert stats[k].prefilled_tokens < 40  # the tool message and the next header


def _rerun(enc, script) -> list[StepDone]:
    agent, _ = _agent(enc, script)
    return [e for e in agent.stream("What are 1+2 and 3+4?") if isinstance(e, StepDone)]


def test_each_message_of_one_generation_keeps_its_own_tokens(enc):
    agent, engine = _agent(enc, [THINK_THEN_CALL, CALL_JSON_WITHOUT_CONSTRAIN, THINK_THEN_ANSWER])
    result = agent.run("What are 1+2 and 3+4?")
    think, call = result.new_messages[1], result.new_messages[2]
    assert think.channel == "analysis" and call.recipient == "functions.add"
    first = engine.encode(THINK_THEN_CALL)
    cut = first.index(END) + 1
    assert think.token_ids == _header(enc) + first[:cut]
    assert call.token_ids == first[cut:] and call.token_ids[0] == START and call.token_ids[-1] == CALL
    answer = result.new_messages[-1]
    assert answer.channel == "final" and answer.token_ids is not None
    assert answer.token_ids[-1] == END and RETURN not in answer.token_ids  # history keeps <|end|>
    assert call.content_type == "<|constrain|>json" and result.new_messages[4].content_type == "json"


def test_a_new_turn_reuses_everything_before_the_first_dropped_reasoning(enc):
    agent, engine = _agent(
        enc, [THINK_THEN_CALL, CALL_JSON_WITHOUT_CONSTRAIN, THINK_THEN_ANSWER, *SECOND_TURN]
    )
    first = agent.run("What are 1+2 and 3+4?")
    steps = [e for e in agent.stream("And 3+7?") if isinstance(e, StepDone)]
    assert [e.ended_with for e in steps] == ["call", "answer"]
    before = engine.prompts[2] + engine.encode(THINK_THEN_ANSWER)[:-1]  # what the cache holds
    after = engine.prompts[3]
    dropped = next(i for i, m in enumerate(first.messages) if m.channel == "analysis")
    expected = len(render_conversation(first.messages[:dropped], enc, auto_drop_analysis=False))
    common = next(i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
    # (the next message's `<|start|>assistant<|channel|>` matches the dropped one's too)
    assert expected <= common <= expected + 3 and steps[0].usage.reused_tokens == common
    # and within the new turn, full reuse again
    assert engine.prompts[4][: len(after)] == after
    assert steps[1].usage.reused_tokens == len(after) + len(engine.encode(SECOND_TURN[0])) - 1


def test_token_ids_round_trip_through_the_transcript(enc, tmp_path):
    path = tmp_path / "session.jsonl"
    agent, engine = _agent(enc, [THINK_THEN_CALL, CALL_JSON_WITHOUT_CONSTRAIN], transcript=path, max_steps=2)
    assert agent.run("What are 1+2 and 3+4?").stop_reason is StopReason.MAX_STEPS
    agent.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    generated = [line for line in lines if "metadata" in line]
    assert [line["role"] for line in generated] == ["assistant"] * 3
    resumed_engine = ScriptedEngine([THINK_THEN_ANSWER], enc=enc)
    resumed = Agent.from_transcript(path, resumed_engine, [add], enc=enc, date=DATE)
    assert resumed.resume().answer == "3 and 7."
    # the resumed prompt continues the one before the crash exactly
    last = engine.prompts[-1] + engine.encode(CALL_JSON_WITHOUT_CONSTRAIN)
    assert resumed_engine.prompts[0][: len(last)] == last
    resumed.close()


def test_edited_or_caller_built_messages_render_canonically(enc):
    agent, _ = _agent(enc, [THINK_THEN_CALL, CALL_JSON_WITHOUT_CONSTRAIN, THINK_THEN_ANSWER])
    result = agent.run("What are 1+2 and 3+4?")
    call = result.new_messages[2]
    verbatim = render_message(call, enc)
    assert verbatim == call.token_ids
    call.content[0].text = '{"a": 5, "b": 6}'  # edited after generation: its ids no longer apply
    assert call.token_ids is None
    assert render_message(call, enc) == render_message(
        Message.from_dict({k: v for k, v in call.to_dict().items() if k != "metadata"}), enc
    )
    built = Message.from_role_and_content(Role.ASSISTANT, "hi").with_channel("final")
    assert built.token_ids is None and "metadata" not in built.to_dict()


@pytest.mark.parametrize(
    "completion",
    [
        "<|channel|>analysis<|message|>no end<|start|>assistant<|channel|>final<|message|>x<|return|>",
        "<|channel|>analysis<|message|>cut off",
        "<|channel|>final<|message|>x<|call|>",  # <|call|> without a recipient
        "<|channel|>analysis<|message|>a<|end|>stray<|start|>assistant<|channel|>final<|message|>x<|return|>",
    ],
)
def test_messages_read_with_an_error_carry_no_token_ids(enc, completion):
    parser = StreamParser(enc, Role.ASSISTANT, record_tokens=True)
    parser.feed(enc.encode(completion, allowed_special="all"))
    parser.process_eos()
    assert parser.errors
    clean = [m for m in parser.messages if m.token_ids is not None]
    for m in clean:  # a message after a recovery keeps ids only if it began at its own <|start|>
        assert m.token_ids[0] == START and m.token_ids[-1] in (END, CALL)
    assert len(clean) < len(parser.messages)


def test_the_parser_records_nothing_unless_asked(enc):
    parser = StreamParser(enc, Role.ASSISTANT)
    parser.feed(enc.encode(THINK_THEN_CALL, allowed_special="all"))
    assert all(m.token_ids is None and not m.metadata for m in parser.messages)


def test_bad_token_ids_in_a_transcript_are_one_clear_error():
    line = {"role": "assistant", "content": "x", "metadata": {"token_ids": ["a"]}}
    with pytest.raises(ValueError, match="token_ids must be a list of token ids"):
        Message.from_dict(line)


def test_a_real_engine_reuses_every_shared_token_across_steps_and_a_dropped_turn(enc, tiny_engine):
    """The real LocalEngine (tiny random checkpoint, sliding window 128) driven by the loop, tokens
    forced from the script: within a turn every step reuses all it can; on the new turn the
    finished turn's reasoning (over 128 tokens before the turn's end) is dropped, and reuse
    reaches the first dropped message."""
    from gptoss_agent.agent.scripted import ForcedEngine

    window = tiny_engine.model.config.sliding_window
    long_think = "I should add the numbers with the tool, then check the result. " * 20
    first_call = THINK_THEN_CALL.replace("The user wants 1+2; use the add tool.", long_think)
    assert len(enc.encode_ordinary(long_think)) > window
    script = [first_call, CALL_JSON_WITHOUT_CONSTRAIN, THINK_THEN_ANSWER, *SECOND_TURN]
    session = tiny_engine.session() if hasattr(tiny_engine, "session") else tiny_engine
    session.reset()
    engine = ForcedEngine(session, script, enc=enc)
    agent = Agent(engine, [add], enc=enc, date=DATE)
    usage = []
    for task in ("What are 1+2 and 3+4?", "And 3+7?"):
        usage += [e.usage for e in agent.stream(task) if isinstance(e, StepDone)]
    prompts = engine.script.prompts
    generated = [engine.script.encode(s) for s in script]
    assert len(usage) == 5
    for k in (1, 2, 4):  # within a turn: everything but the new tool message and header
        assert usage[k].reused_tokens == len(prompts[k - 1]) + len(generated[k - 1]) - 1
        assert usage[k].prefilled_tokens == len(prompts[k]) - usage[k].reused_tokens < 40
    held = prompts[2] + generated[2][:-1]
    common = next(i for i, (a, b) in enumerate(zip(held, prompts[3], strict=False)) if a != b)
    assert agent.messages[3].recipient == "functions.add"  # system, developer, user, (reasoning dropped)
    dropped = render_conversation(agent.messages[:3], enc, auto_drop_analysis=False)  # up to the drop
    assert len(held) - len(dropped) > window  # the drop lies beyond the sliding window's reach
    assert len(dropped) <= usage[3].reused_tokens <= common
    assert usage[3].prefilled_tokens == len(prompts[3]) - usage[3].reused_tokens
