"""The ``Engine`` seam: all the agent loop needs from a model."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Engine", "GenerationStats", "Sampling"]


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


@runtime_checkable
class Engine(Protocol):
    """Anything that turns prompt token ids into a stream of generated token ids.

    ``generate`` yields token ids one at a time and stops after yielding a token in ``stop``,
    after ``max_tokens`` tokens, or at the end of the model's context. ``last_stats`` describes
    the most recent call (updated while it streams).
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
