"""``LocalEngine``: gpt-oss in this process with PyTorch; ``load_engine``: the one entry point.

Decoding is small named steps over an explicit cache: ``prefill`` (in chunks), ``decode_one``,
``sample``.

Sessions. A ``Session`` is one conversation's KV state (its cache and the tokens it holds) over
the engine's shared weights; ``session.generate(prompt_ids, *, stop, sampling, max_tokens)`` is
the ``Engine`` seam, so a session drives an ``Agent`` like any engine::

    engine = LocalEngine.from_checkpoint(path)
    a, b = engine.session(), engine.session()   # two agents, two caches, one copy of the weights
    Agent(a, ...), Agent(b, ...)

``LocalEngine.generate`` (same signature, unchanged for existing callers) runs each call on a
pooled session: the idle one whose history the prompt continues, else a fresh one seeded with the
longest prefix any session holds; an unfinished stream keeps its session until it is closed,
exhausted or dropped. So several agents over one engine (threads, ``asyncio.gather``, parallel
workflow steps) each keep their own cache without asking. Calls return a ``Generation``: the
token iterator plus ``stats`` (``engine.last_stats`` is kept per thread and asyncio task).

Reuse. Each call reuses the longest prefix the session's cache shares with its prompt. The
sliding-window layers keep snapshots of their rows around anchors (where each generation
began, where a message starts: ``<|start|>``), so a new turn that drops the last turn's reasoning
still reuses everything before it; when reuse stops short of the common prefix,
``stats.reuse_shortfall`` says why.

Batching. Sessions decoding at the same time have their decode steps run as one batch
(``Transformer.decode_batch``): the dense weights and each chosen expert are read once per step
for all of them. Idle sessions' caches are bounded: beyond ``cache_budget`` bytes (all sessions
together, default 2 GiB) the least recently used idle ones are dropped, and the pool keeps at most
``max_sessions`` (default 8) sessions it can reuse.
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from gptoss_agent.model import kernels as _kernels
from gptoss_agent.model.cache import KVCache
from gptoss_agent.model.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from gptoss_agent.model.constrain import ConstraintState, HarmonyGrammar
from gptoss_agent.model.engine import ContextStats, Deadline, Engine, GenerationStats, Sampling
from gptoss_agent.model.tokenizer import SPECIAL_TOKENS
from gptoss_agent.model.transformer import Transformer

__all__ = ["Generation", "LocalEngine", "Session", "load_engine", "resolve_device", "resolve_dtype", "sample"]

START_TOKEN = SPECIAL_TOKENS["<|start|>"]

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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


_MIN_CHUNK = 16  # the smallest prefill chunk a near deadline makes
_REWRITE_SLACK = 8  # tokens at the end of a pooled session's history a prompt may rewrite in place


class DeadlineExpired(Exception):
    """``Session.prefill`` stopped between chunks: its deadline expired."""


class Generation(Iterator[int]):
    """What ``generate`` returns: the stream of token ids, plus ``stats`` (this call's numbers).

    ``close()`` ends it early (the agent loop does); an unfinished stream keeps its session busy
    until it is closed, exhausted or garbage-collected, so ``LocalEngine.generate`` routes other
    calls to other sessions meanwhile.
    """

    def __init__(self, tokens: Generator[int, None, None], stats: GenerationStats, session: Session):
        self._tokens = tokens
        self.stats = stats
        self.session = session
        self.done = False

    def __next__(self) -> int:
        try:
            return next(self._tokens)
        except StopIteration:
            self.done = True
            raise

    def close(self) -> None:
        self.done = True
        self._tokens.close()


class Session:
    """One conversation's KV state on a ``LocalEngine``: its own cache and token history, the
    engine's weights. ``generate`` is the ``Engine`` seam, so a session drives an ``Agent``.

    Calls on one session run one at a time: a newer ``generate`` takes the cache over and an
    older, unfinished stream then just ends. Different sessions run concurrently; their decode
    steps are batched (see ``LocalEngine``).
    """

    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self.cache: KVCache = engine.model.new_cache()
        for layer in self.cache.layers:
            layer.max_snapshot_rows = engine.snapshot_rows
        self.cached_tokens: list[int] = []
        """Tokens whose keys and values are in ``cache`` (in order)."""
        self.last_stats = GenerationStats()
        self.last_used = time.monotonic()
        self._epoch = 0
        self._lock = threading.RLock()  # one step at a time on this cache
        self._running = 0  # generations between their first step and their end
        self._claim: weakref.ref[Generation] | None = None  # the pooled stream that holds the session
        self._evicted: str | None = None

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
        deadline: Deadline | None = None,
        constraint: HarmonyGrammar | None = None,
    ) -> Generation:
        """Stream generated token ids; stops after a ``stop`` token, ``max_tokens``, or the context end.

        ``deadline``: checked between prefill chunks and decode steps; once it has expired (or is
        cancelled) the stream ends quietly. A chunk that would run past it is made smaller, by the
        prefill rate measured so far; a cancellation waits for the chunk in flight.
        ``constraint`` (a compiled ``HarmonyGrammar``) keeps every token within its grammar: a
        sampled token it refuses is replaced by one drawn from the masked distribution.
        """
        prompt = self.engine._check(prompt_ids)
        return self._stream(prompt, stop, sampling, max_tokens, deadline, None, constraint)

    def _stream(
        self,
        prompt: list[int],
        stop: Collection[int],
        sampling: Sampling | None,
        max_tokens: int | None,
        deadline: Deadline | None,
        seed: Session | None,
        constraint: HarmonyGrammar | None = None,
    ) -> Generation:
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt))
        self.engine._stats.set(stats)
        sampling = sampling or Sampling()
        state = constraint.start() if constraint is not None else None
        tokens = self._generate(prompt, frozenset(stop), sampling, max_tokens, stats, deadline, seed, state)
        return Generation(tokens, stats, self)

    def reset(self) -> None:
        """Forget the cache (the next call prefills its whole prompt)."""
        with self._lock:
            self._epoch += 1
            self.cache.reset()
            self.cached_tokens = []

    def cache_bytes(self) -> int:
        """Bytes this session's KV cache holds (sliding-window snapshots included)."""
        return self.cache.nbytes()

    # ---- the steps ---------------------------------------------------------------------------

    def _reuse(self, prompt: Sequence[int]) -> tuple[int, str | None]:
        """Roll the cache back to the longest prefix it shares with ``prompt``; return its length
        and, when that is shorter than the common prefix, why."""
        why, self._evicted = self._evicted, None
        common = min(_common_prefix(self.cached_tokens, prompt), len(prompt) - 1)  # the last must run
        reused = self.cache.best_restorable(common)
        if reused < common:
            w = max((lc.window or 0) for lc in self.cache.layers)
            why = (
                f"the cache shares {common} tokens with the prompt, but its sliding-window layers "
                f"no longer hold the {w - 1} positions before position {common} (no snapshot near "
                f"there), so it was rolled back to {reused}"
            )
        ok = self.cache.truncate(reused)
        assert ok, "best_restorable promised a possible roll-back"
        del self.cached_tokens[reused:]
        return reused, why

    def _anchor(self, tokens: Sequence[int], at: int) -> None:
        """Keep the cache restorable where messages start among ``tokens`` (placed at ``at``)."""
        marks = self.engine.snapshot_tokens
        if marks:
            for i, t in enumerate(tokens):
                if t in marks:
                    self.cache.anchor(at + i)

    def prefill(self, tokens: Sequence[int], deadline: Deadline | None = None) -> torch.Tensor:
        """Run ``tokens`` after the cached ones, in chunks; return the logits of the last one.

        Raises ``DeadlineExpired`` between chunks once ``deadline`` has (the chunks run so far
        stay cached)."""
        logits = torch.empty(0)
        with self._lock:
            self._anchor(tokens, len(self.cached_tokens))
            i = 0
            while i < len(tokens):
                if deadline is not None and deadline.expired():
                    raise DeadlineExpired(f"prefill stopped after {i} of {len(tokens)} tokens")
                chunk = list(tokens[i : i + self.engine._chunk_for(deadline)])
                t0 = time.perf_counter()
                with self._guard():
                    logits = self.engine._forward(chunk, self.cache)
                self.engine._prefill_rate = len(chunk) / max(time.perf_counter() - t0, 1e-6)
                self.cached_tokens += chunk
                i += len(chunk)
        return logits

    def decode_one(self, token: int) -> torch.Tensor:
        """Run one token after the cached ones; return its logits (not batched with other sessions)."""
        with self._lock:
            self._anchor([token], len(self.cached_tokens))
            with self._guard():
                logits = self.engine._forward([token], self.cache)
            self.cached_tokens.append(token)
        return logits

    def fork(self, source: Session, prompt: Sequence[int]) -> int:
        """Start from the longest prefix of ``prompt`` that ``source`` holds (a copy); return its length."""
        first, second = sorted((self, source), key=id)  # one lock order for every pair
        with first._lock, second._lock:
            n = min(_common_prefix(source.cached_tokens, prompt), len(prompt) - 1)
            n = source.cache.best_restorable(n)
            self._epoch += 1
            self.cache.copy_prefix(source.cache, n)
            self.cached_tokens = source.cached_tokens[:n]
        return n

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A step that fails half-way leaves the layers at different lengths: forget the cache then."""
        try:
            yield
        except BaseException:
            self.cache.reset()
            self.cached_tokens = []
            raise

    def _generate(
        self,
        prompt: list[int],
        stop: frozenset[int],
        sampling: Sampling,
        max_tokens: int | None,
        stats: GenerationStats,
        deadline: Deadline | None = None,
        seed: Session | None = None,
        constraint: ConstraintState | None = None,
    ) -> Generator[int, None, None]:
        engine = self.engine
        if seed is not None:  # a new pooled session: start from a copy of another's prefix
            self.fork(seed, prompt)
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator()
            if sampling.seed is not None:
                generator.manual_seed(sampling.seed)
            else:
                generator.seed()
        self._running += 1
        try:
            with self._lock:
                self._epoch += 1
                epoch = self._epoch
                self.last_used = time.monotonic()
                t0 = time.perf_counter()
                reused, why = self._reuse(prompt)
                stats.reused_tokens = reused
                stats.prefilled_tokens = len(prompt) - reused
                stats.reuse_shortfall = why
                self.cache.anchor(len(prompt), strong=True)  # where this generation branches off
                try:
                    logits = self.prefill(prompt[reused:], deadline)
                except DeadlineExpired:
                    return
                finally:
                    stats.prefill_seconds = time.perf_counter() - t0
            limit = self.context_length - len(prompt)
            if max_tokens is not None:
                limit = min(limit, max_tokens)
            t0 = time.perf_counter()
            engine._batcher.join()
            try:
                for n in range(limit):
                    if constraint is None:
                        token = sample(logits, sampling, generator)
                    else:  # the full mask only where the grammar refuses the sampled token
                        token = constraint.choose(logits, lambda x: sample(x, sampling, generator))
                    stats.generated_tokens += 1
                    stats.decode_seconds = time.perf_counter() - t0
                    yield token
                    if token in stop or n + 1 == limit or (deadline is not None and deadline.expired()):
                        break
                    with self._lock:
                        if self._epoch != epoch:
                            break  # a newer call took the cache over
                        self._anchor([token], len(self.cached_tokens))
                        with self._guard():
                            logits = engine._batcher.step(self, token)
                        self.cached_tokens.append(token)
            finally:
                engine._batcher.leave()
            stats.decode_seconds = time.perf_counter() - t0
        finally:
            self._running -= 1
            self.last_used = time.monotonic()
            engine._enforce_budget()


class _Step:
    """One session's next token, waiting to be decoded in a batch."""

    def __init__(self, session: Session, token: int):
        self.session, self.token = session, token
        self.logits: torch.Tensor | None = None
        self.error: BaseException | None = None

    def result(self) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        assert self.logits is not None
        return self.logits


class _Batcher:
    """Decode steps of sessions decoding at the same time, run as one batch.

    A step joins the pending list; the first one finding no batch running leads: it waits briefly
    (until every decoding session has a step pending, at most ``LocalEngine.batch_wait`` and a
    quarter of the last batch's time), then runs all pending steps as one ``decode_batch``.
    """

    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self.cond = threading.Condition(threading.RLock())
        self.pending: list[_Step] = []
        self.leading = False
        self.decoding = 0
        self.step_seconds = 0.0
        self.batches = 0
        """Batches run (with ``rows``: the mean batch size is ``rows / batches``)."""
        self.rows = 0

    def join(self) -> None:
        with self.cond:
            self.decoding += 1

    def leave(self) -> None:
        with self.cond:
            self.decoding -= 1
            self.cond.notify_all()

    def step(self, session: Session, token: int) -> torch.Tensor:
        mine = _Step(session, token)
        with self.cond:
            self.pending.append(mine)
            self.cond.notify_all()
            while mine.logits is None and mine.error is None and self.leading:
                self.cond.wait()
            if mine.logits is not None or mine.error is not None:
                return mine.result()
            self.leading = True
            deadline = time.monotonic() + min(self.engine.batch_wait, 0.25 * self.step_seconds)
            while len(self.pending) < self.decoding and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
            batch, self.pending = self.pending, []
        try:
            t0 = time.perf_counter()
            logits = self.engine._forward_batch([s.token for s in batch], [s.session.cache for s in batch])
            self.step_seconds = time.perf_counter() - t0
            self.batches += 1
            self.rows += len(batch)
            for s, row in zip(batch, logits, strict=True):
                s.logits = row
        except BaseException as e:
            for s in batch:
                s.error = e
        finally:
            with self.cond:
                self.leading = False
                self.cond.notify_all()
        return mine.result()


class LocalEngine:
    """gpt-oss in process: chunked prefill, cached decode, sampling, prefix reuse, many sessions."""

    supports_constraints = True
    """``generate`` takes ``constraint=`` (a ``HarmonyGrammar``): the agent's constrained decoding."""

    def __init__(
        self,
        model: Transformer,
        *,
        prefill_chunk: int = 2048,
        checkpoint: Checkpoint | None = None,
        max_sessions: int = 8,
        cache_budget: int | None = 2 * 2**30,
        snapshot_rows: int = 4096,
        snapshot_tokens: Collection[int] = (START_TOKEN,),
        batch_wait: float = 0.02,
    ):
        self.model = model
        self.prefill_chunk = prefill_chunk
        """Tokens run through the model at once. Larger chunks give each expert more tokens per
        weight read (2048 tokens of the 20b shape on 2 cores: 17.6 tokens/s in chunks of 2048,
        12.0 in chunks of 512); activations and scratch stay in the low hundreds of MB."""
        self.checkpoint = checkpoint
        self.max_sessions = max_sessions
        """Sessions ``generate`` keeps in its pool (one per concurrent caller or diverging history)."""
        self.cache_budget = cache_budget
        """Bytes of KV cache (all sessions) above which idle sessions' caches are dropped, least
        recently used first; the most recently used session is never dropped. None: no cap."""
        self.snapshot_rows = snapshot_rows
        """Rows of sliding-window snapshots a session's layer keeps (see ``cache``)."""
        self.snapshot_tokens = frozenset(snapshot_tokens)
        """Tokens (harmony's ``<|start|>``) whose positions stay restorable in sliding layers."""
        self.batch_wait = batch_wait
        """Seconds a decode step may wait for other sessions' steps to join its batch."""
        self._prefill_rate = 0.0  # tokens/s of the latest prefill chunk (sizes chunks near a deadline)
        self._model_lock = threading.Lock()
        self._pool_lock = threading.RLock()
        self._batcher = _Batcher(self)
        self._stats: contextvars.ContextVar[GenerationStats | None] = contextvars.ContextVar(
            "local_engine_stats", default=None
        )
        self._pool: list[Session] = [Session(self)]
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
            "local_engine_session", default=None
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        progress: Callable[[int, int, str], None] | None = None,
        **options: Any,
    ) -> LocalEngine:
        """Load a checkpoint directory (original or Hugging Face format); see ``load_engine``.

        ``options`` are ``LocalEngine``'s keyword arguments (``max_sessions``, ``cache_budget``, ...).
        """
        ckpt = open_checkpoint(path)
        model = Transformer.from_checkpoint(
            ckpt, device=resolve_device(device), dtype=resolve_dtype(dtype), progress=progress
        )
        return cls(model, checkpoint=ckpt, **options)

    @property
    def context_length(self) -> int:
        """Tokens the model's context holds (prompt plus generated)."""
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
            f"{weights} of weights in memory (experts packed){size}, "
            f"arithmetic: {'CUDA (torch)' if m.device.type == 'cuda' else _kernels.describe()}"
        )

    # ---- sessions ----------------------------------------------------------------------------

    def session(self) -> Session:
        """A new session: its own KV cache and history over this engine's weights."""
        s = Session(self)
        with self._pool_lock:
            self._sessions.add(s)
        return s

    last_stats = ContextStats()
    """Numbers of the latest ``generate`` started in this thread or asyncio task."""

    def cache_bytes(self) -> int:
        """Bytes of KV cache held by all sessions (the pool's and ``session()``'s)."""
        return sum(s.cache_bytes() for s in self._all_sessions())

    def _all_sessions(self) -> list[Session]:
        with self._pool_lock:
            return [*self._pool, *self._sessions]

    def _session(self) -> Session:
        """The session the step methods below act on: the last ``generate``'s in this context."""
        return self._current.get() or self._pool[0]

    @property
    def cache(self) -> KVCache:
        return self._session().cache

    @property
    def cached_tokens(self) -> list[int]:
        """Tokens in the current session's cache."""
        return self._session().cached_tokens

    @cached_tokens.setter
    def cached_tokens(self, tokens: list[int]) -> None:
        self._session().cached_tokens = tokens

    def reset(self) -> None:
        """Forget the pool's caches (the next call prefills its whole prompt)."""
        for s in self._pool:
            s.reset()
        self._current.set(None)

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        """Run ``tokens`` after the current session's cached ones; return the last one's logits."""
        return self._session().prefill(tokens)

    def decode_one(self, token: int) -> torch.Tensor:
        """Run one token after the current session's cached ones; return its logits."""
        return self._session().decode_one(token)

    def _chunk_for(self, deadline: Deadline | None) -> int:
        """Prefill chunk size: ``prefill_chunk``, or what the measured rate fits in the time left."""
        left = deadline.remaining() if deadline is not None else None
        if left is None or self._prefill_rate <= 0:
            return self.prefill_chunk
        return max(_MIN_CHUNK, min(self.prefill_chunk, int(self._prefill_rate * left) + 1))

    def _forward(self, tokens: list[int], cache: KVCache) -> torch.Tensor:
        with self._model_lock:
            return self.model(self._tensor(tokens), cache, last_only=True)[-1]

    def _forward_batch(self, tokens: list[int], caches: list[KVCache]) -> torch.Tensor:
        with self._model_lock:
            if len(tokens) == 1:
                return self.model(self._tensor(tokens), caches[0])
            return self.model.decode_batch(self._tensor(tokens), caches)

    def _tensor(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor(tokens, dtype=torch.long, device=self.model.device)

    def _route(self, prompt: list[int]) -> tuple[Session, Session | None]:
        """The pooled session for a new call, and the session to copy the longest shared prefix
        from (None: nothing to copy).

        The idle session whose history the prompt continues (rewriting at most its last
        ``_REWRITE_SLACK`` tokens) is reused in place; otherwise (a prompt that shares only a
        system prompt with another agent's history, or drops a turn's reasoning) the call gets an
        empty, new or least recently used idle session seeded with a copy of the shared prefix,
        and the other history stays intact for its own next call."""
        with self._pool_lock:
            free = [s for s in self._pool if not _claimed(s)]
            shared = {
                id(s): min(_common_prefix(s.cached_tokens, prompt), len(prompt) - 1) for s in self._pool
            }
            best = max(self._pool, key=lambda s: shared[id(s)])
            top = max(free, key=lambda s: shared[id(s)], default=None)
            if top is not None and top.cached_tokens:
                n = shared[id(top)]
                if n >= len(top.cached_tokens) - _REWRITE_SLACK and n >= shared[id(best)]:
                    return top, None
            target = next((s for s in free if not s.cached_tokens), None)
            if target is None and len(self._pool) < self.max_sessions:
                target = Session(self)
                self._pool.append(target)
            if target is None and free:
                target = min(free, key=lambda s: s.last_used)
            if target is None:
                target = Session(self)  # every pooled session is streaming: one more
                self._pool.append(target)
            return target, best if shared[id(best)] > 0 and best is not target else None

    def _enforce_budget(self) -> None:
        """Drop idle sessions' caches, least recently used first, while all of them exceed the budget."""
        if self.cache_budget is None:
            return
        with self._pool_lock:
            sessions = self._all_sessions()
            total = sum(s.cache_bytes() for s in sessions)
            if total <= self.cache_budget:
                return
            newest = max(sessions, key=lambda s: s.last_used)
            for s in sorted(sessions, key=lambda s: s.last_used):
                if total <= self.cache_budget:
                    break
                if s is newest or s._running or _claimed(s) or not s._lock.acquire(blocking=False):
                    continue
                try:
                    total -= s.cache_bytes()
                    s.cache.release()
                    s.cached_tokens = []
                    s._evicted = (
                        f"this session's cache was dropped (least recently used) to keep the engine's "
                        f"KV caches under cache_budget={_size(self.cache_budget)}"
                    )
                finally:
                    s._lock.release()
                if s in self._pool and len(self._pool) > 1:
                    self._pool.remove(s)

    # ---- the Engine seam -------------------------------------------------------------------

    def _check(self, prompt_ids: Sequence[int]) -> list[int]:
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
        return prompt

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
        deadline: Deadline | None = None,
        constraint: HarmonyGrammar | None = None,
    ) -> Generation:
        """Stream generated token ids; stops after a ``stop`` token, ``max_tokens``, the context
        end, or ``deadline``; ``constraint`` keeps them within a grammar (see ``Session.generate``).

        The call runs on a pooled session: the idle one whose history the prompt continues (so
        each of several agents sharing the engine keeps its own cache), else a new one.
        """
        prompt = self._check(prompt_ids)
        with self._pool_lock:
            session, seed = self._route(prompt)
            stream = session._stream(prompt, stop, sampling, max_tokens, deadline, seed, constraint)
            session._claim = weakref.ref(stream)
        self._current.set(session)
        return stream


def _claimed(session: Session) -> bool:
    """Whether an unfinished pooled stream holds the session."""
    ref = session._claim
    stream = ref() if ref is not None else None
    return stream is not None and not stream.done


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
    raises ``CheckpointError`` naming what is missing. ``"demo"`` is the small demo model shipped
    in the package (``gptoss_agent.model.demo``), unpacked into the cache on first use.
    """
    target = str(path_or_url)
    if target == "demo" and not Path(target).is_dir():
        from gptoss_agent.model.demo.pack import demo_checkpoint

        try:
            target = str(demo_checkpoint())
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
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
