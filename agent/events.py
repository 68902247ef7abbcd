"""What a run reports while it happens (events) and when it ends (``RunResult``).

The loop yields these objects and nothing else: no printing, no colours. ``agent.render`` turns
them into a terminal view, ``to_dict()`` into JSON lines for scripts.

    for event in agent.stream("task"):
        match event:
            case ReasoningDelta(text=t): ...
            case AnswerDelta(text=t): ...
            case ToolCallStarted(recipient=r, arguments=a): ...
            case ToolCallFinished(call=c): ...      # c.output, c.is_error, c.duration
            case StepDone(step=n, usage=u): ...
            case RunDone(result=r): ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from gptoss_agent.agent.messages import Message
from gptoss_agent.tools.text import clean_json

__all__ = [
    "AgentEvent",
    "AnswerDelta",
    "CommentaryDelta",
    "ContextCompacted",
    "ParseProblem",
    "ReasoningDelta",
    "RunDone",
    "RunResult",
    "StepDone",
    "StopReason",
    "ToolCallFinished",
    "ToolCallRecord",
    "ToolCallStarted",
    "Usage",
]


class StopReason(StrEnum):
    """Why a run ended."""

    ANSWER = "answer"
    """The model wrote a ``final`` message (ended with ``<|return|>``)."""
    MAX_STEPS = "max_steps"
    """``max_steps`` generations ran without a final answer."""
    MAX_TOKENS = "max_tokens"
    """The run generated ``max_tokens`` tokens in total without a final answer."""
    TIMEOUT = "timeout"
    """The run's wall-clock limit passed."""
    CONTEXT = "context"
    """The model's context window is full."""
    INTERRUPTED = "interrupted"
    """``Agent.interrupt()`` (the CLI's first Ctrl-C) stopped the run; the transcript records where."""
    TOOL_CALL = "tool_call"
    """The model called a tool its caller runs (an ``external`` tool, e.g. a client's function
    behind the OpenAI-compatible server): the call is the last message; append the tool's
    message and ``resume()``."""


@dataclass
class Usage:
    """Token counts, summed over the generations of a run (or of one step)."""

    prompt_tokens: int = 0
    """Prompt tokens of every generation (each step's whole prompt)."""
    reused_tokens: int = 0
    """Prompt tokens the engine served from its KV cache instead of recomputing."""
    prefilled_tokens: int = 0
    """Prompt tokens the engine actually ran through the model."""
    generated_tokens: int = 0
    """Tokens the model produced."""

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.reused_tokens += other.reused_tokens
        self.prefilled_tokens += other.prefilled_tokens
        self.generated_tokens += other.generated_tokens

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ToolCallRecord:
    """One tool call and its result."""

    step: int
    recipient: str
    """As the model wrote it (``browser.search``, ``functions.get_weather``, ``python``)."""
    arguments: str
    """The message body: JSON arguments, or code for ``python``."""
    channel: str | None
    output: str = ""
    """What went back to the model."""
    author: str = ""
    """The tool message's author (the canonical tool name, or the recipient when unknown)."""
    is_error: bool = False
    duration: float = 0.0
    """Seconds the tool took."""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    """What ``Agent.run`` returns."""

    answer: str
    """The final answer's text ("" when the run stopped first)."""
    stop_reason: StopReason
    messages: list[Message]
    """The whole conversation of the session after this run (system and developer first)."""
    new_messages: list[Message]
    """The messages this run added (user, assistant, tool)."""
    tool_calls: list[ToolCallRecord]
    usage: Usage
    steps: int
    """Generations in this run."""
    elapsed: float
    """Wall-clock seconds of the run."""

    @property
    def ok(self) -> bool:
        """True when the run ended with a final answer."""
        return self.stop_reason is StopReason.ANSWER

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (messages in openai-harmony's message JSON; text made valid Unicode)."""
        return clean_json(
            {
                "answer": self.answer,
                "stop_reason": self.stop_reason.value,
                "steps": self.steps,
                "elapsed": round(self.elapsed, 4),
                "usage": self.usage.to_dict(),
                "tool_calls": [c.to_dict() for c in self.tool_calls],
                "messages": [m.to_dict() for m in self.new_messages],
            }
        )


_USAGE_SCHEMA = {
    "type": "object",
    "properties": {
        k: {"type": "integer", "minimum": 0}
        for k in ("prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens")
    },
    "required": ["prompt_tokens", "reused_tokens", "prefilled_tokens", "generated_tokens"],
}

RESULT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "gptoss-agent --json result (RunResult.to_dict())",
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "stop_reason": {"enum": [r.value for r in StopReason]},
        "steps": {"type": "integer", "minimum": 0},
        "elapsed": {"type": "number", "minimum": 0},
        "usage": _USAGE_SCHEMA,
        "tool_calls": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "step": {"type": "integer"},
                    "recipient": {"type": "string"},
                    "arguments": {"type": "string"},
                    "channel": {"type": ["string", "null"]},
                    "output": {"type": "string"},
                    "author": {"type": "string"},
                    "is_error": {"type": "boolean"},
                    "duration": {"type": "number"},
                    "metadata": {"type": "object"},
                },
                "required": ["step", "recipient", "arguments", "output", "is_error", "duration"],
            },
        },
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "role": {"enum": ["user", "assistant", "system", "developer", "tool"]},
                    "name": {"type": ["string", "null"]},
                    "content": {"type": "array"},
                    "channel": {"type": "string"},
                    "recipient": {"type": "string"},
                    "content_type": {"type": "string"},
                },
                "required": ["role", "content"],
            },
        },
    },
    "required": ["answer", "stop_reason", "steps", "elapsed", "usage", "tool_calls", "messages"],
    "additionalProperties": False,
}
"""The JSON Schema of ``RunResult.to_dict()`` (what ``gptoss-agent --json`` prints)."""


@dataclass(frozen=True)
class ReasoningDelta:
    """New text on the ``analysis`` channel (the chain of thought; not for end users)."""

    text: str
    step: int


@dataclass(frozen=True)
class CommentaryDelta:
    """New text of a ``commentary`` message to the user (a preamble announcing tool calls)."""

    text: str
    step: int


@dataclass(frozen=True)
class AnswerDelta:
    """New text of the ``final`` answer."""

    text: str
    step: int


@dataclass(frozen=True)
class ToolCallStarted:
    """The model called a tool; the call runs now."""

    step: int
    recipient: str
    arguments: str
    channel: str | None


@dataclass(frozen=True)
class ToolCallFinished:
    """A tool call returned (or failed: ``call.is_error``)."""

    call: ToolCallRecord


@dataclass(frozen=True)
class ParseProblem:
    """The model's output broke harmony's rules; ``detail`` is what went back to the model
    (empty when the parser recovered the intended message and nothing was fed back)."""

    step: int
    kind: str
    detail: str
    fed_back: bool


@dataclass(frozen=True)
class StepDone:
    """One generation (and the tool call it ended with, if any) is complete."""

    step: int
    usage: Usage
    ended_with: str
    """``call``, ``answer``, ``error`` (malformed output fed back), or a stop reason."""
    seconds: float
    generation_seconds: float
    tool_seconds: float


@dataclass(frozen=True)
class ContextCompacted:
    """The prompt would not have fit the context, so the conversation was compacted (see
    ``agent.compaction``) before step ``step``: ``detail`` says what was left out."""

    step: int
    tokens_before: int
    tokens_after: int
    budget: int
    """The tokens the prompt had to fit in (the context less the room kept for the reply)."""
    dropped_messages: int
    elided_tool_results: int
    detail: str


@dataclass(frozen=True)
class RunDone:
    """The run is over; the last event of every stream."""

    result: RunResult


AgentEvent: TypeAlias = (
    ReasoningDelta
    | CommentaryDelta
    | AnswerDelta
    | ToolCallStarted
    | ToolCallFinished
    | ParseProblem
    | StepDone
    | ContextCompacted
    | RunDone
)

_EVENT_NAMES: dict[type, str] = {
    ReasoningDelta: "reasoning_delta",
    CommentaryDelta: "commentary_delta",
    AnswerDelta: "answer_delta",
    ToolCallStarted: "tool_call_started",
    ToolCallFinished: "tool_call_finished",
    ParseProblem: "parse_problem",
    StepDone: "step_done",
    ContextCompacted: "context_compacted",
    RunDone: "run_done",
}


def event_to_dict(event: AgentEvent) -> dict[str, Any]:
    """``{"type": "answer_delta", ...fields}``: one JSON line of ``gptoss-agent --jsonl``
    (every string valid Unicode, so the line always encodes as UTF-8)."""
    kind = _EVENT_NAMES[type(event)]
    if isinstance(event, RunDone):
        return {"type": kind, "result": event.result.to_dict()}
    if isinstance(event, ToolCallFinished):
        return clean_json({"type": kind, **event.call.to_dict()})
    return clean_json({"type": kind, **asdict(event)})


__all__ += ["RESULT_JSON_SCHEMA", "event_to_dict"]
