"""The agent loop: render, generate, parse while streaming, dispatch tool calls, repeat.

    agent = Agent(engine, tools=[Browser(), Python(), get_weather], reasoning_effort="high")
    result = agent.run("task")                  # RunResult
    for event in agent.stream("next task"): ... # same session: the conversation continues

One step renders the conversation (``<|start|>assistant`` appended), lets the engine generate
until ``<|call|>`` or ``<|return|>``, and feeds every token to harmony's ``StreamParser``, turning
its events into ``AgentEvent``s as they come. A message to a recipient goes to the ``Toolbox``
(routing by a mapping of names), whose answer is appended as a tool message on the caller's
channel. A ``final`` message ending with ``<|return|>`` ends the run.

Who is at fault decides what happens:

- the model's mistakes go back to the model and the run goes on: an unknown tool, bad arguments,
  a tool that raised or timed out come back as the tool's message (the ``Toolbox`` writes it);
  output that breaks harmony so that nothing could be acted on comes back as a ``system``
  message naming the parser's error and the expected form (``<|start|>system<|message|>Your last
  output ...<|end|>``). Errors the parser recovered from are reported as ``ParseProblem`` events
  only.
- limits end the run with a reason: ``max_steps`` generations, ``max_tokens`` generated in the
  run or ``max_generation_tokens`` in one generation (default ``GENERATION_TOKENS``, by effort: a
  model that never closes its message still ends), ``timeout`` seconds of wall clock (bounding every wait of the run: see
  "Run control" below).
- bugs and runtime failures (an engine that raises, a sandbox that cannot start) propagate.

The KV cache: each step's prompt extends the previous one (the generated tokens, the tool
message, the next header), so an engine with prefix reuse prefills only what is new. Harmony's
rule of dropping the reasoning (``analysis``) of turns that ended with a final answer is applied
only when a new user turn starts, as the format guide prescribes; within a tool-calling chain the
reasoning stays. Dropping changes the prompt from the first dropped message on, so the first step
of each new turn prefills from there; ``keep_reasoning=True`` keeps all reasoning (more context,
full reuse).

Run control (``agent.control``): the loop is one generator that yields events and asks its
driver for the model's tokens and the tools' results. ``arun`` / ``astream`` drive it on the
caller's event loop (async tools run there, in the caller's context; sync tools and the engine in
worker threads), ``run`` / ``stream`` on a private one. The run's ``timeout`` bounds every wait:
the engine gets the time left (a ``Deadline``), every tool call the smaller of its own timeout and
the time left, and the run ends within about a second of it with ``stop_reason=timeout``.
``interrupt()`` ends it with ``interrupted``; cancelling ``arun`` or leaving ``astream`` early
stops it too. A cut is recorded in the conversation (the transcript): a tool call in flight gets a
tool message saying it was stopped, a generation in flight a system message saying where the turn
was cut off.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptoss_agent.agent.compaction import CompactionPolicy, Compactor, describe, reserve_tokens
from gptoss_agent.agent.constraints import ToolChoice
from gptoss_agent.agent.control import (
    END_GENERATION,
    NEXT_TOKEN,
    Dispatch,
    Generate,
    Lazy,
    Stopped,
    SyncRunner,
    drive,
    drive_batches,
    stop_engine,
)
from gptoss_agent.agent.events import (
    AgentEvent,
    AnswerDelta,
    CommentaryDelta,
    ContextCompacted,
    ParseProblem,
    ReasoningDelta,
    RunDone,
    RunResult,
    StepDone,
    StopReason,
    ToolCallFinished,
    ToolCallRecord,
    ToolCallStarted,
    Usage,
)
from gptoss_agent.agent.harmony import (
    AnswerDone,
    ContentDelta,
    MessageDone,
    ParseError,
    StreamParser,
    ToolCall,
    normalize_recipient,
    render_conversation_for_completion,
    stop_tokens_for_assistant_actions,
)
from gptoss_agent.agent.messages import (
    DEFAULT_MODEL_IDENTITY,
    Author,
    DeveloperContent,
    Message,
    ReasoningEffort,
    ResponseFormat,
    Role,
    SystemContent,
    TextContent,
    ToolDescription,
    ToolNamespaceConfig,
)
from gptoss_agent.agent.transcript import Transcript, load_transcript
from gptoss_agent.model.engine import Engine, Sampling
from gptoss_agent.tools.base import NamespaceSpec, Tool, ToolOutput
from gptoss_agent.tools.toolbox import Toolbox

__all__ = ["Agent", "drop_finished_reasoning"]

_REASONING_LINE = re.compile(r"^[ \t]*Reasoning:[ \t]*(low|medium|high)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_HARMONY_HINT = (
    "Write each message as <|start|>assistant<|channel|>analysis<|message|>...<|end|>; call a tool "
    "with <|start|>assistant to=TOOL<|channel|>commentary<|message|>ARGUMENTS<|call|>; give the "
    "answer as <|start|>assistant<|channel|>final<|message|>ANSWER<|return|>."
)


def _split_reasoning(text: str) -> tuple[str, ReasoningEffort | None]:
    """Take a ``Reasoning: high`` line out of a caller's system or developer text."""
    matches = list(_REASONING_LINE.finditer(text))
    if not matches:
        return text, None
    effort = ReasoningEffort.parse(matches[-1].group(1))
    rest = _REASONING_LINE.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", rest).strip(), effort


def _namespace_config(spec: NamespaceSpec) -> ToolNamespaceConfig:
    return ToolNamespaceConfig(
        name=spec.name,
        description=spec.description,
        tools=[ToolDescription(f.name, f.description, f.parameters) for f in spec.functions],
    )


def drop_finished_reasoning(messages: Sequence[Message]) -> list[Message]:
    """The messages without the ``analysis`` of turns that ended with a final answer.

    Harmony's format guide: once the assistant answered on the ``final`` channel, its earlier
    chain of thought is left out of later prompts. Analysis after the last final message (the
    current tool-calling chain) stays.
    """
    last_final = max(
        (i for i, m in enumerate(messages) if m.author.role is Role.ASSISTANT and m.channel == "final"),
        default=-1,
    )
    return [
        m
        for i, m in enumerate(messages)
        if not (i < last_final and m.author.role is Role.ASSISTANT and m.channel == "analysis")
    ]


GENERATION_TOKENS = {ReasoningEffort.LOW: 4096, ReasoningEffort.MEDIUM: 8192, ReasoningEffort.HIGH: 16384}
"""Default most tokens of one generation, by reasoning effort (``max_generation_tokens="auto"``)."""


@dataclass
class _Step:
    """What one generation produced."""

    capped: bool = False
    """The generation reached ``max_generation_tokens`` without closing a message."""
    call: ToolCall | None = None
    answer: Message | None = None
    errors: list[ParseError] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    timed_out: bool = False
    stopped: StopReason | None = None
    """The run's deadline or an interrupt cut this generation off (see ``agent.control``)."""
    last_final: Message | None = None
    foreign_role: Role | None = None
    context_full: bool = False
    generation_seconds: float = 0.0


class Agent:
    """A gpt-oss agent session: a conversation, an engine and the tools the model may call.

    Args:
        engine: Anything with ``Engine.generate`` (``LocalEngine``, ``RemoteEngine``, a scripted one).
        tools: ``Tool`` objects (``Browser()``, ``Python()``, ``@tool`` functions) or a ``Toolbox``.
        reasoning_effort: ``"low"``, ``"medium"`` or ``"high"``: rendered as ``Reasoning: ...`` in
            the system message. A ``Reasoning:`` line in ``system`` or ``instructions`` wins.
        instructions: The developer message's instructions.
        system: The caller's own system text (replaces the model identity line) or a whole
            ``SystemContent`` (used as given, tools added).
        response_formats: Harmony ``# Response Formats`` for the developer message.
        max_steps: Generations per run before it stops with ``max_steps``.
        max_tokens: Tokens the model may generate per run (None: no limit).
        max_generation_tokens: Tokens one generation may take before the run stops with
            ``max_tokens``; ``"auto"``: ``GENERATION_TOKENS`` for the reasoning effort (4096 /
            8192 / 16384); None: only the context bounds it.
        timeout: Wall-clock seconds per run (None: no limit).
        sampling: Temperature, top-p and seed of the engine's sampler.
        tool_timeout: Default seconds one tool call may take (the toolbox's ``timeout``).
        transcript: A path or ``Transcript``: every message is appended to it as it happens.
        keep_reasoning: Keep the analysis of finished turns in later prompts.
        context_budget: The most tokens a prompt plus its reply may take (default: the engine's
            ``context_length``, when it has one; the smaller of the two when both are known).
        compaction: What to do when the next prompt would not leave room for the reply within
            the context: a policy ``policy(messages, budget, measure) -> messages`` (see
            ``agent.compaction``; default ``Compactor()``), or None to stop with ``context``.
        date: The ``Current date`` line (default: today, UTC).
        constrain: Constrain the engine's decoding to harmony with the declared tools (calls that
            always parse and fit their schemas); None: on where the engine supports it
            (``LocalEngine``). See ``agent.constraints``.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool's name; a forcing choice binds
            the first generation of each run.
        reasoning_budget: At most this many tokens of reasoning per generation (constrained engines).
        enc: The tokenizer (default: ``load_tokenizer()``).
    """

    def __init__(
        self,
        engine: Engine,
        tools: Iterable[Tool | Callable[..., Any]] | Toolbox = (),
        *,
        reasoning_effort: str | ReasoningEffort = "medium",
        instructions: str | None = None,
        system: str | SystemContent | None = None,
        response_formats: Sequence[ResponseFormat] = (),
        max_steps: int = 20,
        max_tokens: int | None = None,
        max_generation_tokens: int | str | None = "auto",
        timeout: float | None = None,
        sampling: Sampling | None = None,
        tool_timeout: float | None = 120.0,
        transcript: str | os.PathLike[str] | Transcript | None = None,
        keep_reasoning: bool = False,
        context_budget: int | None = None,
        compaction: CompactionPolicy | None = Compactor(),  # noqa: B008 -- a stateless default
        constrain: bool | None = None,
        tool_choice: str = "auto",
        reasoning_budget: int | None = None,
        date: str | None = None,
        enc: Any = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if context_budget is not None and context_budget < 16:
            raise ValueError("context_budget must be at least 16 tokens")
        self.context_budget = context_budget
        self.compaction = compaction
        self.engine = engine
        self.toolbox = tools if isinstance(tools, Toolbox) else Toolbox(tools, timeout=tool_timeout)
        self.reasoning_effort = ReasoningEffort.parse(reasoning_effort)
        self.instructions = instructions
        self.system = system
        self.response_formats = list(response_formats)
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        if max_generation_tokens == "auto":
            max_generation_tokens = GENERATION_TOKENS[self.reasoning_effort]
        cap = max_generation_tokens
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ValueError(f"max_generation_tokens must be a positive int, 'auto' or None, got {cap!r}")
        self.max_generation_tokens: int | None = cap
        self.timeout = timeout
        self.sampling = sampling or Sampling()
        self.keep_reasoning = keep_reasoning
        self.date = date
        if enc is None:
            from gptoss_agent.model.tokenizer import load_tokenizer

            enc = load_tokenizer()
        self.enc = enc
        self.transcript = (
            transcript if isinstance(transcript, Transcript) or transcript is None else Transcript(transcript)
        )
        self.messages: list[Message] = []
        """The conversation as the model sees it (system and developer messages first)."""
        self._lock = threading.Lock()
        self._stops = stop_tokens_for_assistant_actions()
        supported = bool(getattr(engine, "supports_constraints", False))
        if constrain and not supported:
            raise ValueError(f"{type(engine).__name__} cannot constrain decoding (constrain=True needs LocalEngine)")
        self.constraints = ToolChoice(tool_choice, reasoning_budget, supported if constrain is None else constrain)
        self.answer_schema: dict[str, Any] | None = None
        """JSON Schema the final answer must fit (``Workflow`` sets it for a step with a schema)."""
        self._control: Any = None  # the run in progress (agent.control.RunControl)
        self._engine_thread: Any = None  # the latest generation's thread (it may outlive a cut run)

    # -- building the conversation -------------------------------------------------------

    @classmethod
    def from_transcript(
        cls, path: str | os.PathLike[str], engine: Engine, tools: Iterable[Any] | Toolbox = (), **options: Any
    ) -> Agent:
        """An agent that continues the session in the transcript at ``path`` (appending to it).

        The system and developer messages come from the transcript; pass the same ``tools`` the
        session had. ``agent.resume()`` finishes a turn cut short by a crash; ``run(task)`` starts
        the next one.
        """
        messages = load_transcript(path)
        agent = cls(engine, tools, transcript=path, **options)
        last_user = max((i for i, m in enumerate(messages) if m.author.role is Role.USER), default=0)
        head = messages[:last_user] if agent.keep_reasoning else drop_finished_reasoning(messages[:last_user])
        agent.messages = head + messages[last_user:]
        return agent

    def _system_message(self) -> Message:
        if isinstance(self.system, SystemContent):
            content = self.system
        else:
            identity = DEFAULT_MODEL_IDENTITY
            effort = self.reasoning_effort
            if self.system is not None:
                identity, found = _split_reasoning(self.system)
                effort = found or effort
            if self.instructions is not None:
                effort = _split_reasoning(self.instructions)[1] or effort
            content = SystemContent(model_identity=identity or None, reasoning_effort=effort)
        if content.conversation_start_date is None:
            content.conversation_start_date = self.date or dt.datetime.now(dt.UTC).date().isoformat()
        for spec in self.toolbox.builtin_namespaces:
            content.with_tools(_namespace_config(spec))
        return Message.from_role_and_content(Role.SYSTEM, content)

    def _developer_message(self) -> Message | None:
        instructions = None
        if self.instructions is not None:
            instructions = _split_reasoning(self.instructions)[0] or None
        dev = DeveloperContent(instructions=instructions)
        for spec in self.toolbox.developer_namespaces:
            dev.with_tools(_namespace_config(spec))
        for fmt in self.response_formats:
            dev.with_response_format(fmt)
        if dev.instructions is None and not dev.tools and not dev.response_formats:
            return None
        return Message.from_role_and_content(Role.DEVELOPER, dev)

    def _begin(self) -> None:
        if self.messages:
            return
        self._append(self._system_message())
        developer = self._developer_message()
        if developer is not None:
            self._append(developer)

    def _append(self, message: Message) -> None:
        self.messages.append(message)
        if self.transcript is not None:
            self.transcript.append(message)

    # -- running -------------------------------------------------------------------------

    def run(self, task: str | None = None) -> RunResult:
        """Run one user turn to its end and return the result (see ``stream``)."""
        result = None
        for event in self.stream(task):
            if isinstance(event, RunDone):
                result = event.result
        assert result is not None
        return result

    def resume(self) -> RunResult:
        """Finish the turn in progress (after ``from_transcript``): ``run(None)``."""
        return self.run(None)

    def load(self, history: Sequence[Message]) -> None:
        """Continue the conversation ``history`` (user, assistant and tool messages; a leading
        system or developer message is replaced by this agent's own). Reasoning of finished turns
        is left out unless ``keep_reasoning``. ``resume()`` then answers its last user message or
        goes on after its last tool message."""
        rest = [m for m in history if m.author.role not in (Role.SYSTEM, Role.DEVELOPER)]
        self.messages = []
        self._begin()
        self.messages += rest if self.keep_reasoning else drop_finished_reasoning(rest)

    def stream(self, task: str | None = None) -> Generator[AgentEvent, None, None]:
        """Run one user turn, yielding events as they happen; the last is ``RunDone``.

        ``task`` None continues the turn in progress (a resumed transcript): a pending tool call
        is run first; a turn that already has its final answer ends at once. The same loop as
        ``astream``, on a private event loop; leaving the ``for`` early stops the run (the
        transcript records where it was cut).
        """
        runner = SyncRunner()
        batches = drive_batches(self, task)  # one turn of the private loop per batch of events

        async def step() -> list[AgentEvent]:
            return await anext(batches)

        try:
            while True:
                try:
                    batch = runner.run(step())
                except StopAsyncIteration:
                    return
                yield from batch
        finally:
            try:
                runner.run(batches.aclose())
            finally:
                runner.close()

    async def arun(self, task: str | None = None) -> RunResult:
        """``run`` for async callers (see ``astream``); cancelling it stops the run at once."""
        result = None
        events = self.astream(task)
        try:
            async for event in events:
                if isinstance(event, RunDone):
                    result = event.result
        finally:
            await events.aclose()
        assert result is not None
        return result

    def astream(self, task: str | None = None) -> AsyncGenerator[AgentEvent, None]:
        """``stream`` for async callers, on the caller's event loop (see ``agent.control``).

        Async tools run on this loop in the caller's context (``contextvars`` copied when the call
        starts); sync tools and the engine run in worker threads, never blocking the loop.
        Cancelling the task, or leaving the ``async for`` early, stops the generation and the tool
        in flight within about a second, records the cut in the transcript and frees the agent.
        """
        return drive(self, task)

    def interrupt(self) -> None:
        """Stop the run in progress with ``stop_reason=interrupted`` (from any thread, or a signal
        handler: the CLI's first Ctrl-C). The generation and the tool in flight are stopped (a
        sync tool is abandoned) and the cut is recorded; the session can run again afterwards."""
        control = self._control
        if control is not None:
            control.interrupt()

    # -- the loop ------------------------------------------------------------------------

    def _run(self, task: str | None) -> Generator[Any, Any, None]:
        """The loop: events for the caller, and effects for the driver (``agent.control``)."""
        started = time.monotonic()
        deadline = started + self.timeout if self.timeout is not None else None
        self._begin()
        usage = Usage()
        calls: list[ToolCallRecord] = []
        if task is not None:
            if not self.keep_reasoning:
                self.messages = drop_finished_reasoning(self.messages)
            first_new = len(self.messages)
            self._append(Message.from_role_and_content(Role.USER, task))
        else:
            first_new = self._turn_start()
            last = self.messages[-1]
            if last.author.role is Role.ASSISTANT and last.channel == "final":
                yield self._done(last.text, StopReason.ANSWER, first_new, calls, usage, 0, started)
                return
            if last.author.role is Role.ASSISTANT and last.recipient is not None:
                recipient = normalize_recipient(last.recipient)
                # cut off by a crash or a stop: it may have run already (at least once)
                stopped = yield from self._call_tool(0, recipient, last, calls, rerun=True)
                if stopped is not None:
                    yield self._done("", stopped, first_new, calls, usage, 0, started)
                    return
        step = 0
        reason = StopReason.MAX_STEPS
        answer = ""
        while step < self.max_steps:
            if deadline is not None and time.monotonic() >= deadline:
                reason = StopReason.TIMEOUT
                break
            if self.max_tokens is not None and usage.generated_tokens >= self.max_tokens:
                reason = StopReason.MAX_TOKENS
                break
            step += 1
            step_started = time.perf_counter()
            outcome = _Step()
            yield from self._generate(step, outcome, usage, deadline)
            usage.add(outcome.usage)
            if outcome.call is None and outcome.answer is None and outcome.last_final is not None:
                outcome.answer = outcome.last_final  # a final message ended with <|end|>: still the answer
            tool_seconds = 0.0
            ended: str
            if outcome.call is not None and self.toolbox.is_external(outcome.call.recipient):
                reason = ended = StopReason.TOOL_CALL  # its caller runs it, then resumes
            elif outcome.call is not None:
                t0 = time.perf_counter()
                refused = self.constraints.refusal(self.toolbox, step == 1, outcome.call.recipient)
                stopped = yield from self._call_tool(
                    step, outcome.call.recipient, outcome.call.message, calls, refused=refused
                )
                tool_seconds = time.perf_counter() - t0
                ended = "call"
                if stopped is not None:
                    reason = ended = stopped
            elif outcome.answer is not None and (refused := self.constraints.refusal(self.toolbox, step == 1, None)):
                self._append(Message.from_role_and_content(Role.SYSTEM, refused))  # unconstrained engines
                ended = "refused"
            elif outcome.answer is not None:
                answer, reason, ended = outcome.answer.text, StopReason.ANSWER, "answer"
            elif outcome.context_full:
                reason = ended = StopReason.CONTEXT
            elif outcome.stopped is not None:
                reason = ended = outcome.stopped
            elif outcome.timed_out:
                reason = ended = StopReason.TIMEOUT
            elif outcome.capped or (
                self.max_tokens is not None and usage.generated_tokens >= self.max_tokens
            ):
                reason = ended = StopReason.MAX_TOKENS  # this generation's cap, or the run's budget
            else:
                yield from self._feed_back(step, outcome)
                ended = "error"
            yield StepDone(
                step=step,
                usage=outcome.usage,
                ended_with=str(ended),
                seconds=time.perf_counter() - step_started,
                generation_seconds=outcome.generation_seconds,
                tool_seconds=tool_seconds,
            )
            if ended in (
                "answer",
                StopReason.TIMEOUT,
                StopReason.MAX_TOKENS,
                StopReason.CONTEXT,
                StopReason.INTERRUPTED,
                StopReason.TOOL_CALL,
            ):
                break
        yield self._done(answer, reason, first_new, calls, usage, step, started)

    def _turn_start(self) -> int:
        """Index of the last user message (the turn a resumed run continues)."""
        users = [i for i, m in enumerate(self.messages) if m.author.role is Role.USER]
        if not users:
            raise ValueError("nothing to resume: the conversation has no user message")
        return users[-1]

    def _done(
        self,
        answer: str,
        reason: StopReason,
        first_new: int,
        calls: list[ToolCallRecord],
        usage: Usage,
        steps: int,
        started: float,
    ) -> RunDone:
        return RunDone(
            RunResult(
                answer=answer,
                stop_reason=reason,
                messages=list(self.messages),
                new_messages=self.messages[first_new:],
                tool_calls=calls,
                usage=usage,
                steps=steps,
                elapsed=time.monotonic() - started,
            )
        )

    def _generate(self, step: int, out: _Step, usage: Usage, deadline: float | None) -> Generator[Any, Any, None]:
        """One generation: stream tokens through the parser, append the assistant's messages."""
        limit = self._context_limit()
        prompt = yield from self._fit_context(step, limit)
        budget = None if self.max_tokens is None else self.max_tokens - usage.generated_tokens
        cap = self.max_generation_tokens
        if cap is not None and (budget is None or cap < budget):
            budget = cap
        else:
            cap = None  # the run's budget is the tighter bound
        room = None if limit is None else limit - len(prompt)
        if room is not None and room <= 0:
            out.context_full = True
            return
        if room is not None and (budget is None or room < budget):
            budget = room
        else:
            room = None  # the run's token budget, not the context, bounds this generation
        parser = StreamParser(self.enc, Role.ASSISTANT, record_tokens=True)
        generated = 0
        try:
            first = step == 1  # the grammar is compiled in the engine's thread (seconds, the first time)
            grammar = Lazy(lambda: self.constraints.grammar(self.enc, self.toolbox, first, self.answer_schema))
            yield Generate(prompt, budget, grammar)  # the driver runs the engine in a worker thread
            while True:
                t0 = time.perf_counter()
                token = yield NEXT_TOKEN
                out.generation_seconds += time.perf_counter() - t0
                if token is None:
                    break
                generated += 1
                for event in parser.process(token):
                    yield from self._on_parse_event(step, event, out)
                if out.foreign_role is not None:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    out.timed_out = True
                    break
        except Stopped as stop:  # the deadline or an interrupt: record where the turn was cut
            out.stopped = stop.reason
            self._append(stop.note())
        stats = yield END_GENERATION  # the engine's numbers for this call (from its thread)
        if out.stopped is None and out.call is None and out.answer is None and out.foreign_role is None:
            if room is not None and generated >= room and not out.timed_out:
                out.context_full = True  # cut off by the context's end: not the model's mistake
            elif cap is not None and generated >= cap and not out.timed_out:
                out.capped = True
            for event in parser.process_eos():
                yield from self._on_parse_event(step, event, out)
        out.usage = Usage(
            prompt_tokens=getattr(stats, "prompt_tokens", len(prompt)),
            reused_tokens=getattr(stats, "reused_tokens", 0),
            prefilled_tokens=getattr(stats, "prefilled_tokens", len(prompt)),
            generated_tokens=max(getattr(stats, "generated_tokens", 0), generated),
        )

    def _context_limit(self) -> int | None:
        """Tokens a prompt plus its reply may take: the engine's context or ``context_budget``."""
        context = getattr(self.engine, "context_length", None)
        limits = [n for n in (context, self.context_budget) if isinstance(n, int) and n > 0]
        return min(limits) if limits else None

    def _measure(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` (rendered for the next assistant message)."""
        return len(
            render_conversation_for_completion(messages, Role.ASSISTANT, self.enc, auto_drop_analysis=False)
        )

    def _fit_context(self, step: int, limit: int | None) -> Generator[AgentEvent, None, list[int]]:
        """The prompt of the next step, the conversation compacted first when it would not leave
        ``reserve_tokens(limit)`` for the reply (a ``ContextCompacted`` event says what went)."""
        prompt = render_conversation_for_completion(
            self.messages, Role.ASSISTANT, self.enc, auto_drop_analysis=False
        )
        if limit is None or self.compaction is None:
            return prompt
        budget = limit - reserve_tokens(limit)
        if len(prompt) <= budget:
            return prompt
        before = self.messages
        after = list(self.compaction(list(before), budget, self._measure))
        compacted = render_conversation_for_completion(
            after, Role.ASSISTANT, self.enc, auto_drop_analysis=False
        )
        if len(compacted) >= len(prompt) or len(compacted) >= limit:
            return prompt  # nothing gained: the caller stops with "context" if it does not fit
        dropped, elided, detail = describe(before, after)
        self.messages = after
        yield ContextCompacted(
            step=step,
            tokens_before=len(prompt),
            tokens_after=len(compacted),
            budget=budget,
            dropped_messages=dropped,
            elided_tool_results=elided,
            detail=f"{detail}: {len(prompt)} -> {len(compacted)} prompt tokens (budget {budget})",
        )
        return compacted

    def _on_parse_event(self, step: int, event: Any, out: _Step) -> Iterator[AgentEvent]:
        if isinstance(event, ContentDelta):
            if event.recipient is None:
                kind = _DELTAS.get(event.channel or "")
                if kind is not None:
                    yield kind(event.text, step)
        elif isinstance(event, MessageDone):
            message = event.message
            if message.author.role is not Role.ASSISTANT:
                out.foreign_role = message.author.role  # the model wrote someone else's turn
                return
            self._append(message)
            if message.channel == "final" and event.end in ("end", "return"):
                out.last_final = message
        elif isinstance(event, ToolCall):
            out.call = event
        elif isinstance(event, AnswerDone):
            out.answer = event.message
        elif isinstance(event, ParseError):
            out.errors.append(event)
            if event.recoverable:
                yield ParseProblem(step=step, kind=event.kind.value, detail=event.detail, fed_back=False)

    def _feed_back(self, step: int, out: _Step) -> Iterator[AgentEvent]:
        """The step produced nothing to act on: tell the model why, as a system message."""
        problems = [e for e in out.errors if not e.recoverable] or out.errors
        if out.foreign_role is not None:
            detail = f"you wrote a message as {out.foreign_role.value}; only write assistant messages."
            kind = "foreign_role"
        elif problems:
            detail = "; ".join(f"{e.kind.value}: {e.detail}" for e in problems)
            kind = problems[0].kind.value
        else:
            detail = "it ended without a tool call (<|call|>) or a final answer (<|return|>)."
            kind = "no_action"
        text = f"Your last output was not valid harmony and was not acted on: {detail} {_HARMONY_HINT}"
        self._append(Message.from_role_and_content(Role.SYSTEM, text))
        yield ParseProblem(step=step, kind=kind, detail=text, fed_back=True)

    def _call_tool(
        self,
        step: int,
        recipient: str,
        message: Message,
        calls: list[ToolCallRecord],
        rerun: bool = False,
        refused: str | None = None,
    ) -> Generator[Any, Any, StopReason | None]:
        """Run one call (the driver awaits it, within the run's time left); the tool message goes
        in the conversation. Returns the stop reason when the run's deadline or an interrupt cut
        the call off (its tool message then says so). A ``refused`` call (the tool choice forbids
        it) does not run: the model reads why."""
        body = message.text
        stopped = None
        try:
            yield ToolCallStarted(step=step, recipient=recipient, arguments=body, channel=message.channel)
            if refused is not None:
                output = ToolOutput(author=recipient, content=refused, is_error=True)
            else:
                output = yield Dispatch(recipient, body)
        except Stopped as stop:
            output, stopped = stop.tool_output(recipient), stop.reason
        if rerun:
            output.metadata["rerun"] = True  # the transcript ended with this call: it may have run before
        reply = Message(
            author=Author(Role.TOOL, output.author),
            content=[TextContent(output.content)],
            channel=message.channel,
            recipient="assistant",
        )
        self._append(reply)
        record = ToolCallRecord(
            step=step,
            recipient=recipient,
            arguments=body,
            channel=message.channel,
            output=output.content,
            author=output.author,
            is_error=output.is_error,
            duration=output.duration,
            metadata=dict(output.metadata),
        )
        calls.append(record)
        yield ToolCallFinished(record)
        return stopped

    # -- the session ----------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new conversation: the tools' session state goes too (the browser's pages, the
        python session's variables; ``Toolbox.reset``); the transcript keeps its lines."""
        self.messages = []
        self.toolbox.reset()

    def close(self) -> None:
        """Close the tools (sandbox sessions, HTTP clients) and the transcript; a generation
        still running after a stopped run is ended at its next step and waited for."""
        stop_engine(self)
        self.toolbox.close()
        if self.transcript is not None:
            self.transcript.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Agent({type(self.engine).__name__}, tools={self.toolbox.names}, messages={len(self.messages)})"
        )


_DELTAS: dict[str, Callable[[str, int], AgentEvent]] = {
    "analysis": ReasoningDelta,
    "commentary": CommentaryDelta,
    "final": AnswerDelta,
}
