"""The default cap on one generation (a model that never closes its message still ends) and the
live view's spinner while nothing readable appears."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator, Sequence

import pytest
from gptoss_agent.agent import Agent, StopReason, Usage
from gptoss_agent.agent.events import ReasoningDelta, StepDone
from gptoss_agent.agent.loop import GENERATION_TOKENS
from gptoss_agent.agent.render import Renderer
from gptoss_agent.agent.scripted import ScriptedEngine
from rich.console import Console


class NeverCloses:
    """An engine whose model opens an analysis message and thinks forever (never ``<|end|>``)."""

    def __init__(self, enc) -> None:
        self.head = enc.encode("<|channel|>analysis<|message|>", allowed_special="all")
        self.word = enc.encode(" and then")
        self.asked: list[int | None] = []

    def generate(self, prompt_ids: Sequence[int], *, stop, sampling=None, max_tokens=None) -> Iterator[int]:
        self.asked.append(max_tokens)
        stream = itertools.chain(self.head, itertools.cycle(self.word))
        yield from itertools.islice(stream, max_tokens)  # max_tokens None: truly endless


@pytest.mark.parametrize("effort", ["low", "medium"])
def test_a_model_that_never_closes_ends_with_max_tokens(enc, effort):
    engine = NeverCloses(enc)
    result = Agent(engine, reasoning_effort=effort, enc=enc).run("Think.")
    cap = GENERATION_TOKENS[Agent(engine, reasoning_effort=effort, enc=enc).reasoning_effort]
    assert result.stop_reason is StopReason.MAX_TOKENS
    assert result.steps == 1 and result.usage.generated_tokens == cap
    assert engine.asked == [cap]


def test_the_defaults_scale_with_effort_and_are_overridable(enc):
    engine = NeverCloses(enc)
    caps = [Agent(engine, reasoning_effort=e, enc=enc).max_generation_tokens for e in ("low", "medium", "high")]
    assert caps == [4096, 8192, 16384]
    result = Agent(engine, max_generation_tokens=100, enc=enc).run("Think.")
    assert result.stop_reason is StopReason.MAX_TOKENS and result.usage.generated_tokens == 100
    # the run's own budget, when smaller, bounds the generation instead
    result = Agent(engine, max_tokens=30, enc=enc).run("Think.")
    assert result.stop_reason is StopReason.MAX_TOKENS and result.usage.generated_tokens == 30
    assert engine.asked[-1] == 30
    with pytest.raises(ValueError, match="max_generation_tokens"):
        Agent(engine, max_generation_tokens=0, enc=enc)


def test_a_closed_message_within_the_cap_is_not_cut(enc):
    engine = ScriptedEngine(
        [
            "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>42<|return|>",
        ],
        enc=enc,
    )
    result = Agent(engine, max_generation_tokens=64, enc=enc).run("6*7?")
    assert result.stop_reason is StopReason.ANSWER and result.answer == "42"


def test_no_cap_lets_the_engine_decide(enc):
    engine = NeverCloses(enc)
    agent = Agent(engine, max_generation_tokens=None, max_tokens=50, enc=enc)
    assert agent.run("Think.").usage.generated_tokens == 50 and engine.asked == [50]


def test_spinner_counts_tokens_while_nothing_shows(enc):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    view = Renderer(console, show_reasoning=False)
    for n in range(1, Renderer.QUIET_TOKENS):
        view.tokens(n)
    assert view._status is None  # a few quiet tokens: no spinner yet
    for n in range(Renderer.QUIET_TOKENS, 41):
        view.tokens(n)
    assert view._status is not None
    view(ReasoningDelta(step=1, text="hidden"))  # hidden reasoning is not progress
    assert view._status is not None
    view(StepDone(step=1, usage=Usage(), ended_with="call", seconds=0.1, generation_seconds=0.1, tool_seconds=0))
    assert view._status is None
    assert "generating · 40 tokens · nothing to show yet" in out.getvalue()
    # a new generation counts from its own start
    view.tokens(1)
    assert view._count == 1 and view._quiet_from == 0


def test_spinner_stays_off_when_the_view_is_not_a_terminal():
    out = io.StringIO()
    view = Renderer(Console(file=out, width=80))
    for n in range(1, 100):
        view.tokens(n)
    assert view._status is None and out.getvalue() == ""


@pytest.mark.slow
def test_cli_run_on_random_weights_ends(tiny_checkpoint):
    """Random weights never close a message: the cap ends the run (it ran 10 minutes before)."""
    from test_cli import FAST, cli

    proc = cli("Say hi.", "--model", str(tiny_checkpoint), "--json", "--max-generation-tokens", "8", *FAST)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["stop_reason"] == "max_tokens" and data["usage"]["generated_tokens"] <= 8 * data["steps"]
