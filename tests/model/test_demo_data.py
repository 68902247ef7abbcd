"""The demo model's training data: rendered exactly as the Agent renders a run, in the form gpt-oss
emits, and parsed back by our own harmony parser into the calls the conversation means."""

from __future__ import annotations

import json
import random

import pytest
from gptoss_agent.agent.harmony import StreamParser, ToolCall, render_conversation
from gptoss_agent.agent.loop import Agent
from gptoss_agent.agent.messages import Role
from gptoss_agent.model.demo import browse, data, functions
from gptoss_agent.model.demo.data import Generator, python_value


@pytest.fixture(scope="module")
def gen(enc):
    return Generator(enc, skills=("python", "functions", "browser", "args"))


def _calls(enc, tokens):
    return [e for e in StreamParser(enc, Role.ASSISTANT).feed(tokens) if isinstance(e, ToolCall)]


@pytest.mark.parametrize("skill", ["python", "functions", "browser", "copy", "args"])
def test_every_step_parses_into_the_call_the_conversation_makes(enc, gen, skill):
    rng = random.Random(3)
    for _ in range(5):
        setting = gen.setting(rng, skill)
        conv = gen.conversation(rng, setting, skill)
        items = conv.items(enc)
        assert len(items) == len(conv.steps)
        for item, step in zip(items, conv.steps, strict=True):
            calls = _calls(enc, item.target)
            wanted = [m for m in step.messages if m.recipient is not None]
            assert [c.recipient for c in calls] == [m.recipient for m in wanted]
            assert [c.message.text for c in calls] == [m.text for m in wanted]
        last = items[-1].target  # an answer, except for ``args``, which stops at the call
        assert enc.decode(last[-1:]) == ("<|call|>" if skill == "args" else "<|return|>")


def test_the_prompt_is_the_one_the_agent_renders(enc, gen):
    """System and developer messages come from Agent itself: same tools, date and effort -> same tokens."""
    from gptoss_agent.tools import Python

    rng = random.Random(5)
    setting = data.Setting(("python",), "2026-03-04", "high", False)
    conv = gen.conversation(rng, setting, "python")
    agent = Agent(object(), tools=[Python(sandbox=object())], reasoning_effort="high", date="2026-03-04", enc=enc)  # type: ignore[arg-type]
    system = render_conversation([agent._system_message()], enc)
    context = conv.items(enc)[0].context
    assert context[: len(system)] == system
    assert "Reasoning: high" in enc.decode(system) and "Current date: 2026-03-04" in enc.decode(system)


def test_gpt_oss_forms_of_the_calls(enc, gen):
    rng = random.Random(1)
    text = {
        skill: enc.decode(gen.conversation(rng, gen.setting(rng, skill), skill).items(enc)[0].target)
        for skill in ("python", "functions", "browser")
    }
    assert "<|channel|>analysis to=python code<|message|>" in text["python"]
    assert "<|channel|>commentary to=functions." in text["functions"]
    assert " <|constrain|>json<|message|>{" in text["functions"]
    assert "<|channel|>analysis to=browser.search code<|message|>{\"query\": " in text["browser"]


@pytest.mark.parametrize("code", ["123456 * 789", "2 ** 40", "98765 // 321", "x = [3, 4, 8]\nsum(x) / len(x)", "5 - 99999"])
def test_python_outputs_are_what_the_sandbox_shows(code):
    from gptoss_agent.sandbox.local import DangerousLocalSession  # the sandboxes' driver, unisolated

    with DangerousLocalSession() as session:
        assert session.run(code).output == python_value(code)


def test_enough_phrasings_and_a_held_out_split():
    assert len(data._FRAMES) >= 25 and len(functions._FRAMES) >= 25 and len(browse._FRAMES) >= 25
    for frames in (data._FRAMES, functions._FRAMES, browse._FRAMES):
        train = {f for i, f in enumerate(frames) if data.split_of(i, len(frames)) == "train"}
        held = {f for i, f in enumerate(frames) if data.split_of(i, len(frames)) == "heldout"}
        assert train and held and not train & held
    rng = random.Random(0)
    train_names = {f.name for _ in range(30) for f in functions.random_functions(rng, "train", 3)}
    held_names = {functions._make_function(rng, "heldout", t).name for t in functions._topics("heldout")}
    assert not train_names & held_names


def test_function_calls_carry_the_question_values_as_typed_json(enc):
    gen = Generator(enc, split="heldout", skills=("python", "functions"))
    rng = random.Random(11)
    for _ in range(10):
        conv = gen.conversation(rng, gen.setting(rng, "functions"), "functions")
        call = conv.steps[0].messages[-1]
        args = json.loads(call.text)
        assert args == conv.meta["arguments"]
        for value in args.values():
            assert str(value) in conv.user
        target = next(f for f in conv.meta["functions"] if f.name == conv.meta["function"])
        result = conv.meta["result"]
        tool = target.function_tool(lambda _r=result, **kw: _r)
        out = tool.call(target.name, call.text)  # the real FunctionTool accepts the trained call
        assert out.content == conv.meta["output"]


def test_browser_pages_come_from_the_real_browser(enc):
    gen = Generator(enc, skills=("python", "browser"))
    rng = random.Random(2)
    conv = gen.conversation(rng, gen.setting(rng, "browser"), "browser")
    results = conv.steps[0].tool_reply.text
    page = conv.steps[1].tool_reply.text
    assert results.startswith("[0] ") and "# Search Results" in results and "【" in results
    assert page.startswith("[1] " + conv.meta["entity"]) and "**viewing lines [0 - " in page
    cite = conv.meta["citation"]
    line = int(cite.split("†L")[1].rstrip("】"))
    assert f"L{line}: " in page and conv.answer in page.split(f"L{line}: ")[1].split("\n")[0]


def test_copy_conversations_repeat_the_numbers_and_names_of_the_question(enc, gen):
    rng = random.Random(5)
    names = []
    for _ in range(40):
        setting = gen.setting(rng, "copy")
        conv = gen.conversation(rng, setting, "copy")
        assert setting.builtins == () and not setting.functions  # the short system message
        final = conv.steps[-1].messages[-1]
        assert final.channel == "final" and final.text == conv.answer
        assert conv.answer in conv.user  # copied exactly: no typo lands inside a value
        names += [v for v in conv.answer.replace(",", " ").split() if not v.isdigit()]
    assert len(names) >= 10 and any("_" in n for n in names)
    # names copied in training are training names: held-out entities stay unseen
    assert all(browse.split_of_name(n.split("_")[0].capitalize()) == "train" for n in names)


@pytest.mark.parametrize("skill", ["python", "functions", "browser"])
def test_a_later_step_sees_the_earlier_ones_as_the_agent_prompts_them(enc, gen, skill):
    """At inference the loop's parser records the tokens the model generated and the next prompt
    holds them verbatim (recipient after the channel); a training context must be that prompt."""
    from gptoss_agent.agent.harmony import render_conversation_for_completion

    rng = random.Random(11)
    for _ in range(4):
        conv = gen.conversation(rng, gen.setting(rng, skill), skill)
        items = conv.items(enc)
        history = list(conv.head)
        for item, step, nxt in zip(items, conv.steps, items[1:], strict=False):
            parser = StreamParser(enc, Role.ASSISTANT, record_tokens=True)
            parser.feed(item.target)
            assert all(m.token_ids is not None for m in parser.messages)
            history += [*parser.messages, step.tool_reply]
            prompt = render_conversation_for_completion(history, Role.ASSISTANT, enc)
            assert nxt.context == prompt
            # and that prompt is the previous one, the completion, the tool's answer, a new header
            assert prompt[: len(item.context) + len(item.target)] == item.context + item.target
            assert "to=" in enc.decode(item.target) and enc.decode(item.target).index("<|channel|>") < enc.decode(item.target).index(" to=")
