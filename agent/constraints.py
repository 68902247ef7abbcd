"""What the agent asks of a constrained engine, and what the loop does where there is none.

``ToolChoice`` turns an agent's tools, its ``tool_choice``, the answer's schema and the reasoning
budget into the ``HarmonyGrammar`` of one generation (compiled once per distinct spec). A
``required`` or named ``tool_choice`` binds the first generation of a run (as in OpenAI's APIs, where
it binds one response: after the call the model reads the result and may answer); ``none`` binds
every generation.

Engines without constraints (a remote vLLM server, scripted engines) get the same promises from
the loop after the fact: a call made under ``none`` is answered with an error message instead of
running; a first step that answers under ``required`` or a named choice is told to call the tool,
once; an answer that does not fit the schema is what ``Workflow``'s retries handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptoss_agent.tools.schema import validation_schema

if TYPE_CHECKING:
    from gptoss_agent.model.constrain import HarmonyGrammar, HarmonySpec
    from gptoss_agent.tools.toolbox import Toolbox

__all__ = ["ToolChoice", "resolve_tool_choice"]


def resolve_tool_choice(choice: str, names: list[str]) -> str:
    """``auto`` / ``none`` / ``required``, or the canonical recipient a named choice means
    (``get_weather`` -> ``functions.get_weather``); ValueError naming the declared tools."""
    if choice in ("auto", "none", "required"):
        return choice
    for candidate in (choice, f"functions.{choice}"):
        if candidate in names:
            return candidate
    raise ValueError(
        f"tool_choice {choice!r} is neither auto, none, required nor a declared tool "
        f"({', '.join(names) or 'no tools are declared'})"
    )


@dataclass
class ToolChoice:
    """The agent's constraint settings and the grammars compiled for them."""

    choice: str = "auto"
    reasoning_budget: int | None = None
    enabled: bool = False
    """Whether the engine enforces the grammar (``LocalEngine``); otherwise the loop checks."""

    def __post_init__(self) -> None:
        if self.reasoning_budget is not None and self.reasoning_budget < 1:
            raise ValueError("reasoning_budget must be a positive number of tokens or None")
        self._grammars: dict[str, HarmonyGrammar] = {}

    def step_choice(self, toolbox: Toolbox, first_step: bool) -> str:
        """The tool choice of one generation: a forcing choice binds only the run's first."""
        choice = resolve_tool_choice(self.choice, toolbox.names)
        if choice == "none" or first_step:
            return choice
        return "auto"

    def spec(self, toolbox: Toolbox, choice: str, answer_schema: dict[str, Any] | None) -> HarmonySpec:
        from gptoss_agent.model.constrain import HarmonySpec, ToolRule

        rules = []
        for tool in toolbox.tools:
            spec = tool.spec
            if not spec.functions:
                rules.append(ToolRule(spec.name))
            for f in spec.functions:
                schema = validation_schema(f.parameters) if f.parameters is not None else None
                rules.append(ToolRule(f"{spec.name}.{f.name}", schema))
        return HarmonySpec(
            tools=tuple(rules),
            tool_choice=choice,
            response_format=answer_schema,
            reasoning_budget=self.reasoning_budget,
        )

    def grammar(
        self, enc: Any, toolbox: Toolbox, first_step: bool, answer_schema: dict[str, Any] | None
    ) -> HarmonyGrammar | None:
        """The compiled grammar of the next generation, or None when nothing is constrained."""
        if not self.enabled:
            return None
        from gptoss_agent.model.constrain import HarmonyGrammar

        spec = self.spec(toolbox, self.step_choice(toolbox, first_step), answer_schema)
        key = spec.key()
        if key not in self._grammars:
            self._grammars[key] = HarmonyGrammar.compile(enc, spec)
        return self._grammars[key]

    def refusal(self, toolbox: Toolbox, first_step: bool, called: str | None) -> str | None:
        """Unconstrained engines: what to tell the model when its step broke the choice
        (``called`` is the recipient it called, None for an answer), or None when it did not."""
        if self.enabled:
            return None
        choice = self.step_choice(toolbox, first_step)
        if called is not None and choice == "none":
            return "Tool calls are disabled for this request: answer directly, without calling a tool."
        if called is None and choice == "required":
            return "A tool call is required before answering: call one of " + ", ".join(toolbox.names) + "."
        if choice not in ("auto", "none", "required") and called != choice:
            return f"Call {choice} first (it is required for this request), then answer."
        return None
