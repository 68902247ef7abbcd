"""``LocalEngine``: gpt-oss in this process with PyTorch; ``load_engine``: the one entry point.

Decoding is small named steps over an explicit cache: ``prefill`` (in chunks), ``decode_one``,
``sample``. Between calls the engine keeps the cache and the tokens it holds; a prompt that
extends them (the agent loop appends a tool result to the last turn) prefills only its new tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from gptoss_agent.model.cache import KVCache
from gptoss_agent.model.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from gptoss_agent.model.engine import Engine, GenerationStats, Sampling
from gptoss_agent.model.transformer import Transformer

__all__ = ["LocalEngine", "load_engine", "resolve_device", "resolve_dtype", "sample"]

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" is CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto") -> torch.dtype:
    """ "auto" is bf16 (the checkpoints' own dtype); fp32 is for tests."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, bf16 or fp32, not {dtype!r}")
    return _DTYPES[dtype]


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Pick the next token from ``logits (vocab,)``: argmax at temperature 0, else top-p sampling."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the better tokens
        sorted_probs[before >= sampling.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class LocalEngine:
    """gpt-oss in process: chunked prefill, cached decode, sampling, prefix reuse across calls."""

    def __init__(
        self, model: Transformer, *, prefill_chunk: int = 2048, checkpoint: Checkpoint | None = None
    ):
        self.model = model
        self.prefill_chunk = prefill_chunk
        """Tokens run through the model at once. Larger chunks give each expert more tokens per
        weight read (2048 tokens of the 20b shape on 2 cores: 17.6 tokens/s in chunks of 2048,
        12.0 in chunks of 512); activations and scratch stay in the low hundreds of MB."""
        self.checkpoint = checkpoint
        self.cache: KVCache = model.new_cache()
        self.cached_tokens: list[int] = []
        """Tokens whose keys and values are in ``cache`` (in order)."""
        self.last_stats = GenerationStats()
        self._epoch = 0

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        progress: Callable[[int, int, str], None] | None = None,
    ) -> LocalEngine:
        """Load a checkpoint directory (original or Hugging Face format); see ``load_engine``."""
        ckpt = open_checkpoint(path)
        model = Transformer.from_checkpoint(
            ckpt, device=resolve_device(device), dtype=resolve_dtype(dtype), progress=progress
        )
        return cls(model, checkpoint=ckpt)

    @property
    def context_length(self) -> int:
        return self.model.config.max_position_embeddings

    def summary(self) -> str:
        """One line: what was loaded."""
        cfg, m = self.model.config, self.model
        fmt = self.checkpoint.format if self.checkpoint else "in-memory"
        weights = _size(self.model.weight_bytes())
        size = f", {_size(self.checkpoint.nbytes)} on disk" if self.checkpoint else ""
        return (
            f"gpt-oss ({fmt}): {cfg.num_hidden_layers} layers, {cfg.num_experts} experts "
            f"(top {cfg.experts_per_token}), vocab {cfg.vocab_size}, weights {str(m.embedding.dtype).removeprefix('torch.')}, "
            f"compute {str(m.compute_dtype).removeprefix('torch.')}, device {m.device}, "
            f"{weights} of weights in memory (experts packed){size}"
        )

    # ---- the steps -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the cache (the next call prefills its whole prompt)."""
        self.cache.reset()
        self.cached_tokens = []

    def _reuse(self, prompt: Sequence[int]) -> int:
        """Roll the cache back to the longest prefix it shares with ``prompt``; return its length."""
        common = 0
        for a, b in zip(self.cached_tokens, prompt, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # the last prompt token must run to give logits
        if common < len(self.cached_tokens) and not self.cache.truncate(common):
            common = 0
        if common == 0:
            self.reset()
        else:
            del self.cached_tokens[common:]
        return common

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        """Run ``tokens`` after the cached ones, in chunks; return the logits of the last one."""
        logits = torch.empty(0)
        for i in range(0, len(tokens), self.prefill_chunk):
            chunk = list(tokens[i : i + self.prefill_chunk])
            logits = self.model(self._tensor(chunk), self.cache, last_only=True)[-1]
            self.cached_tokens += chunk
        return logits

    def decode_one(self, token: int) -> torch.Tensor:
        """Run one token after the cached ones; return its logits."""
        logits = self.model(self._tensor([token]), self.cache)[-1]
        self.cached_tokens.append(token)
        return logits

    def _tensor(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor(tokens, dtype=torch.long, device=self.model.device)

    # ---- the Engine seam -------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[int]:
        """Stream generated token ids; stops after a ``stop`` token, ``max_tokens``, or the context end."""
        prompt = list(prompt_ids)
        if not prompt:
            raise ValueError("prompt_ids is empty")
        vocab = self.model.config.vocab_size
        if max(prompt) >= vocab or min(prompt) < 0:
            raise ValueError(f"prompt has token ids outside the model's vocabulary of {vocab}")
        if len(prompt) >= self.context_length:
            raise ValueError(
                f"prompt of {len(prompt)} tokens does not fit the context of {self.context_length}"
            )
        return self._generate(prompt, frozenset(stop), sampling or Sampling(), max_tokens)

    def _generate(
        self, prompt: list[int], stop: frozenset[int], sampling: Sampling, max_tokens: int | None
    ) -> Iterator[int]:
        # A newer call takes the cache over; an abandoned iterator of an older call then just ends.
        self._epoch += 1
        epoch = self._epoch
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt))
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator()
            if sampling.seed is not None:
                generator.manual_seed(sampling.seed)
            else:
                generator.seed()
        t0 = time.perf_counter()
        reused = self._reuse(prompt)
        stats.reused_tokens = reused
        stats.prefilled_tokens = len(prompt) - reused
        logits = self.prefill(prompt[reused:])
        stats.prefill_seconds = time.perf_counter() - t0
        limit = self.context_length - len(prompt)
        if max_tokens is not None:
            limit = min(limit, max_tokens)
        t0 = time.perf_counter()
        for n in range(limit):
            token = sample(logits, sampling, generator)
            stats.generated_tokens += 1
            stats.decode_seconds = time.perf_counter() - t0
            yield token
            if token in stop or n + 1 == limit or self._epoch != epoch:
                break
            logits = self.decode_one(token)
        stats.decode_seconds = time.perf_counter() - t0


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _rich_progress() -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """A rich progress bar on stderr, as a loading callback and a close function."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("loading"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("", total=None)
    bar.start()

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total, description=what)

    return update, bar.stop


def load_engine(
    path_or_url: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool | Callable[[int, int, str], None] = False,
    **kwargs: Any,
) -> Engine:
    """Open a model: a checkpoint directory gives a ``LocalEngine``, an http(s) URL a ``RemoteEngine``.

    ``progress=True`` shows a progress bar and prints a one-line summary on stderr (for command
    lines); a callable receives ``(done, total, what)`` instead. A wrong or incomplete directory
    raises ``CheckpointError`` naming what is missing.
    """
    target = str(path_or_url)
    if target.startswith(("http://", "https://")):
        from gptoss_agent.model.remote import RemoteEngine

        engine: Engine = RemoteEngine(target, **kwargs)
        return engine
    if progress is True:
        update, close = _rich_progress()
        try:
            engine = LocalEngine.from_checkpoint(target, device=device, dtype=dtype, progress=update)
        finally:
            close()
        from rich.console import Console

        Console(stderr=True).print(engine.summary(), highlight=False, soft_wrap=True)
        return engine
    callback = progress if callable(progress) else None
    return LocalEngine.from_checkpoint(target, device=device, dtype=dtype, progress=callback)


__all__ += ["CheckpointError"]
