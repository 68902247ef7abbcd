"""The tool seam: what a tool tells the model about itself, and one call.

A tool is data plus one call. Its ``spec`` says how it renders for the model: the built-in
namespaces ``browser`` and ``python`` go in the system message's ``# Tools`` section, user tools
in the developer message under ``namespace functions``. The agent converts specs into harmony's
``ToolNamespaceConfig`` (``tools`` knows nothing of the agent or the codec).

Errors are sorted by who is at fault: the model's mistakes (bad arguments, unknown names, a tool
that raised or timed out) come back as a ``ToolOutput`` with ``is_error=True`` whose ``content``
the model reads; bugs in the runtime propagate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["FunctionSpec", "NamespaceSpec", "Tool", "ToolError", "ToolOutput"]


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """One callable in a namespace: ``browser.search``, ``functions.get_weather``."""

    name: str
    description: str
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments (an ``object`` schema), or None for free-form input."""


@dataclass(frozen=True, kw_only=True)
class NamespaceSpec:
    """A namespace as harmony renders it (``namespace browser { ... }``)."""

    name: str
    """``functions`` for user tools; ``browser`` or ``python`` for the built-ins."""
    description: str | None = None
    functions: tuple[FunctionSpec, ...] = ()
    builtin: bool = False
    """Built-ins render in the system message; the rest in the developer message."""


@dataclass(kw_only=True)
class ToolOutput:
    """What a tool call returns to the model, as one tool message."""

    author: str
    """The tool message's author name: ``browser.search``, ``python``, ``functions.get_weather``."""
    content: str
    is_error: bool = False
    duration: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra data for callers (never shown to the model), e.g. the browser's page URLs."""


class ToolError(Exception):
    """Raised inside a tool for a failure the model should read (the message goes back as-is)."""


@runtime_checkable
class Tool(Protocol):
    """A tool: its spec and one call per function it exposes.

    ``call`` receives the function name within the namespace (``search`` for ``browser.search``,
    ``get_weather`` for ``functions.get_weather``; the namespace name itself for ``python``) and
    the raw message body the model wrote (JSON arguments, or code for ``python``).
    """

    @property
    def spec(self) -> NamespaceSpec: ...

    def call(self, function: str, body: str) -> ToolOutput: ...

    async def acall(self, function: str, body: str) -> ToolOutput: ...
