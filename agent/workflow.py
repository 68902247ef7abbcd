"""Scripted workflows: several tasks in sequence in one agent session.

    flow = Workflow(agent)
    flow.step("research", "Find the capacity of the three largest tidal power stations.")
    flow.step(
        "total",
        lambda done: f"Add up the capacities you found: {done['research'].answer}",
        schema={"type": "object", "properties": {"total_mw": {"type": "number"}}, "required": ["total_mw"]},
    )
    result = flow.run()
    result["total"].data          # {"total_mw": 734.0}

Every step is one user turn of the same session: the conversation, the sandbox and the browser
carry over, so a step sees what the steps before it found (and a ``task`` function can quote it
explicitly). A step with a JSON Schema gets it as a harmony response format: all the workflow's
schemas go into the developer message's ``# Response Formats`` section when the session starts
(so the prompt prefix, and the engine's cache, stay the same from step to step), and the step's
task asks for that format by name. The answer is parsed and validated with ``jsonschema``; when
it does not fit, the model is told what is wrong (as the next user message) and answers again,
up to ``retries`` times. On a constrained engine (``LocalEngine``; ``Agent(constrain=...)``) the
schema also goes to the decoder (``Agent.answer_schema``), so the first answer fits and no retry
is needed.

Resuming after a crash: build the agent with ``Agent.from_transcript(path, ...)`` and run the
same workflow again. Steps whose task and valid answer are in the transcript are taken from it
without generating; a step cut short is finished (``Agent.resume``); the rest run as usual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from gptoss_agent.agent.events import AgentEvent, RunDone, RunResult, StopReason
from gptoss_agent.agent.loop import Agent
from gptoss_agent.agent.messages import Message, ResponseFormat, Role

__all__ = ["Step", "StepResult", "Workflow", "WorkflowError", "WorkflowResult", "parse_json_answer"]

RETRY_PREFIX = "Your answer does not match the response format"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.DOTALL)
_NAME = re.compile(r"[^A-Za-z0-9_]+")

TaskFn = Callable[[Mapping[str, "StepResult"]], str]


@dataclass
class Step:
    """One task of a workflow.

    Args:
        name: Unique; the key of its result (and its response format's name).
        task: The user message, or a function of the results so far that returns it.
        schema: A JSON Schema the answer must satisfy (the answer is then JSON).
        description: What the format is for (rendered as a comment above the schema).
        retries: How often the model may try again after an answer that does not fit.
    """

    name: str
    task: str | TaskFn
    schema: dict[str, Any] | None = None
    description: str | None = None
    retries: int = 2

    @property
    def format_name(self) -> str:
        return _NAME.sub("_", self.name).strip("_") or "answer"


@dataclass
class StepResult:
    """What one step produced."""

    name: str
    task: str
    answer: str
    """The final answer's text (the last attempt's)."""
    data: Any = None
    """The parsed JSON answer, for steps with a schema."""
    runs: list[RunResult] = field(default_factory=list)
    """One per attempt run in this process (empty when the step came from the transcript)."""
    resumed: bool = False
    """Taken from the transcript instead of generated."""


@dataclass
class WorkflowResult:
    """The results by step name, in order."""

    steps: dict[str, StepResult]

    def __getitem__(self, name: str) -> StepResult:
        return self.steps[name]

    def __iter__(self) -> Iterator[StepResult]:
        return iter(self.steps.values())

    @property
    def last(self) -> StepResult:
        return list(self.steps.values())[-1]


class WorkflowError(RuntimeError):
    """A step ended without a usable answer (a limit stopped it, or no valid JSON after retries).

    ``completed`` holds the steps done before it; ``step`` the one that failed (with its runs).
    """

    def __init__(self, message: str, step: StepResult, completed: dict[str, StepResult]) -> None:
        super().__init__(message)
        self.step = step
        self.completed = completed


def parse_json_answer(answer: str) -> Any:
    """The JSON value of an answer (a fenced code block is unwrapped). Raises ``ValueError``."""
    text = answer.strip()
    match = _FENCE.match(text)
    if match:
        text = match.group(1).strip()
    return json.loads(text)


def _problems(data: Any, schema: dict[str, Any]) -> list[str]:
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"at {e.json_path}: {e.message}" for e in errors[:5]]


@dataclass
class _Turn:
    user: str
    answer: str | None
    complete: bool


class Workflow:
    """Steps run in order in one agent session (see the module docstring).

    Args:
        agent: The session; a fresh ``Agent`` or one from ``Agent.from_transcript`` to resume.
        steps: ``Step`` objects (or add them with ``step(...)``).
    """

    def __init__(self, agent: Agent, steps: Sequence[Step] = ()) -> None:
        self.agent = agent
        self.steps: list[Step] = []
        for s in steps:
            self._add(s)

    def step(
        self,
        name: str,
        task: str | TaskFn,
        *,
        schema: dict[str, Any] | None = None,
        description: str | None = None,
        retries: int = 2,
    ) -> Workflow:
        """Add a step; returns the workflow (for chaining)."""
        return self._add(Step(name, task, schema, description, retries))

    def _add(self, step: Step) -> Workflow:
        if any(s.name == step.name for s in self.steps):
            raise ValueError(f"a step named {step.name!r} already exists")
        if step.schema is not None:
            jsonschema.validators.validator_for(step.schema).check_schema(step.schema)
        self.steps.append(step)
        return self

    # -- running ---------------------------------------------------------------------------

    def run(self, on_event: Callable[[str, AgentEvent], None] | None = None) -> WorkflowResult:
        """Run (or resume) every step; ``on_event(step_name, event)`` sees the agent's events.

        Raises:
            WorkflowError: a step ended without a usable answer.
        """
        self._declare_formats()
        turns = self._turns()
        done: dict[str, StepResult] = {}
        for step in self.steps:
            task = step.task(done) if callable(step.task) else step.task
            prompt = self._prompt(step, task)
            result = StepResult(step.name, task, "")
            matched, retries_used = self._replay(step, prompt, turns, result)
            if matched is None:  # not in the transcript: a fresh turn
                turns = []
                outcome = self._attempt(step, prompt, result, on_event)
            else:
                outcome = matched
                if outcome == "unfinished":
                    outcome = self._attempt(step, None, result, on_event)
            attempts_left = step.retries - retries_used
            while outcome != "ok":
                if outcome == "stopped" or attempts_left <= 0:
                    run = result.runs[-1] if result.runs else None
                    why = (
                        f"stopped by {run.stop_reason.value}"
                        if outcome == "stopped" and run is not None
                        else f"no answer matching its schema after {step.retries + 1} attempts"
                    )
                    raise WorkflowError(f"step {step.name!r}: {why}", result, done)
                attempts_left -= 1
                outcome = self._attempt(step, self._retry_prompt(step, outcome), result, on_event)
            done[step.name] = result
        return WorkflowResult(done)

    def _attempt(
        self,
        step: Step,
        prompt: str | None,
        result: StepResult,
        on_event: Callable[[str, AgentEvent], None] | None,
    ) -> str:
        """Run one turn (``prompt`` None: finish the turn in progress); return the outcome."""
        run = None
        self.agent.answer_schema = step.schema  # a constrained engine writes only answers that fit
        try:
            for event in self.agent.stream(prompt):
                if on_event is not None:
                    on_event(step.name, event)
                if isinstance(event, RunDone):
                    run = event.result
        finally:
            self.agent.answer_schema = None
        assert run is not None
        result.runs.append(run)
        if run.stop_reason is not StopReason.ANSWER:
            return "stopped"
        return self._check(step, run.answer, result)

    def _check(self, step: Step, answer: str, result: StepResult) -> str:
        """``ok``, or what is wrong with the answer (for the retry message)."""
        result.answer = answer
        if step.schema is None:
            return "ok"
        try:
            data = parse_json_answer(answer)
        except ValueError as e:
            return f"it is not JSON ({e})"
        problems = _problems(data, step.schema)
        if problems:
            return "; ".join(problems)
        result.data = data
        return "ok"

    # -- prompts and formats -----------------------------------------------------------------

    def _declare_formats(self) -> None:
        """Put every step's schema in the developer message, if the session has not begun."""
        if self.agent.messages:
            return
        declared = {f.name for f in self.agent.response_formats}
        for step in self.steps:
            if step.schema is not None and step.format_name not in declared:
                self.agent.response_formats.append(
                    ResponseFormat(step.format_name, step.schema, step.description)
                )

    def _declared(self, step: Step) -> bool:
        for message in self.agent.messages[:2]:
            for content in message.content:
                formats = getattr(content, "response_formats", None)
                if formats and any(f.name == step.format_name for f in formats):
                    return True
        return not self.agent.messages and any(
            f.name == step.format_name for f in self.agent.response_formats
        )

    def _prompt(self, step: Step, task: str) -> str:
        if step.schema is None:
            return task
        if self._declared(step):
            return f"{task}\n\nAnswer with JSON only, in the `{step.format_name}` response format."
        schema = json.dumps(step.schema, separators=(",", ":"))
        return f"{task}\n\nAnswer with JSON only, matching this JSON Schema: {schema}"

    def _retry_prompt(self, step: Step, problem: str) -> str:
        return (
            f"{RETRY_PREFIX} `{step.format_name}`: {problem}. "
            "Reply again with only the corrected JSON, nothing else."
        )

    # -- resuming ------------------------------------------------------------------------------

    def _turns(self) -> list[_Turn]:
        """The session's user turns: their text and final answer (None when cut short)."""
        turns: list[_Turn] = []
        for message in self.agent.messages:
            if message.author.role is Role.USER:
                turns.append(_Turn(message.text, None, False))
            elif turns and _is_final(message):
                turns[-1].answer, turns[-1].complete = message.text, True
        return turns

    def _replay(
        self, step: Step, prompt: str, turns: list[_Turn], result: StepResult
    ) -> tuple[str | None, int]:
        """Take the step from the transcript (consuming its turns from ``turns``): the outcome of
        its last recorded attempt (``unfinished`` when that turn was cut short; None when the step
        is not there) and the number of retries it already used."""
        index = next((i for i, t in enumerate(turns) if t.user == prompt), None)
        if index is None:
            return None, 0
        attempts = [turns[index]]
        rest = turns[index + 1 :]
        while rest and rest[0].user.startswith(RETRY_PREFIX):
            attempts.append(rest.pop(0))
        del turns[: len(turns) - len(rest)]
        result.resumed = True
        last = attempts[-1]
        if not last.complete or last.answer is None:
            return "unfinished", len(attempts) - 1
        return self._check(step, last.answer, result), len(attempts) - 1


def _is_final(message: Message) -> bool:
    return message.author.role is Role.ASSISTANT and message.channel == "final"
