"""The terminal view of a run, with rich: the only place that knows about colours.

``Renderer(console)`` takes the loop's events one by one (``renderer(event)``): reasoning streams
dimmed (or not at all with ``show_reasoning=False``), a preamble to the user in plain text, each
tool call with its result in a compact panel, the final answer as Markdown with citations turned
into links, and a footer with steps, tokens and time. Tests render into
``Console(file=StringIO(), width=80)`` and compare the text with golden files.

Everything shown comes from outside (the model, pages, sandbox output) and goes through
``for_terminal`` first: control characters and escape sequences appear as visible escapes
(``\x1b[2J``) instead of acting on the terminal; the view's own colours and panels are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

from gptoss_agent.agent.events import (
    AgentEvent,
    AnswerDelta,
    CommentaryDelta,
    ParseProblem,
    ReasoningDelta,
    RunDone,
    RunResult,
    StopReason,
    ToolCallFinished,
)
from gptoss_agent.tools.text import for_terminal
from rich.console import Console, Group
from rich.markdown import Markdown
from rich.panel import Panel
from rich.rule import Rule
from rich.status import Status
from rich.text import Text

__all__ = ["Renderer", "footer"]


def _clip(text: str, lines: int, width: int = 400) -> str:
    """The first ``lines`` lines of ``text`` (each at most ``width`` characters), with a count of the rest."""
    rows = for_terminal(text).strip("\n").splitlines() or [""]
    shown = [r if len(r) <= width else r[: width - 1] + "…" for r in rows[:lines]]
    if len(rows) > lines:
        shown.append(f"… {len(rows) - lines} more lines")
    return "\n".join(shown)


def footer(result: RunResult) -> str:
    """``3 steps · 412 prompt tokens (380 reused) · 96 generated · 2.4 s`` (+ why it stopped)."""
    u = result.usage
    parts = [
        f"{result.steps} step{'s' if result.steps != 1 else ''}",
        f"{u.prompt_tokens:,} prompt tokens ({u.reused_tokens:,} reused)",
        f"{u.generated_tokens:,} generated",
        f"{result.elapsed:.1f} s",
    ]
    if result.stop_reason is not StopReason.ANSWER:
        parts.append(f"stopped: {result.stop_reason.value}")
    return " · ".join(parts)


class Renderer:
    """Draws a run's events on a rich console.

    Args:
        console: Where to draw.
        show_reasoning: Stream the chain of thought (dimmed).
        resolve_citations: Turns ``【3†L4-L9】`` into links (``Browser.resolve_citations``).
        tool_lines: Lines of each tool result shown in its panel.
    """

    def __init__(
        self,
        console: Console,
        *,
        show_reasoning: bool = True,
        resolve_citations: Callable[[str], str] | None = None,
        tool_lines: int = 8,
    ) -> None:
        self.console = console
        self.show_reasoning = show_reasoning
        self.resolve_citations = resolve_citations
        self.tool_lines = tool_lines
        self._answer: list[str] = []
        self._open_line = False  # streamed text without its newline yet
        self._status: Status | None = None  # the "nothing to show yet" spinner, while it shows
        self._count = 0  # tokens of the current generation so far
        self._quiet_from = 0  # the count when something was last drawn

    QUIET_TOKENS = 16
    """Tokens generated with nothing drawn before the spinner shows."""

    def tokens(self, count: int) -> None:
        """The current generation has produced ``count`` tokens (the CLI calls this per token).

        While nothing readable appears (hidden reasoning, or output that does not parse as
        harmony), a spinner on a terminal says how many tokens the model has generated.
        """
        if count < self._count:
            self._quiet_from = 0  # a new generation
        self._count = count
        quiet = count - self._quiet_from
        if quiet < self.QUIET_TOKENS or quiet % 4 or not self.console.is_terminal:
            return
        text = f"generating · {quiet:,} tokens · nothing to show yet"
        if self._status is None:
            self._end_line()
            self._status = Status(text, console=self.console, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def _progress(self, event: AgentEvent) -> None:
        """Any event but hidden reasoning and a quiet parse problem is progress: the spinner goes."""
        hidden = (isinstance(event, ReasoningDelta) and not self.show_reasoning) or (
            isinstance(event, ParseProblem) and not event.fed_back
        )
        if hidden:
            return
        self._quiet_from = self._count
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: AgentEvent) -> None:
        self._progress(event)
        if isinstance(event, ReasoningDelta):
            if self.show_reasoning:
                self._stream(event.text, "dim")
        elif isinstance(event, CommentaryDelta):
            self._stream(event.text, "")
        elif isinstance(event, AnswerDelta):
            self._answer.append(event.text)
        elif isinstance(event, ToolCallFinished):
            self._end_line()
            self._tool_panel(event)
        elif isinstance(event, ParseProblem) and event.fed_back:
            self._end_line()
            kind = for_terminal(event.kind)
            self.console.print(Text(f"! malformed output ({kind}); the model was told", style="yellow"))
        elif isinstance(event, RunDone):
            self._end_line()
            self._done(event.result)

    def _stream(self, text: str, style: str) -> None:
        self.console.print(Text(for_terminal(text), style=style), end="")
        self._open_line = not text.endswith("\n")

    def _end_line(self) -> None:
        if self._open_line:
            self.console.print()
            self._open_line = False

    def _tool_panel(self, event: ToolCallFinished) -> None:
        call = event.call
        arguments = Text(_clip(call.arguments, 6), style="cyan")
        output = Text(_clip(call.output, self.tool_lines), style="red" if call.is_error else "")
        # a Text, not a str: rich reads a str title as markup ("[link=...]" from the model)
        error = " (error)" if call.is_error else ""
        title = Text(f"{for_terminal(call.recipient)}{error} · {call.duration:.2f} s")
        self.console.print(
            Panel(
                Group(arguments, Rule(style="dim"), output),
                title=title,
                title_align="left",
                border_style="red" if call.is_error else "blue",
                expand=True,
            )
        )

    def _done(self, result: RunResult) -> None:
        partial = "".join(self._answer)
        self._answer = []
        answer = for_terminal(result.answer)
        if answer:
            if self.resolve_citations is not None:
                answer = self.resolve_citations(answer)
            # links printed with their URL: readable in every terminal and in captured output
            self.console.print(Markdown(answer, hyperlinks=False))
        elif partial:
            self.console.print(Text(f"(unfinished answer) {for_terminal(partial)}", style="dim"))
        style = "dim" if result.ok else "yellow"
        self.console.print(Text(footer(result), style=style))
