"""The sandbox seam: a stateful Python session and what one execution returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Execution", "SandboxError", "Session"]


class SandboxError(RuntimeError):
    """The sandbox itself failed (no engine, image missing, cannot start): not the model's code."""


@dataclass(kw_only=True)
class Execution:
    """The result of running one cell of code."""

    output: str
    """What the model sees: stdout/stderr in order, the final expression's value, or the traceback,
    plus plain notes on timeouts, truncation and restarts."""
    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    """repr of the final expression's value, like a notebook cell."""
    error: str | None = None
    """The traceback (without the driver's frames) when the code raised."""
    timed_out: bool = False
    restarted: bool = False
    """The session was restarted (timeout or crash): earlier state is lost."""
    duration: float = 0.0


class Session(Protocol):
    """An isolated, stateful Python session (one per agent run unless shared on purpose)."""

    timeout: float
    """Default wall-clock limit of one ``run`` in seconds."""

    def run(self, code: str, timeout: float | None = None) -> Execution: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...
