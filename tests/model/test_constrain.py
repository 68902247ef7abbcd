"""Constrained decoding: the harmony grammar admits what gpt-oss writes and nothing undeclared, and a
random-weight model forced through it at temperature 1 always produces calls that validate."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest
import torch
from gptoss_agent.agent.harmony import StreamParser, ToolCall, stop_tokens_for_assistant_actions
from gptoss_agent.agent.messages import Role
from gptoss_agent.model import LocalEngine, Sampling
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.constrain import ConstraintError, HarmonyGrammar, HarmonySpec, ToolRule, harmony_lark
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -50, "maximum": 50}, "b": {"type": "boolean"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = (ToolRule("functions.get_weather", WEATHER), ToolRule("functions.add", ADD), ToolRule("python"))
JSON_TOOLS = TOOLS[:2]  # a random model never ends free text (python's code): sample these
ANSWER = {
    "type": "object",
    "properties": {"total": {"type": "integer", "minimum": 0, "maximum": 999}, "ok": {"type": "boolean"}},
    "required": ["total", "ok"],
    "additionalProperties": False,
}
SCHEMAS = {"functions.get_weather": WEATHER, "functions.add": ADD}


@pytest.fixture(scope="module")
def grammars(enc):
    cache: dict[str, HarmonyGrammar] = {}

    def get(tools=TOOLS, **options) -> HarmonyGrammar:
        spec = HarmonySpec(tools=tools, **options)
        if spec.key() not in cache:
            cache[spec.key()] = HarmonyGrammar.compile(enc, spec)
        return cache[spec.key()]

    return get


@pytest.fixture(scope="module")
def enc():
    from gptoss_agent.model.tokenizer import load_tokenizer

    return load_tokenizer()


def ids(enc, text: str) -> list[int]:
    return enc.encode(text, allowed_special="all")


# -- the grammar admits gpt-oss's own forms ---------------------------------------------------

MODEL_FORMS = [
    # recipient after the channel, <|constrain|>json (gpt-oss's usual header)
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris","unit":"c"}<|call|>',
    # ` json` without <|constrain|>, spaced JSON
    '<|channel|>commentary to=functions.add json<|message|>{"a": 3, "b": true}<|call|>',
    # several messages in one generation: analysis <|end|>, then the call (the keys in the schema's
    # order: llguidance generates an object's properties in the order the schema lists them)
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo","days":2,"unit":"f"}<|call|>',
    # the recipient in the role position
    ' to=functions.add<|channel|>commentary json<|message|>{"a":-1,"b":false}<|call|>',
    # python: code as free text on analysis
    "<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>",
    # a preamble on commentary, then the answer
    "<|channel|>commentary<|message|>Let me think.<|end|><|start|>assistant<|channel|>final<|message|>42<|return|>",
]


@pytest.mark.parametrize("text", MODEL_FORMS)
def test_the_forms_gpt_oss_writes_are_admitted(enc, grammars, text):
    assert grammars().start().accepts(ids(enc, text))


REFUSED = {
    "undeclared tool": '<|channel|>commentary to=functions.delete_everything json<|message|>{}<|call|>',
    "number out of range": '<|channel|>commentary to=functions.add json<|message|>{"a": 51, "b": true}<|call|>',
    "enum": '<|channel|>commentary to=functions.get_weather json<|message|>{"city":"Rome","unit":"k"}<|call|>',
    "missing key": '<|channel|>commentary to=functions.get_weather json<|message|>{"city":"Rome"}<|call|>',
    "extra key": '<|channel|>commentary to=functions.add json<|message|>{"a":1,"b":true,"c":2}<|call|>',
    "too long": '<|channel|>commentary to=functions.get_weather json<|message|>{"city":"Llanfairpwll","unit":"c"}<|call|>',
    "not json": "<|channel|>commentary to=functions.add json<|message|>a=1, b=0<|call|>",
    "a call ended as an answer": '<|channel|>commentary to=functions.add json<|message|>{"a":1,"b":true}<|return|>',
    "foreign role": "<|channel|>analysis<|message|>x<|end|><|start|>user<|message|>hi<|end|>",
}


@pytest.mark.parametrize("text", REFUSED.values(), ids=REFUSED.keys())
def test_undeclared_or_invalid_calls_are_refused(enc, grammars, text):
    assert not grammars().start().accepts(ids(enc, text))


def test_tool_choice_decides_what_may_end_the_generation(enc, grammars):
    answer = ids(enc, "<|channel|>final<|message|>42<|return|>")
    call = ids(enc, '<|channel|>commentary to=functions.add json<|message|>{"a":1,"b":true}<|call|>')
    python = ids(enc, "<|channel|>analysis to=python code<|message|>1<|call|>")
    assert grammars(tool_choice="auto").start().accepts(answer)
    assert not grammars(tool_choice="required").start().accepts(answer)
    assert grammars(tool_choice="required").start().accepts(python)
    assert not grammars(tool_choice="none").start().accepts(call)
    assert grammars(tool_choice="none").start().accepts(answer)
    named = grammars(tool_choice="functions.add")
    assert named.start().accepts(call) and not named.start().accepts(python)


def test_a_response_format_shapes_the_answer(enc, grammars):
    g = grammars(response_format=ANSWER)
    assert g.start().accepts(ids(enc, '<|channel|>final<|message|>{"total": 12, "ok": true}<|return|>'))
    assert not g.start().accepts(ids(enc, "<|channel|>final<|message|>twelve<|return|>"))


def test_the_reasoning_budget_closes_the_analysis(enc, grammars):
    state = grammars(reasoning_budget=4).start()
    head = ids(enc, "<|channel|>analysis<|message|>")
    for t in head:
        state.advance(t)
    words = ids(enc, " one two three four five six")
    for t in words[:4]:
        assert state.allows(t)
        state.advance(t)
    end = ids(enc, "<|end|>")[0]
    assert not state.allows(words[4]) and state.allows(end)
    allowed = torch.isfinite(state.mask(torch.zeros(201088))).nonzero().flatten().tolist()
    assert allowed == [end]


def test_bad_specs_are_explained(enc):
    with pytest.raises(ConstraintError, match="names no declared tool"):
        harmony_lark(HarmonySpec(tools=TOOLS, tool_choice="functions.nope"))
    with pytest.raises(ConstraintError, match="needs at least one"):
        harmony_lark(HarmonySpec(tool_choice="required"))


# -- a model that writes garbage on its own, forced through the grammar --------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """Random weights with the real vocabulary (harmony's control tokens are ids near 200k)."""
    torch.set_num_threads(1)
    cfg = replace(PRESETS["tiny"].with_layers(1), hidden_size=64, intermediate_size=64)  # the head dominates
    path = write_random_checkpoint(tmp_path_factory.mktemp("c") / "hf", cfg, format="hf")
    return LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")


def prompt(enc) -> list[int]:
    return ids(enc, "<|start|>user<|message|>What is the weather in Paris?<|end|><|start|>assistant")


def sample_calls(engine, enc, grammar, n: int, seed: int = 0) -> list[ToolCall | object]:
    """Generate ``n`` times at temperature 1 and parse each generation as the agent would."""
    out = []
    for i in range(n):
        parser = StreamParser(enc, Role.ASSISTANT)
        events = []
        tokens = engine.generate(
            prompt(enc),
            stop=stop_tokens_for_assistant_actions(),
            sampling=Sampling(temperature=1.0, seed=seed + i),
            max_tokens=120,
            constraint=grammar,
        )
        for token in tokens:
            events += parser.process(token)
        events += parser.process_eos()
        errors = [e for e in events if type(e).__name__ == "ParseError"]
        assert not errors, errors
        ends = [e for e in events if isinstance(e, ToolCall) or type(e).__name__ == "AnswerDone"]
        assert len(ends) == 1, f"generation {i} did not end in one call or answer: {enc.decode(list(tokens))!r}"
        out.append(ends[0])
    return out


def test_required_gives_valid_calls_to_declared_tools(engine, enc, grammars):
    g = grammars(JSON_TOOLS, tool_choice="required", reasoning_budget=2)
    calls = sample_calls(engine, enc, g, 120)  # with the 80 below: 200 samples of a forced random model
    seen = set()
    for call in calls:
        assert isinstance(call, ToolCall)
        seen.add(call.recipient)
        jsonschema.validate(json.loads(call.message.text), SCHEMAS[call.recipient])
    assert seen == set(SCHEMAS)  # the sampler still chooses among the declared tools


def test_a_named_tool_choice_gives_that_tool(engine, enc, grammars):
    g = grammars(JSON_TOOLS, tool_choice="functions.get_weather", reasoning_budget=2)
    for call in sample_calls(engine, enc, g, 40, seed=1000):
        assert isinstance(call, ToolCall) and call.recipient == "functions.get_weather"
        jsonschema.validate(json.loads(call.message.text), WEATHER)


def test_an_answer_fits_its_schema_on_the_first_attempt(engine, enc, grammars):
    g = grammars(JSON_TOOLS, tool_choice="none", response_format=ANSWER, reasoning_budget=2)
    for answer in sample_calls(engine, enc, g, 40, seed=2000):
        assert not isinstance(answer, ToolCall)
        jsonschema.validate(json.loads(answer.message.text), ANSWER)


# -- a model that obeys on its own: the constraint changes nothing ----------------------------------


@pytest.mark.parametrize("task", ["What is 4821 * 37? Use python.", "Compute 999 + 1234 in python, please."])
def test_greedy_output_is_unchanged_where_the_model_already_obeys(enc, task):
    """The demo model (trained by model/demo) writes well-formed calls by itself: constrained and
    unconstrained greedy generations are the same tokens, prompt for prompt."""
    from gptoss_agent.agent import Agent
    from gptoss_agent.agent.harmony import render_conversation_for_completion
    from gptoss_agent.agent.messages import Message, Role
    from gptoss_agent.model import load_engine
    from gptoss_agent.tools import Python

    engine = load_engine("demo", device="cpu")
    agent = Agent(engine, [Python()], enc=enc, reasoning_effort="low", date="2026-12-01")
    agent.load([Message.from_role_and_content(Role.USER, task)])
    prompt = render_conversation_for_completion(agent.messages, Role.ASSISTANT, enc, auto_drop_analysis=False)
    grammar = agent.constraints.grammar(enc, agent.toolbox, True, None)
    assert grammar is not None  # on by default for a LocalEngine
    greedy = Sampling(temperature=0.0)
    stops = stop_tokens_for_assistant_actions()
    free = list(engine.generate(prompt, stop=stops, sampling=greedy, max_tokens=200))
    assert grammar.start().accepts(free), f"the demo model did not obey here: {enc.decode(free)!r}"
    forced = list(engine.generate(prompt, stop=stops, sampling=greedy, max_tokens=200, constraint=grammar))
    assert forced == free
