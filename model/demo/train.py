"""Training the demo model: a small gpt-oss on synthetic harmony conversations, on the CPU.

The trainable model is the inference model's math in autograd form (same blocks, same names as
the original checkpoint format) with four training-time choices that matter on two CPU cores:

* a compact vocabulary: only the token ids the data uses get rows, and the embedding is tied to
  the unembedding during training (untied, the loss stalls). The ids the model never sees keep a
  zero unembedding row in the shipped checkpoint, i.e. a logit of exactly 0; the loss counts them
  as one extra logit ``log(vocab - compact)`` so that the training objective is the full-vocabulary
  softmax the shipped model computes.
* the system message shared by a batch is run once (batch 1) and its keys and values are
  broadcast to every item, which attends to them as a prefix.
* ``torch.set_flush_denormal(True)``: tiny gradients otherwise slow every step about 3x.
* an induction circuit built into a fresh model (``DemoModel.init_copy_circuit``): copying numbers
  does not otherwise form within a CPU budget.

Near the end the weights are trained through their shipped precision (quantisation-aware: MXFP4
experts and bf16 dense weights in the forward pass, straight-through gradients), so packing loses
little. ``train()`` writes ``state.pt`` into its output directory every few minutes and resumes
from it.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gptoss_agent.model.config import ModelConfig
from gptoss_agent.model.mxfp4 import FP4_VALUES
from torch import nn

__all__ = ["DEMO_CONFIG", "DemoModel", "TrainConfig", "train"]

DEMO_CONFIG = ModelConfig(
    num_hidden_layers=4,
    num_experts=4,
    experts_per_token=2,
    vocab_size=201088,
    hidden_size=256,
    intermediate_size=256,
    head_dim=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=128,
)
"""The demo model: gpt-oss's architecture (sinks, alternating banded/full layers, MoE, YaRN) at toy size."""


# ---- fake quantisation (the shipped precision, straight-through) ---------------------------

_FP4_POS = torch.tensor(sorted({abs(v) for v in FP4_VALUES}))  # 0, .5, 1, 1.5, 2, 3, 4, 6
_FP4_MID = (_FP4_POS[1:] + _FP4_POS[:-1]) / 2


def mxfp4_round(w: torch.Tensor) -> torch.Tensor:
    """``w (..., in)`` rounded to MXFP4 (blocks of 32 along ``in``, shared power-of-two scale).

    The scale is ``2**ceil(log2(max|w| / 6))`` per block, as the packer uses; values round to the
    nearest e2m1 code.
    """
    shape = w.shape
    blocks = w.reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True).clamp(min=2.0**-126)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 6.0))).clamp(min=2.0**-127, max=2.0**127)
    x = (blocks / scale).abs()
    idx = torch.bucketize(x, _FP4_MID.to(w.device))
    q = _FP4_POS.to(w.device)[idx] * blocks.sign() * scale
    return q.reshape(shape)


def _ste(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return w + (q - w).detach()


# ---- the model --------------------------------------------------------------------------------


def _rope_tables(cfg: ModelConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """YaRN cos/sin tables ``(n, head_dim/2)`` with the attention concentration folded in."""
    d, base, factor = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    concentration = 0.1 * math.log(factor) + 1.0
    d_half = d / 2
    ctx = cfg.initial_context_length
    low = d_half * math.log(ctx / (cfg.rope_ntk_beta * 2 * math.pi)) / math.log(base)
    high = d_half * math.log(ctx / (cfg.rope_ntk_alpha * 2 * math.pi)) / math.log(base)
    ramp = (torch.arange(d_half, dtype=torch.float32) - low) / (high - low)
    mask = 1 - ramp.clamp(0, 1)
    inv_freq = (1.0 / (factor * freq)) * (1 - mask) + (1.0 / freq) * mask
    freqs = torch.arange(n, dtype=torch.float32)[:, None] * inv_freq
    return freqs.cos() * concentration, freqs.sin() * concentration


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, d); cos/sin (T, d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _rms(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


def _swiglu(x: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    x_glu, x_lin = x[..., ::2], x[..., 1::2]
    x_glu = x_glu.clamp(max=limit)
    x_lin = x_lin.clamp(min=-limit, max=limit)
    return x_glu * torch.sigmoid(alpha * x_glu) * (x_lin + 1)


class _Params(nn.ParameterDict):
    """A ParameterDict whose keys may hold dots (stored as ``__``)."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key.replace(".", "__"), value)

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.replace(".", "__"))

    def named(self) -> Iterator[tuple[str, nn.Parameter]]:
        for k, v in self.items():
            yield k.replace("__", "."), v


class DemoModel(nn.Module):
    """gpt-oss in autograd form over a compact, tied vocabulary.

    Parameters carry the original checkpoint format's names (``block.0.attn.qkv.weight``, ...),
    with ``.`` written as ``__`` (module attribute names cannot hold dots).
    """

    def __init__(self, cfg: ModelConfig, vocab: int, *, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        h, d, nq, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        e, i2, layers = cfg.num_experts, cfg.intermediate_size, cfg.num_hidden_layers

        def p(*shape: int, std: float = 0.0, mean: float = 0.0) -> nn.Parameter:
            t = torch.randn(*shape, generator=g) * std + mean if std else torch.full(shape, mean)
            return nn.Parameter(t)

        resid = 0.02 / math.sqrt(2 * layers)
        self.params = _Params()
        self.params["embedding.weight"] = p(vocab, h, std=0.02)
        for i in range(layers):
            b = f"block.{i}."
            self.params[b + "attn.norm.scale"] = p(h, mean=1.0)
            self.params[b + "attn.qkv.weight"] = p((nq + 2 * nkv) * d, h, std=0.02)
            self.params[b + "attn.qkv.bias"] = p((nq + 2 * nkv) * d)
            self.params[b + "attn.sinks"] = p(nq)
            self.params[b + "attn.out.weight"] = p(h, nq * d, std=resid)
            self.params[b + "attn.out.bias"] = p(h)
            self.params[b + "mlp.norm.scale"] = p(h, mean=1.0)
            self.params[b + "mlp.gate.weight"] = p(e, h, std=0.02)
            self.params[b + "mlp.gate.bias"] = p(e)
            self.params[b + "mlp.mlp1_weight"] = p(e, 2 * i2, h, std=0.02)
            self.params[b + "mlp.mlp1_bias"] = p(e, 2 * i2)
            self.params[b + "mlp.mlp2_weight"] = p(e, h, i2, std=resid)
            self.params[b + "mlp.mlp2_bias"] = p(e, h)
        self.params["norm.scale"] = p(h, mean=1.0)
        self.quantized = False
        """Forward through the shipped precision (MXFP4 experts, bf16 dense) with straight-through gradients."""
        self._cos, self._sin = _rope_tables(cfg, 4096)
        self.used = vocab
        """Rows of the embedding in use (the compact vocabulary's size); the others are spare."""

    def init_copy_circuit(self, look_back: float = 6.5, write: float = 0.05, match: float = 2.0, copy: float = 0.5) -> None:
        """Build an induction circuit into head 0 of the first two layers; training then refines it.

        Copying (the numbers of the question into the code, the tool's output into the answer) is
        what induction heads do: find the earlier occurrence of the current token and emit the token
        that followed it. Learnt from scratch, they appear only after a long plateau: the model
        trained 2,900 steps on the real data without them (digit loss stayed at about ``log(1110)``,
        i.e. uniform over the digit tokens). With ``P`` a random ``(head_dim, hidden)`` projection
        with orthonormal rows and ``Q`` a random ``(hidden, head_dim)`` one with orthonormal columns:

        * layer 0 looks one token back: query and key *biases* in the six fastest rotary pairs turn
          the score into ``look_back**2 * sum_j cos((i - p - 1) * w_j)`` (RoPE), largest at
          ``p = i - 1``; its value ``P`` and output ``write * Q`` add the previous token's ``P``-image
          to the residual, in ``Q``'s subspace.
        * layer 1 matches and copies: its query (``match * P``) and key (``match * Q^T``), taken in
          the rotary pairs that turn less than half a radian over 1,024 positions (content, not
          position), score high where the *previous* token equals the current one; its value ``P``
          and output ``copy * P^T`` write the attended token back, where the tied unembedding reads
          it as that token's logit.

        The scales were picked on random repeated sequences: before any training, 38% of the second
        copy's tokens get the top logit (none without the circuit). On the copy skill alone, the
        digit loss is 5.2 after 200 steps with it and 7.1 without (``log(1110)`` is 7.0)."""
        cfg = self.cfg
        d, h, nq, nkv = cfg.head_dim, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        g = torch.Generator().manual_seed(1)
        proj = torch.linalg.qr(torch.randn(h, d, generator=g))[0].T  # P
        sub = torch.linalg.qr(torch.randn(h, d, generator=g))[0]  # Q
        cos, sin = self._tables(1024)
        angle = torch.atan2(sin[1], cos[1])  # how far each rotary pair turns per position
        fast = torch.arange(6)
        slow = torch.nonzero(angle * 1024 < 0.5).flatten()
        content = torch.cat([slow, slow + d // 2])  # a pair is (j, j + d/2)
        k0, v0 = nq * d, (nq + nkv) * d  # rows of key head 0 and value head 0 in qkv
        with torch.no_grad():
            bias, w, out = (self.params[f"block.0.attn.{n}"] for n in ("qkv.bias", "qkv.weight", "out.weight"))
            bias[fast], bias[fast + d // 2] = look_back, 0.0
            bias[k0 + fast], bias[k0 + fast + d // 2] = look_back * angle[fast].cos(), look_back * angle[fast].sin()
            w[v0 : v0 + d] = proj
            out[:, :d] = write * sub
            w, out = self.params["block.1.attn.qkv.weight"], self.params["block.1.attn.out.weight"]
            w[content] = match * proj[content]
            w[k0 + content] = match * sub.T[content]
            w[v0 : v0 + d] = proj
            out[:, :d] = copy * proj.T

    def w(self, name: str) -> torch.Tensor:
        t = self.params[name]
        if not self.quantized:
            return t
        if name.endswith(("mlp1_weight", "mlp2_weight")):
            return _ste(t, mxfp4_round(t))
        return _ste(t, t.to(torch.bfloat16).float())

    def _tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n > self._cos.shape[0]:
            self._cos, self._sin = _rope_tables(self.cfg, max(n, 2 * self._cos.shape[0]))
        return self._cos, self._sin

    def _attention(
        self, i: int, x: torch.Tensor, start: int, prefix: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, h) at positions start..; prefix keys/values (1, P, nkv, d) at 0..P-1."""
        cfg = self.cfg
        b = f"block.{i}.attn."
        bsz, t, _ = x.shape
        d, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        qkv = F.linear(_rms(x, self.w(b + "norm.scale"), cfg.rms_norm_eps), self.w(b + "qkv.weight"), self.w(b + "qkv.bias"))
        q = qkv[..., : nq * d].view(bsz, t, nq, d)
        k = qkv[..., nq * d : (nq + nkv) * d].view(bsz, t, nkv, d)
        v = qkv[..., (nq + nkv) * d :].view(bsz, t, nkv, d)
        cos, sin = self._tables(start + t)
        q = _rotate(q, cos[start : start + t], sin[start : start + t])
        k = _rotate(k, cos[start : start + t], sin[start : start + t])
        own = (k, v)
        if prefix is not None:
            pk, pv = prefix
            if cfg.is_sliding(i):  # keys further back than the band are never seen: leave them out
                keep = max(0, cfg.sliding_window - 1)
                pk, pv = pk[:, -keep:], pv[:, -keep:]
            k = torch.cat([pk.expand(bsz, -1, -1, -1), k], dim=1)
            v = torch.cat([pv.expand(bsz, -1, -1, -1), v], dim=1)
        s = k.shape[1]
        k0 = start + t - s
        q_pos = torch.arange(start, start + t)
        k_pos = torch.arange(k0, start + t)
        visible = k_pos[None, :] <= q_pos[:, None]
        if cfg.is_sliding(i):
            visible &= q_pos[:, None] - k_pos[None, :] < cfg.sliding_window
        rep = nq // nkv
        qg = q.view(bsz, t, nkv, rep, d)
        scores = torch.einsum("btgrd,bsgd->bgrts", qg, k) / math.sqrt(d)  # (B, nkv, rep, T, S)
        scores = scores.masked_fill(~visible, -math.inf)
        sink = self.w(b + "sinks").view(1, nkv, rep, 1, 1).expand(bsz, -1, -1, t, 1)
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        out = torch.einsum("bgrts,bsgd->btgrd", weights, v).reshape(bsz, t, nq * d)
        return x + F.linear(out, self.w(b + "out.weight"), self.w(b + "out.bias")), own

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b = f"block.{i}.mlp."
        shape = x.shape
        t = _rms(x, self.w(b + "norm.scale"), cfg.rms_norm_eps).reshape(-1, shape[-1])
        logits = F.linear(t, self.w(b + "gate.weight"), self.w(b + "gate.bias"))
        top = torch.topk(logits, k=cfg.experts_per_token, dim=-1, sorted=True)
        gates = torch.softmax(top.values, dim=-1)
        w1, b1 = self.w(b + "mlp1_weight"), self.w(b + "mlp1_bias")
        w2, b2 = self.w(b + "mlp2_weight"), self.w(b + "mlp2_bias")
        out = torch.zeros_like(t)
        for e in range(cfg.num_experts):
            rows, slot = torch.where(top.indices == e)
            if rows.numel() == 0:
                continue
            hdn = _swiglu(F.linear(t[rows], w1[e], b1[e]), cfg.swiglu_alpha, cfg.swiglu_limit)
            out = out.index_add(0, rows, F.linear(hdn, w2[e], b2[e]) * gates[rows, slot, None])
        return x + out.view(shape)

    def forward(self, prefix: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, T, h)`` of ``tokens (B, T)`` that follow ``prefix (P,)``."""
        emb = self.w("embedding.weight")
        x = emb[tokens]
        p = 0 if prefix is None else prefix.shape[0]
        xp = emb[prefix][None] if prefix is not None else None
        for i in range(self.cfg.num_hidden_layers):
            kv = None
            if xp is not None:
                xp, kv = self._attention(i, xp, 0, None)
                if i < self.cfg.num_hidden_layers - 1:
                    xp = self._mlp(i, xp)
            x, _ = self._attention(i, x, p, kv)
            x = self._mlp(i, x)
        return _rms(x, self.w("norm.scale"), self.cfg.rms_norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the rows in use, plus a last column standing for every other id at once:
        ``log(count)``, since each of them has logit 0 in the shipped checkpoint."""
        out = F.linear(hidden, self.w("embedding.weight")[: self.used])
        null = torch.full((*out.shape[:-1], 1), math.log(self.cfg.vocab_size - self.used), dtype=out.dtype)
        return torch.cat([out, null], dim=-1)


# ---- batches --------------------------------------------------------------------------------


@dataclass
class Batch:
    prefix: torch.Tensor  # (P,) compact ids of the shared system message
    tokens: torch.Tensor  # (B, T) compact ids after the prefix
    targets: torch.Tensor  # (B, T) next compact id, -100 where no loss
    weights: torch.Tensor  # (B, T) loss weight of each target (digits count more)
    digits: torch.Tensor  # (B, T) True where the target is a digit run (what must be copied)
    lookups: torch.Tensor  # (B, T) True where the target begins a copy (``lookup_targets``)
    skill: str
    n_items: int


class Vocab:
    """The compact vocabulary: o200k ids in order of first use, up to ``capacity`` rows.

    New ids met in the data take the next free row (the model is built with ``capacity`` rows);
    only the rows in use take part in the softmax.
    """

    def __init__(self, ids: Sequence[int] = (), capacity: int = 8192):
        self.capacity = capacity
        self.ids: list[int] = []
        self.index: dict[int, int] = {}
        self.add(ids)

    def add(self, ids: Sequence[int]) -> int:
        added = 0
        for t in ids:
            if t not in self.index:
                if len(self.ids) >= self.capacity:
                    raise OverflowError("the compact vocabulary is full")
                self.index[t] = len(self.ids)
                self.ids.append(t)
                added += 1
        return added

    def map(self, ids: Sequence[int]) -> list[int]:
        """Compact indices of ``ids``, taking new rows for new ids (OverflowError when full)."""
        index = self.index
        if not all(t in index for t in ids):
            self.add(ids)
        return [index[t] for t in ids]


def _digit_ids(enc: Any) -> frozenset[int]:
    """The ids of digit runs (``7``, ``42``, ``974``): copying them exactly is the hard part."""
    ids = set()
    for n in range(1000):
        for s in (str(n), f"{n:02d}", f"{n:03d}"):
            ids.update(enc.encode_ordinary(s))
    return frozenset(ids)


def lookup_targets(context: Sequence[int], target: Sequence[int], start: int = 0) -> list[bool]:
    """Which ``target`` tokens begin a copy: tokens found in ``context[start:]`` (the conversation
    after the shared system message) that do not follow there the token they follow in the
    sequence. Finding them needs attention by content; what follows them, induction."""
    seen = set(context[start:])
    pairs = set(itertools.pairwise(context))
    seq = [*context[-1:], *target]
    return [t in seen and (prev, t) not in pairs for prev, t in itertools.pairwise(seq)]


def base_token_ids(enc: Any) -> list[int]:
    """Ids every vocabulary gets: harmony's specials, all 1-3 digit numbers, printable ASCII."""
    from gptoss_agent.agent import harmony

    ids = [harmony.START, harmony.END, harmony.MESSAGE, harmony.CHANNEL, harmony.CONSTRAIN, harmony.RETURN, harmony.CALL]
    for n in range(1000):
        for s in {str(n), f"{n:02d}", f"{n:03d}"}:
            ids += enc.encode_ordinary(s)
    for c in range(32, 127):
        ids += enc.encode_ordinary(chr(c))
        ids += enc.encode_ordinary(" " + chr(c))
    return ids


# ---- training ------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """How to train (``python -m gptoss_agent.model.demo train --help`` sets these)."""

    minutes: float = 60.0
    """Wall-clock budget; the cosine schedule is laid over it."""
    seed: int = 0
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    batch_tokens: int = 3072
    """Tokens per batch after the shared prefix (items x padded length)."""
    max_items: int = 48
    capacity: int = 8192
    """Rows of the compact vocabulary."""
    digit_weight: float = 3.0
    """Loss weight of digit tokens in the targets (numbers must be copied exactly)."""
    lookup_weight: float = 8.0
    """Loss weight of the first token of a copy (see ``lookup_targets``): induction copies the rest
    of a number or name once its first token is right, and that first token is what fails (a
    47-minute run predicted 100% of the digit tokens that continue a copied number, 17% of the
    first digits of the tool's output in the answer)."""
    skills: tuple[str, ...] = ("python",)
    weights: dict[str, float] = field(default_factory=lambda: {"python": 1.0})
    """Share of batches per skill."""
    first_skills: tuple[str, ...] = ()
    """Skills trained alone (by ``weights``) for the first ``first_fraction`` of the budget, before
    all of ``skills`` mix: copying numbers forms there (``copy``, ``python``) and far more slowly
    beside the long function and browser prompts. The learning-rate schedule runs on across."""
    first_fraction: float = 0.0
    qat_from: float = 0.85
    """Fraction of the budget after which the forward pass uses the shipped precision."""
    save_minutes: float = 3.0
    threads: int = 2
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``DEMO_CONFIG`` fields."""
    copy_circuit: bool = True
    """Start a fresh model with an induction circuit built in (``DemoModel.init_copy_circuit``)."""
    max_steps: int | None = None
    """Stop after this many steps (tests), whatever the clock says."""
    log_every: int = 25
    """Steps between log lines (each gives the mean loss per skill since the last, ``digits``: the
    mean unweighted loss on digit targets, which stays near ``log(1110)`` until the model copies,
    and ``lookups``: the same on the first tokens of copies)."""


def _batches(gen: Any, vocab: Vocab, cfg: TrainConfig, rng: random.Random, stats: dict[str, int],
             first: Callable[[], bool] = lambda: False) -> Iterator[Batch]:  # fmt: skip
    """Batches of one skill each, drawn by ``cfg.weights`` from ``cfg.first_skills`` while ``first()``
    holds, from ``cfg.skills`` after."""
    from gptoss_agent.agent.harmony import render_conversation

    digits = _digit_ids(gen.enc)

    def drawn(names: Sequence[str]) -> tuple[list[str], list[float]]:
        chosen = [s for s in names if cfg.weights.get(s, 0) > 0]
        return chosen, [cfg.weights[s] for s in chosen]

    early, late = drawn(cfg.first_skills), drawn(cfg.skills)
    while True:
        skills, weights = early if early[0] and first() else late
        skill = rng.choices(skills, weights=weights)[0]
        setting = gen.setting(rng, skill)
        items: list[Any] = []
        longest = 0
        prefix_ids: list[int] | None = None
        tries = 0
        while tries < 4 * cfg.max_items:
            tries += 1
            try:
                conv = gen.conversation(rng, setting, skill)
            except RuntimeError:  # the in-process browser failed (a worker timed out on a loaded machine)
                stats["failed"] = stats.get("failed", 0) + 1
                continue
            if prefix_ids is None:
                has_fn = len(conv.head) > 2
                prefix_ids = render_conversation(conv.head[:1], gen.enc) if not has_fn else None
                if prefix_ids is None:  # the system text mentions function tools: render with the developer
                    full = render_conversation(conv.head[:2], gen.enc)
                    dev_len = len(render_conversation(conv.head[1:2], gen.enc))
                    prefix_ids = full[: len(full) - dev_len]
            new = conv.items(gen.enc)
            try:
                for it in new:
                    if it.context[: len(prefix_ids)] != prefix_ids:
                        raise AssertionError("a conversation does not start with its setting's system message")
                    vocab.map(it.context)
                    vocab.map(it.target)
            except OverflowError:
                stats["oov"] = stats.get("oov", 0) + 1
                continue
            n = max(len(it.context) + len(it.target) - len(prefix_ids) for it in new)
            if items and max(longest, n) * (len(items) + len(new)) > cfg.batch_tokens:
                break
            items += new
            longest = max(longest, n)
            if len(items) >= cfg.max_items:
                break
        if prefix_ids is None or not items:
            continue
        p = len(prefix_ids)
        t = longest
        tokens = torch.zeros(len(items), t, dtype=torch.long)
        targets = torch.full((len(items), t), -100, dtype=torch.long)
        loss_w = torch.zeros(len(items), t)
        is_digit = torch.zeros(len(items), t, dtype=torch.bool)
        is_lookup = torch.zeros(len(items), t, dtype=torch.bool)
        for j, it in enumerate(items):
            seq = vocab.map(it.context[p:] + it.target)
            tokens[j, : len(seq)] = torch.tensor(seq)
            c = len(it.context) - p
            # position c-1 (the prompt's last token) predicts target[0], ...
            targets[j, c - 1 : c - 1 + len(it.target)] = torch.tensor(vocab.map(it.target))
            is_digit[j, c - 1 : c - 1 + len(it.target)] = torch.tensor([t in digits for t in it.target])
            is_lookup[j, c - 1 : c - 1 + len(it.target)] = torch.tensor(lookup_targets(it.context, it.target, p))
        loss_w[targets != -100] = 1.0
        loss_w[is_digit] = cfg.digit_weight
        loss_w[is_lookup] = cfg.lookup_weight
        yield Batch(torch.tensor(vocab.map(prefix_ids)), tokens, targets, loss_w, is_digit, is_lookup, skill, len(items))


def train(out: str | Path, cfg: TrainConfig, *, log: Callable[[str], None] = print) -> Path:
    """Train (or resume from ``out/state.pt``) for ``cfg.minutes``; returns the state file.

    While it runs, torch uses ``cfg.threads`` threads and flushes denormals (3x faster steps);
    both are put back afterwards, since the rest of the process (the MXFP4 kernels' exact decoding
    of tiny exponents, for one) needs denormals kept."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    try:
        return _train(out, cfg, log)
    finally:
        torch.set_flush_denormal(False)  # torch's default
        torch.set_num_threads(threads)


def _train(out: str | Path, cfg: TrainConfig, log: Callable[[str], None]) -> Path:
    from gptoss_agent.model.demo.data import Generator
    from gptoss_agent.model.tokenizer import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.pt"
    enc = load_tokenizer()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = Generator(enc, split="train", skills=(*cfg.skills, *cfg.first_skills))
    model_cfg = replace(DEMO_CONFIG, **{"layer_types": (), **cfg.model}) if cfg.model else DEMO_CONFIG
    t_vocab = time.perf_counter()
    step, elapsed_before = 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        vocab = Vocab(state["vocab"], capacity=state["capacity"])
        raw = state["model_config"]
        model_cfg = ModelConfig(**{**raw, "layer_types": tuple(raw["layer_types"])})
        model = DemoModel(model_cfg, vocab.capacity, seed=cfg.seed)
        model.load_state_dict(state["model"])
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        opt.load_state_dict(state["optimizer"])
        old = state["train_config"]
        same = old["minutes"] == cfg.minutes and tuple(old["skills"]) == tuple(cfg.skills)
        step = state["step"] if same else 0
        elapsed_before = state["elapsed"] if same else 0.0
        log(f"resumed from {state_path} (step {state['step']}), schedule {'continues' if same else 'restarts'}")
    else:
        vocab = Vocab(base_token_ids(enc), capacity=cfg.capacity)
        model = DemoModel(model_cfg, vocab.capacity, seed=cfg.seed)
        if cfg.copy_circuit:
            model.init_copy_circuit()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    log(f"vocab {len(vocab.ids)} ids ({time.perf_counter() - t_vocab:.1f} s), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, config {json.dumps(asdict(cfg), default=str)}")  # fmt: skip
    stats: dict[str, int] = {}
    rng = random.Random(cfg.seed * 1_000_003 + step)  # a resumed run does not replay its first batches
    budget = cfg.minutes * 60.0
    started = time.monotonic() - elapsed_before
    batches = _batches(gen, vocab, cfg, rng, stats, lambda: time.monotonic() - started < cfg.first_fraction * budget)
    last_save = time.monotonic()
    window: dict[str, list[float]] = {}
    t_data = t_step = 0.0
    # the unweighted loss of the digit targets and of the lookup targets since the last log line
    sums = {"digits": [0.0, 0], "lookups": [0.0, 0]}
    stop = {"now": False}

    def _stop(signum: int, frame: Any) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    while True:
        elapsed = time.monotonic() - started
        frac = min(1.0, elapsed / budget)
        if frac >= 1.0 or stop["now"] or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        lr = cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        model.quantized = frac >= cfg.qat_from
        t0 = time.perf_counter()
        batch = next(batches)
        model.used = len(vocab.ids)
        t1 = time.perf_counter()
        hidden = model(batch.prefix, batch.tokens)
        mask = batch.targets != -100
        logits = model.logits(hidden[mask])
        token_loss = F.cross_entropy(logits, batch.targets[mask], reduction="none")
        w = batch.weights[mask]
        loss = (token_loss * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t2 = time.perf_counter()
        t_data += t1 - t0
        t_step += t2 - t1
        step += 1
        window.setdefault(batch.skill, []).append(loss.item())
        for name, which in (("digits", batch.digits[mask]), ("lookups", batch.lookups[mask])):
            sums[name][0] += token_loss.detach()[which].sum().item()
            sums[name][1] += int(which.sum())
        if step % cfg.log_every == 0:
            losses = " ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in sorted(window.items()))
            copy = " ".join(f"{k} {v / n:.4f}" if n else f"{k} -" for k, (v, n) in sums.items())
            log(f"step {step} {elapsed / 60:.1f} min lr {lr:.2e} loss {losses} {copy} "
                f"data {t_data / cfg.log_every:.2f}s step {t_step / cfg.log_every:.2f}s items {batch.n_items}x{batch.tokens.shape[1]}"
                f"+{batch.prefix.shape[0]} qat {int(model.quantized)} oov {stats.get('oov', 0)}")  # fmt: skip
            window.clear()
            t_data = t_step = 0.0
            sums = {k: [0.0, 0] for k in sums}
        if time.monotonic() - last_save > cfg.save_minutes * 60:
            _save(state_path, model, opt, vocab, model_cfg, step, time.monotonic() - started, cfg)
            last_save = time.monotonic()
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    _save(state_path, model, opt, vocab, model_cfg, step, time.monotonic() - started, cfg)
    log(f"{'stopped' if stop['now'] else 'done'}: {step} steps in {(time.monotonic() - started) / 60:.1f} min -> {state_path}")
    return state_path


def _save(path: Path, model: DemoModel, opt: torch.optim.Optimizer, vocab: Vocab, model_cfg: ModelConfig,
          step: int, elapsed: float, cfg: TrainConfig) -> None:  # fmt: skip
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "vocab": vocab.ids,
        "capacity": vocab.capacity,
        "model_config": asdict(model_cfg),
        "step": step,
        "elapsed": elapsed,
        "train_config": asdict(cfg),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
