"""The ``Engine`` seam: all the agent loop needs from a model."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["ContextStats", "Deadline", "Engine", "GenerationStats", "Sampling"]


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How the next token is chosen."""

    temperature: float = 1.0
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    seed: int | None = None
    """Seed of the sampler's random generator; None draws a fresh one."""


@dataclass(kw_only=True)
class GenerationStats:
    """What one ``generate`` call cost; engines update it as tokens stream."""

    prompt_tokens: int = 0
    """Tokens in the prompt."""
    reused_tokens: int = 0
    """Prompt tokens served from the KV cache of the previous call (not recomputed)."""
    prefilled_tokens: int = 0
    """Prompt tokens actually run through the model."""
    generated_tokens: int = 0
    """Tokens produced."""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    reuse_shortfall: str | None = None
    """Why fewer prompt tokens were reused than the engine's cache shares with the prompt (a
    roll-back its sliding-window layers could not make, an evicted cache); None when all were."""


class Deadline:
    """When a generation must end: a point on ``time.monotonic()``'s clock, a cancel flag, or both.

    The agent passes one to every ``generate`` call of an engine that accepts a ``deadline``
    keyword. Such an engine checks ``expired()`` between its units of work (prefill chunks,
    decode steps, stream reads) and, once it is true, ends its token stream quietly (no error):
    the caller knows why. ``cancel()`` may be called from any thread.

    >>> d = Deadline.after(2.0)
    >>> d.expired(), d.remaining() <= 2.0
    (False, True)
    """

    def __init__(self, at: float | None = None) -> None:
        self.at = at
        """``time.monotonic()`` value past which the work must stop; None: no time limit."""
        self._cancelled = threading.Event()

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """A deadline ``seconds`` from now (None: cancellation only)."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (0 once expired or cancelled); None when there is no time limit."""
        if self._cancelled.is_set():
            return 0.0
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        """Cancelled, or past ``at``."""
        return self._cancelled.is_set() or (self.at is not None and time.monotonic() >= self.at)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Make ``expired()`` true now (thread-safe)."""
        self._cancelled.set()

    def __repr__(self) -> str:
        left = self.remaining()
        return f"Deadline({'cancelled' if self.cancelled else 'none' if left is None else f'{left:.3f}s left'})"


class ContextStats:
    """``last_stats`` kept per thread and asyncio task, for engines that several agents share: each
    caller reads the numbers of its own latest call. The engine creates the variable in its
    ``__init__`` (``self._stats = contextvars.ContextVar(name, default=None)``)."""

    def __get__(self, engine: Any, owner: type | None = None) -> GenerationStats:
        var: contextvars.ContextVar[GenerationStats | None] = engine._stats
        stats = var.get()
        if stats is None:
            stats = GenerationStats()
            var.set(stats)
        return stats

    def __set__(self, engine: Any, stats: GenerationStats) -> None:
        engine._stats.set(stats)


@runtime_checkable
class Engine(Protocol):
    """Anything that turns prompt token ids into a stream of generated token ids.

    ``generate`` yields token ids one at a time and stops after yielding a token in ``stop``,
    after ``max_tokens`` tokens, or at the end of the model's context. ``last_stats`` describes
    the most recent call (updated while it streams).

    Optionally, ``generate`` takes a keyword ``deadline: Deadline | None`` (``LocalEngine`` and
    ``RemoteEngine`` do): past it, or once it is cancelled, the stream ends early without an
    error. The agent passes the run's remaining time and its cancellation that way; an engine
    without the keyword is simply abandoned by the agent when the run must stop (its worker
    thread ends at the engine's next token).
    """

    last_stats: GenerationStats

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[int]: ...
