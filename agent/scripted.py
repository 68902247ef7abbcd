"""``ScriptedEngine``: an ``Engine`` that plays back harmony completions, for tests and demos.

The way httpx ships ``MockTransport``: the loop cannot tell it from a model. Each ``generate``
call takes the next response of the script (or asks a function, which sees the prompt), encodes
it with the real tokenizer (special tokens such as ``<|call|>`` become their ids) and streams the
ids, honouring ``stop`` and ``max_tokens`` exactly as ``Engine`` prescribes. ``last_stats``
reports prefix reuse as an engine with a perfect KV cache would: the prompt tokens it shares
with the previous prompt plus the tokens it generated (all but the last, which a real engine
never runs through the model).

    engine = ScriptedEngine([
        '<|channel|>analysis<|message|>Need python.<|end|>'
        '<|start|>assistant to=python<|channel|>analysis<|message|>print(6*7)<|call|>',
        '<|channel|>final<|message|>42<|return|>',
    ])
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from gptoss_agent.model.engine import GenerationStats, Sampling

__all__ = ["ScriptExhausted", "ScriptedEngine"]

Response = str | Sequence[int] | Callable[[Sequence[int]], "str | Sequence[int]"]


class ScriptExhausted(RuntimeError):
    """``generate`` was called more often than the script has responses."""


class ScriptedEngine:
    """Plays back one scripted completion per ``generate`` call.

    Args:
        responses: Per call: a harmony string (after the prompt's ``<|start|>assistant``), a list
            of token ids, or a function of the prompt ids returning either.
        enc: The tokenizer (default: ``load_tokenizer()``).
        repeat_last: Keep answering with the last response instead of raising ``ScriptExhausted``.
    """

    def __init__(self, responses: Sequence[Response], *, enc: Any = None, repeat_last: bool = False) -> None:
        if enc is None:
            from gptoss_agent.model.tokenizer import load_tokenizer

            enc = load_tokenizer()
        self.enc = enc
        self.responses = list(responses)
        self.repeat_last = repeat_last
        self.calls = 0
        self.prompts: list[list[int]] = []
        """Every prompt received, in order."""
        self.last_stats = GenerationStats()
        self._cached: list[int] = []

    def encode(self, text: str) -> list[int]:
        """Token ids of a harmony string (special tokens allowed)."""
        return list(self.enc.encode(text, allowed_special="all"))

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[int]:
        prompt = list(prompt_ids)
        if not prompt:
            raise ValueError("prompt_ids is empty")
        if self.calls >= len(self.responses) and not (self.repeat_last and self.responses):
            raise ScriptExhausted(
                f"the script has {len(self.responses)} responses; call {self.calls + 1} asked for more"
            )
        response = self.responses[min(self.calls, len(self.responses) - 1)]
        self.calls += 1
        self.prompts.append(prompt)
        if callable(response):
            response = response(prompt)
        tokens = self.encode(response) if isinstance(response, str) else list(response)
        return self._stream(prompt, tokens, frozenset(stop), max_tokens)

    def _stream(
        self, prompt: list[int], tokens: list[int], stop: frozenset[int], max_tokens: int | None
    ) -> Iterator[int]:
        reused = 0
        for a, b in zip(self._cached, prompt, strict=False):
            if a != b:
                break
            reused += 1
        reused = min(reused, len(prompt) - 1)
        stats = self.last_stats = GenerationStats(
            prompt_tokens=len(prompt), reused_tokens=reused, prefilled_tokens=len(prompt) - reused
        )
        self._cached = list(prompt)
        last = -1
        for token in tokens:
            if max_tokens is not None and stats.generated_tokens >= max_tokens:
                break
            if stats.generated_tokens:
                self._cached.append(last)
            stats.generated_tokens += 1
            last = token
            yield token
            if token in stop:
                break


class ForcedEngine:
    """A real engine made to emit a script (teacher forcing), for measuring its KV cache in a loop.

    Each ``generate`` lets the wrapped engine (a ``LocalEngine``: anything with ``generate`` and
    ``decode_one``) process the prompt as it always does, reusing its cache, then feeds the
    scripted tokens through ``decode_one`` instead of sampling, so the cache holds exactly what a
    model that chose those tokens would hold. ``last_stats`` are the wrapped engine's.
    """

    def __init__(self, engine: Any, responses: Sequence[Response], *, enc: Any = None) -> None:
        self.engine = engine
        self.script = ScriptedEngine(responses, enc=enc)
        self.last_stats = GenerationStats()

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[int]:
        tokens = list(self.script.generate(prompt_ids, stop=stop, max_tokens=max_tokens))
        for _ in self.engine.generate(prompt_ids, stop=(), sampling=Sampling(temperature=0.0), max_tokens=1):
            pass  # prefill (with reuse) and one sampled token, which is never run through the model
        return self._stream(tokens, frozenset(stop))

    def _stream(self, tokens: list[int], stop: frozenset[int]) -> Iterator[int]:
        stats = self.last_stats = self.engine.last_stats
        stats.generated_tokens = 0
        for token in tokens:
            stats.generated_tokens += 1
            yield token
            if token in stop or stats.generated_tokens == len(tokens):
                break
            self.engine.decode_one(token)


__all__ += ["ForcedEngine"]
