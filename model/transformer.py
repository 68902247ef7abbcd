"""The gpt-oss transformer, in forward order.

    tokens -> embedding -> N x [ AttentionBlock -> MLPBlock ] -> RMSNorm -> unembedding -> logits

AttentionBlock: RMSNorm, fused QKV (with bias), YaRN RoPE, grouped-query attention (64 query heads,
8 KV heads, head dim 64) with a learned sink logit per head, a 128-token band on even layers,
output projection, residual. MLPBlock: RMSNorm, router (linear with bias, top-4, softmax over the
four), per-expert clamped SwiGLU (gate and linear halves interleaved), weighted sum, residual.

Activations run in float32 on the CPU (weights may stay bf16 and are widened per use) and in the
weight dtype on CUDA; the KV cache is kept in the weight dtype. ``Transformer.forward`` without a
cache is the test oracle for the cached path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch.nn.functional as F
from gptoss_agent.model import kernels
from gptoss_agent.model.cache import KVCache, LayerCache
from gptoss_agent.model.checkpoint import Checkpoint, ExpertWeight
from gptoss_agent.model.config import ModelConfig
from gptoss_agent.model.mxfp4 import MXFP4Experts
from torch import nn

__all__ = ["AttentionBlock", "MLPBlock", "RMSNorm", "RotaryEmbedding", "Transformer"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in ``x``'s dtype; bf16 weights are read in place on the CPU."""
    if weight.dtype != x.dtype:
        fast = kernels.linear(x, weight, bias)
        if fast is not None:
            return fast
        weight = weight.to(x.dtype)
    with kernels.torch_blas():
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


class RMSNorm(nn.Module):
    def __init__(self, scale: torch.Tensor, eps: float):
        super().__init__()
        self.scale = nn.Buffer(scale.float())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = kernels.rms_norm(x, self.scale, self.eps) if x.dim() == 2 else None
        if fast is not None:
            return fast
        t = x.float()
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + self.eps)
        return (t * self.scale).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """YaRN-scaled rotary embedding (NTK-by-parts interpolation plus attention concentration)."""

    def __init__(self, config: ModelConfig, device: torch.device):
        super().__init__()
        d, base, factor = config.head_dim, config.rope_theta, config.rope_scaling_factor
        freq = base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
        if factor > 1.0:
            self.concentration = 0.1 * math.log(factor) + 1.0
            d_half = d / 2
            ctx = config.initial_context_length
            low = d_half * math.log(ctx / (config.rope_ntk_beta * 2 * math.pi)) / math.log(base)
            high = d_half * math.log(ctx / (config.rope_ntk_alpha * 2 * math.pi)) / math.log(base)
            interpolation = 1.0 / (factor * freq)
            extrapolation = 1.0 / freq
            ramp = (torch.arange(d_half, dtype=torch.float32, device=device) - low) / (high - low)
            mask = 1 - ramp.clamp(0, 1)
            self.inv_freq = interpolation * (1 - mask) + extrapolation * mask
        else:
            self.concentration = 1.0
            self.inv_freq = 1.0 / freq
        self._cos = torch.empty(0, d // 2, device=device)
        self._sin = torch.empty(0, d // 2, device=device)

    def _table(self, n: int) -> None:
        if n > self._cos.shape[0]:
            n = max(n, 2 * self._cos.shape[0], 1024)
            freqs = torch.arange(n, dtype=torch.float32, device=self.inv_freq.device)[:, None] * self.inv_freq
            self._cos = freqs.cos() * self.concentration
            self._sin = freqs.sin() * self.concentration

    def rotate_rows_(self, rows: torch.Tensor, heads: int, start: int) -> bool:
        """Rotate in place the first ``heads`` heads of each row of ``rows (T, width)`` (row ``t`` at
        position ``start + t``) with the C kernel; False where it does not run (then use ``forward``)."""
        t = rows.shape[0]
        self._table(start + t)
        return kernels.rope_rows(rows, heads, self._cos[start : start + t], self._sin[start : start + t])

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Rotate ``x (T, heads, head_dim)`` whose first row sits at position ``start``."""
        t = x.shape[0]
        self._table(start + t)
        cos = self._cos[start : start + t, None, :].to(x.dtype)
        sin = self._sin[start : start + t, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    *,
    q_start: int,
    k_start: int,
    window: int | None,
) -> torch.Tensor:
    """Causal grouped-query attention with a sink logit per head.

    q (T, n_kv, rep, d) at positions ``q_start..``; k, v (S, n_kv, d) at ``k_start..`` (the cache's
    dtype), covering every position up to the last query's; sinks (n_kv, rep). Returns
    (T, n_kv * rep * d). The CPU kernel when it is there, else ``masked_attention``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    fast = kernels.attention(q, k, v, sinks, pos0=q_start - k_start, window=window, scale=scale)
    if fast is not None:
        return fast
    k, v = k.to(q.dtype), v.to(q.dtype)
    with kernels.torch_blas():
        return masked_attention(q, k, v, sinks, q_start=q_start, k_start=k_start, window=window)


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    *,
    q_start: int,
    k_start: int,
    window: int | None,
    block_elems: int = 1 << 24,
) -> torch.Tensor:
    """``attention`` in torch ops: a masked score matrix, the sink as an extra column.

    Queries go in blocks so that the score matrix stays under ``block_elems`` entries.
    """
    t, n_kv, rep, d = q.shape
    s = k.shape[0]
    scale = 1.0 / math.sqrt(d)
    k_pos = torch.arange(k_start, k_start + s, device=q.device)
    sink = sinks.to(q.dtype)[:, :, None, None]  # (n_kv, rep, 1, 1)
    step = max(1, block_elems // max(1, n_kv * rep * s))
    outs = []
    for i in range(0, t, step):
        qb = q[i : i + step]
        tb = qb.shape[0]
        q_pos = torch.arange(q_start + i, q_start + i + tb, device=q.device)
        visible = k_pos[None, :] <= q_pos[:, None]  # (tb, S)
        if window is not None:
            visible &= q_pos[:, None] - k_pos[None, :] < window
        scores = torch.einsum("tgrd,sgd->grts", qb, k) * scale  # (n_kv, rep, tb, S)
        scores = scores.masked_fill(~visible, -math.inf)
        scores = torch.cat([scores, sink.expand(-1, -1, tb, 1)], dim=-1)
        weights = torch.softmax(scores, dim=-1)[..., :-1]
        outs.append(torch.einsum("grts,sgd->tgrd", weights, v).reshape(tb, -1))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


class AttentionBlock(nn.Module):
    def __init__(
        self, config: ModelConfig, layer: int, weights: dict[str, torch.Tensor], rope: RotaryEmbedding
    ):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.window = config.sliding_window if config.is_sliding(layer) else None
        self.norm = RMSNorm(weights["norm.scale"], config.rms_norm_eps)
        self.qkv_weight = nn.Buffer(weights["qkv.weight"])  # (n_heads*d + 2*n_kv*d, hidden)
        self.qkv_bias = nn.Buffer(weights["qkv.bias"].float())
        self.sinks = nn.Buffer(weights["sinks"].float())  # (n_heads,)
        self.out_weight = nn.Buffer(weights["out.weight"])  # (hidden, n_heads*d)
        self.out_bias = nn.Buffer(weights["out.bias"].float())
        self.rope = rope

    def forward(self, x: torch.Tensor, start: int, cache: LayerCache | None) -> torch.Tensor:
        """x (T, hidden) at positions ``start..start+T``."""
        t = x.shape[0]
        d, nq, nkv = self.head_dim, self.n_heads, self.n_kv
        qkv = linear(self.norm(x), self.qkv_weight, self.qkv_bias)
        rotated = self.rope.rotate_rows_(qkv, nq + nkv, start)  # q and k lie side by side in a row
        q = qkv[:, : nq * d].view(t, nq, d)
        k = qkv[:, nq * d : (nq + nkv) * d].view(t, nkv, d)
        v = qkv[:, (nq + nkv) * d :].view(t, nkv, d)
        if not rotated:
            q, k = self.rope(q, start), self.rope(k, start)
        if cache is not None:
            k, v, k_start = cache.extend(k, v)
        else:
            k_start = start
        q = q.view(t, nkv, nq // nkv, d)
        out = attention(
            q, k, v, self.sinks.view(nkv, nq // nkv), q_start=start, k_start=k_start, window=self.window
        )
        return x + linear(out, self.out_weight, self.out_bias)

    def forward_batch(self, x: torch.Tensor, caches: list[LayerCache]) -> torch.Tensor:
        """One new token for each of several sequences: x (B, hidden), row ``i`` continuing ``caches[i]``.

        The projections run on the whole batch (their weights are read once); RoPE and attention
        run per sequence, each over its own cache, exactly as ``forward`` does for one token.
        """
        b = x.shape[0]
        d, nq, nkv = self.head_dim, self.n_heads, self.n_kv
        qkv = linear(self.norm(x), self.qkv_weight, self.qkv_bias)
        outs = []
        for i, cache in enumerate(caches):
            start = cache.end
            row = qkv[i : i + 1]
            rotated = self.rope.rotate_rows_(row, nq + nkv, start)
            q = row[:, : nq * d].view(1, nq, d)
            k = row[:, nq * d : (nq + nkv) * d].view(1, nkv, d)
            v = row[:, (nq + nkv) * d :].view(1, nkv, d)
            if not rotated:
                q, k = self.rope(q, start), self.rope(k, start)
            ks, vs, k_start = cache.extend(k, v)
            q = q.view(1, nkv, nq // nkv, d)
            sinks = self.sinks.view(nkv, nq // nkv)
            outs.append(attention(q, ks, vs, sinks, q_start=start, k_start=k_start, window=self.window))
        out = torch.cat(outs) if b > 1 else outs[0]
        return x + linear(out, self.out_weight, self.out_bias)


SMALL_BATCH = 16
"""Up to this many tokens (a batch of decoding sequences) the MoE sums each token's experts in its
top-k order, exactly as for one token, so a sequence decodes the same alone and in a batch."""


def swiglu(x: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """Clamped SwiGLU over interleaved halves: ``glu * sigmoid(alpha * glu) * (lin + 1)``."""
    fast = kernels.swiglu(x, alpha, limit) if x.dim() == 2 else None
    if fast is not None:
        return fast
    x_glu, x_lin = x[..., ::2], x[..., 1::2]
    x_glu = x_glu.clamp(max=limit)
    x_lin = x_lin.clamp(min=-limit, max=limit)
    return x_glu * torch.sigmoid(alpha * x_glu) * (x_lin + 1)


def combine(x: torch.Tensor, parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x + sum_j weights[:, j] * parts[:, j]`` in top-k order, for ``x (T, hidden)``, ``parts
    (T, k, hidden)``, ``weights (T, k)``: the same sums for a row alone and in a batch."""
    fast = kernels.moe_combine(x, parts, weights)
    if fast is not None:
        return fast
    out = torch.zeros_like(x)
    for s in range(parts.shape[1]):
        out += parts[:, s] * weights[:, s, None]
    return x + out


def expert_linear(
    w: ExpertWeight, e: int, x: torch.Tensor, bias: torch.Tensor, *, int8: bool = False
) -> torch.Tensor:
    """Expert ``e`` of projection ``w`` applied to ``x (T, in)``, plus its bias row.

    ``int8`` lets the CPU kernel quantise each row to int8 per 32-value group (llama.cpp's trick:
    ~5e-3 relative error, two to three times the speed); never used in fp32 mode.
    """
    if isinstance(w, MXFP4Experts):
        fast = kernels.mxfp4_linear(x, w.blocks[e], w.scales[e], bias, int8=int8)
        if fast is not None:
            return fast
        return F.linear(x, w.weight(e, x.dtype), bias.to(x.dtype))
    return linear(x, w[e], bias)


def _expert_tensors(w: ExpertWeight) -> list[torch.Tensor]:
    return [w.blocks, w.scales] if isinstance(w, MXFP4Experts) else [w]


class MLPBlock(nn.Module):
    def __init__(
        self, config: ModelConfig, weights: dict[str, torch.Tensor], mlp1: ExpertWeight, mlp2: ExpertWeight
    ):
        super().__init__()
        self.top_k, self.alpha, self.limit = (
            config.experts_per_token,
            config.swiglu_alpha,
            config.swiglu_limit,
        )
        self.norm = RMSNorm(weights["norm.scale"], config.rms_norm_eps)
        self.gate_weight = nn.Buffer(weights["gate.weight"])  # (E, hidden)
        self.gate_bias = nn.Buffer(weights["gate.bias"].float())
        self.mlp1 = mlp1  # (E, 2*intermediate, hidden), gate/linear rows interleaved
        self.mlp1_bias = nn.Buffer(weights["mlp1_bias"].float())
        self.mlp2 = mlp2  # (E, hidden, intermediate)
        self.mlp2_bias = nn.Buffer(weights["mlp2_bias"].float())
        self.int8_activations = False
        """Run MXFP4 experts on int8 activations (bf16 mode on the CPU; see ``kernels.mxfp4_linear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (T, hidden)`` through the MoE: the T tokens of a prefill, or the next tokens of T
        sequences (a batch of decode steps)."""
        t = self.norm(x)
        q8 = self.int8_activations
        logits = linear(t, self.gate_weight, self.gate_bias)  # (T, E)
        chosen, expert_weights = self.route(logits, small=x.shape[0] <= SMALL_BATCH)
        if x.shape[0] == 1:  # decoding: run the k chosen experts directly
            fused = self._experts_fused(chosen[0], t) if q8 else None
            if fused is None:
                fused = torch.cat([self._expert(e, t, q8) for e in chosen[0].tolist()])
            # all k in one kernel call per projection (each as alone), summed as a batch row is
            return combine(x, fused[None], expert_weights)
        if x.shape[0] <= SMALL_BATCH:  # a batch of decoding rows: each expert once, its rows together
            parts = torch.empty(x.shape[0], self.top_k, x.shape[1], dtype=x.dtype, device=x.device)
            for e in chosen.unique().tolist():
                rows, slot = torch.where(chosen == e)
                parts[rows, slot] = self._expert(e, t[rows], q8)
            return combine(x, parts, expert_weights)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            rows, slot = torch.where(chosen == e)
            out.index_add_(0, rows, self._expert(e, t[rows], q8) * expert_weights[rows, slot, None])
        return x + out

    def route(self, logits: torch.Tensor, *, small: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k experts of each row of ``logits (T, E)`` and their softmax weights, ``(T, k)``
        each: for decode rows (``small``) the C kernel that ``decode_layer`` uses too."""
        routed = kernels.moe_route(logits, self.top_k) if small else None
        if routed is not None:
            return routed
        top = torch.topk(logits, k=self.top_k, dim=-1, sorted=True)
        return top.indices, torch.softmax(top.values.float(), dim=-1).to(logits.dtype)

    def _experts_fused(self, chosen: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """The chosen experts of one token ``t (1, hidden)`` on int8 activations: ``(k, hidden)``, row
        ``j`` bit for bit ``_expert(chosen[j], t, True)``; None where the fused kernel does not run."""
        if not (isinstance(self.mlp1, MXFP4Experts) and isinstance(self.mlp2, MXFP4Experts)):
            return None
        up = kernels.mxfp4_experts_q8(t, self.mlp1.blocks, self.mlp1.scales, self.mlp1_bias, chosen)
        if up is None:
            return None
        h = swiglu(up, self.alpha, self.limit)
        return kernels.mxfp4_experts_q8(h, self.mlp2.blocks, self.mlp2.scales, self.mlp2_bias, chosen)

    def _expert(self, e: int, t: torch.Tensor, q8: bool) -> torch.Tensor:
        """Expert ``e`` on its tokens ``t (n, hidden)``: up-project, SwiGLU, down-project."""
        h = expert_linear(self.mlp1, e, t, self.mlp1_bias[e], int8=q8)  # (n, 2*intermediate)
        h = swiglu(h, self.alpha, self.limit)  # (n, intermediate)
        return expert_linear(self.mlp2, e, h, self.mlp2_bias[e], int8=q8)  # (n, hidden)


def activation_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """float32 on the CPU (its bf16 arithmetic is slow and lossy; weights are widened per use), else ``dtype``."""
    return torch.float32 if device.type == "cpu" else dtype


class Transformer(nn.Module):
    """gpt-oss: embedding, blocks, final norm, unembedding."""

    def __init__(
        self,
        config: ModelConfig,
        embedding: torch.Tensor,
        blocks: list[tuple[AttentionBlock, MLPBlock]],
        norm: RMSNorm,
        unembedding: torch.Tensor,
        compute_dtype: torch.dtype,
    ):
        super().__init__()
        self.config = config
        self.embedding = nn.Buffer(embedding)  # (vocab, hidden)
        self.attn = nn.ModuleList([a for a, _ in blocks])
        self.mlp = nn.ModuleList([m for _, m in blocks])
        self.norm = norm
        self.unembedding = nn.Buffer(unembedding)  # (vocab, hidden)
        self.compute_dtype = compute_dtype
        self._steps = threading.local()  # each thread's ``LayerStep``s (see ``_decode_layers``)

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    def weight_tensors(self) -> Iterator[torch.Tensor]:
        """Every weight the model holds: the dense buffers, then the experts (packed when MXFP4)."""
        yield from self.buffers()
        for m in self.mlp:
            if isinstance(m, MLPBlock):
                for w in (m.mlp1, m.mlp2):
                    yield from _expert_tensors(w)

    def weight_bytes(self) -> int:
        """Bytes of weights the model holds (MXFP4 experts counted packed)."""
        return sum(t.numel() * t.element_size() for t in self.weight_tensors())

    def new_cache(self, margin: int = 128) -> KVCache:
        """An empty cache; sliding layers keep ``sliding_window + margin`` positions."""
        cfg = self.config
        windows = [cfg.sliding_window if cfg.is_sliding(i) else None for i in range(cfg.num_hidden_layers)]
        layers = [
            LayerCache(
                cfg.num_key_value_heads,
                cfg.head_dim,
                keep=None if w is None else w + margin,
                dtype=self.embedding.dtype,  # the weights' dtype: a bf16 model keeps a bf16 cache
                device=self.device,
                window=w,
            )
            for w in windows
        ]
        return KVCache(layers, windows)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
    ) -> torch.Tensor:
        """Logits (float32) for ``tokens (T,)``; with ``cache``, the tokens continue it and extend it.

        ``last_only`` computes the logits of the last position only (prefill). Torch's own small
        operations run on one thread between the kernels' calls (``kernels.torch_on_one_thread``).
        """
        start = cache.length if cache is not None else 0
        with kernels.torch_on_one_thread():
            x = self.embedding[tokens].to(self.compute_dtype)  # (T, hidden)
            if not (tokens.shape[0] == 1 and cache is not None and self._decode_layers(x, [cache])):
                for i, (attn, mlp) in enumerate(zip(self.attn, self.mlp, strict=True)):
                    x = attn(x, start, cache.layers[i] if cache is not None else None)
                    x = mlp(x)
            x = self.norm(x[-1:] if last_only else x)
            return linear(x, self.unembedding).float()

    def _decode_layers(self, x: torch.Tensor, caches: list[KVCache]) -> bool:
        """Run one decode token per sequence, ``x (B, hidden)`` (row ``i`` continuing ``caches[i]``),
        through every layer in place, one C call a layer (``kernels.decode_layer``: the same kernels
        in the same order as the Python path, bit for bit). False, with nothing touched, where that
        path does not take this model or these caches."""
        steps = self._layer_steps()
        modes = {kernels.kv_mode(c.layers[0].dtype, self.config.head_dim) for c in caches}
        b = len(caches)
        if steps is None or len(modes) != 1 or None in modes or not x.is_contiguous():
            return False
        if b * self.config.experts_per_token > kernels.DECODE_LAYER_ROWS:
            return False
        rope = cast(AttentionBlock, self.attn[0]).rope
        rope._table(max(c.length for c in caches) + 1)
        rows = (kernels.LayerRow * b)()
        for row, c in zip(rows, caches, strict=True):
            row.cos, row.sin = rope._cos[c.length].data_ptr(), rope._sin[c.length].data_ptr()
        scratch = torch.empty(kernels.decode_layer_scratch(steps[0], b))
        settings = (scratch.data_ptr(), modes.pop(), int(kernels.bf16_activations()), kernels.threads_in_use())
        for i, step in enumerate(steps):
            step.scratch, step.kv_mode, step.bf16x, step.nthreads = settings
            for row, c in zip(rows, caches, strict=True):
                row.row, keys, values = c.layers[i].claim(1)
                row.k_cache, row.v_cache = keys.data_ptr(), values.data_ptr()
            kernels.decode_layer(step, rows, x)
        return True

    def _layer_steps(self) -> list[kernels.LayerStep] | None:
        """This thread's ``LayerStep`` per layer, weights filled in, or None where ``decode_layer``
        does not take this model: bf16 dense weights, MXFP4 experts on int8 activations, float32
        activations on the CPU. The steps hold the weights' addresses: the model's tensors are
        never replaced after construction."""
        if not kernels.fused_decode_enabled():
            return None
        if not hasattr(self._steps, "steps"):
            self._steps.steps = self._build_steps()
        steps: list[kernels.LayerStep] | None = self._steps.steps
        return steps

    def _build_steps(self) -> list[kernels.LayerStep] | None:
        cfg = self.config
        if self.device.type != "cpu" or self.compute_dtype != torch.float32 or not kernels.int8_enabled():
            return None
        if cfg.hidden_size % 32 or cfg.intermediate_size % 32:  # MXFP4 and int8 groups of 32
            return None
        steps = []
        for attn, mlp in zip(self.attn, self.mlp, strict=True):
            a, m = cast(AttentionBlock, attn), cast(MLPBlock, mlp)
            experts = (m.mlp1, m.mlp2)
            dense = (a.qkv_weight, a.out_weight, m.gate_weight)
            if not m.int8_activations or not all(isinstance(w, MXFP4Experts) for w in experts):
                return None
            if not all(w.dtype == torch.bfloat16 and w.is_contiguous() for w in dense):
                return None
            mlp1, mlp2 = cast(MXFP4Experts, m.mlp1), cast(MXFP4Experts, m.mlp2)
            packed = (mlp1.blocks, mlp1.scales, mlp2.blocks, mlp2.scales)
            if not all(t.device.type == "cpu" and t.is_contiguous() for t in packed):
                return None
            steps.append(kernels.LayerStep(
                attn_norm=a.norm.scale.data_ptr(), qkv_b=a.qkv_bias.data_ptr(), sinks=a.sinks.data_ptr(),
                out_b=a.out_bias.data_ptr(), mlp_norm=m.norm.scale.data_ptr(), gate_b=m.gate_bias.data_ptr(),
                mlp1_bias=m.mlp1_bias.data_ptr(), mlp2_bias=m.mlp2_bias.data_ptr(),
                qkv_w=a.qkv_weight.data_ptr(), out_w=a.out_weight.data_ptr(), gate_w=m.gate_weight.data_ptr(),
                mlp1_blocks=mlp1.blocks.data_ptr(), mlp1_scales=mlp1.scales.data_ptr(),
                mlp2_blocks=mlp2.blocks.data_ptr(), mlp2_scales=mlp2.scales.data_ptr(),
                hidden=cfg.hidden_size, nq=a.n_heads, nkv=a.n_kv, d=a.head_dim, experts=cfg.num_experts,
                top_k=m.top_k, inter=cfg.intermediate_size, window=a.window or 0, eps=a.norm.eps,
                alpha=m.alpha, limit=m.limit, scale=1.0 / math.sqrt(a.head_dim),
            ))  # fmt: skip
        return steps or None

    @torch.inference_mode()
    def decode_batch(self, tokens: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """Logits (B, vocab) for one next token of each of B sequences: ``tokens[i]`` continues ``caches[i]``.

        Batched decoding: the dense weights (attention projections, router, unembedding) and each
        chosen expert are read once for the whole batch; only attention runs per sequence.
        """
        with kernels.torch_on_one_thread():
            x = self.embedding[tokens].to(self.compute_dtype)  # (B, hidden)
            if not self._decode_layers(x, caches):
                for i, (attn, mlp) in enumerate(zip(self.attn, self.mlp, strict=True)):
                    x = cast(AttentionBlock, attn).forward_batch(x, [c.layers[i] for c in caches])
                    x = mlp(x)
            return linear(self.norm(x), self.unembedding).float()

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: Checkpoint,
        *,
        device: torch.device,
        dtype: torch.dtype,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> Transformer:
        """Build the model over a checkpoint's tensors.

        Dense weights already in ``dtype`` on the CPU stay memory-mapped; others are converted.
        MXFP4 experts stay packed (moved to ``device``); dense experts are converted to ``dtype``.
        """
        cfg = ckpt.config
        total = cfg.num_hidden_layers + 2
        done = 0

        def step(what: str) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total, what)

        def get(name: str) -> torch.Tensor:
            t = ckpt.tensor(name)
            if t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            return t.to(device)

        def experts(layer: int, which: str) -> ExpertWeight:
            w = ckpt.experts(layer, which)
            if isinstance(w, MXFP4Experts):
                return w.to(device)
            return w.to(device=device, dtype=dtype)

        compute_dtype = activation_dtype(device, dtype)
        rope = RotaryEmbedding(cfg, device)
        embedding = get("embedding.weight")
        step("embedding")
        blocks = []
        for i in range(cfg.num_hidden_layers):
            b = f"block.{i}."
            attn_w = {k: get(b + "attn." + k) for k in ("norm.scale", "qkv.weight", "qkv.bias", "sinks")}
            attn_w |= {k: get(b + "attn." + k) for k in ("out.weight", "out.bias")}
            mlp_w = {
                k: get(b + "mlp." + k)
                for k in ("norm.scale", "gate.weight", "gate.bias", "mlp1_bias", "mlp2_bias")
            }
            attn = AttentionBlock(cfg, i, attn_w, rope)
            mlp = MLPBlock(cfg, mlp_w, experts(i, "mlp1"), experts(i, "mlp2"))
            mlp.int8_activations = dtype == torch.bfloat16 and device.type == "cpu"
            blocks.append((attn, mlp))
            step(f"layer {i}")
        norm = RMSNorm(get("norm.scale"), cfg.rms_norm_eps)
        unembedding = get("unembedding.weight")
        step("unembedding")
        return cls(cfg, embedding, blocks, norm, unembedding, compute_dtype)
