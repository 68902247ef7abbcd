"""The KV cache: keys and values of the tokens already run, per layer.

Full-attention layers keep every position. Sliding-window layers keep what a future query can
see (the last ``window`` positions) plus a small ``margin``, so that a next prompt which rewrites
the last few tokens (an agent turn replacing its stop token) can still roll back and reuse the
cache; they hold up to twice that and drop the excess in one copy when full, not one row a step.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache", "LayerCache"]


class LayerCache:
    """One layer's keys and values ``(positions, n_kv_heads, head_dim)``, with their start position."""

    def __init__(
        self, n_kv_heads: int, head_dim: int, *, keep: int | None, dtype: torch.dtype, device: torch.device
    ):
        self.keep = keep
        """Positions a sliding layer keeps at least (window + margin); None keeps everything."""
        self.start = 0
        """Absolute position of row 0."""
        self.length = 0
        """Rows in use."""
        self._k = torch.empty(0, n_kv_heads, head_dim, dtype=dtype, device=device)
        self._v = torch.empty_like(self._k)

    @property
    def end(self) -> int:
        """One past the last cached position."""
        return self.start + self.length

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Append ``k, v (T, n_kv, d)`` at position ``end``; return the cached keys/values and their start.

        The rows returned include every position the new queries may see (a sliding layer may
        return older ones too: attention masks by position).
        """
        t = k.shape[0]
        if self.keep is not None and self.length > self.keep and self.length + t > self._k.shape[0]:
            self._compact()
        need = self.length + t
        if need > self._k.shape[0]:
            cap = max(need, 2 * self._k.shape[0], 256) if self.keep is None else max(need, 2 * self.keep)
            grown_k = self._k.new_empty(cap, *self._k.shape[1:])
            grown_v = self._v.new_empty(cap, *self._v.shape[1:])
            grown_k[: self.length] = self._k[: self.length]
            grown_v[: self.length] = self._v[: self.length]
            self._k, self._v = grown_k, grown_v
        self._k[self.length : need] = k
        self._v[self.length : need] = v
        self.length = need
        return self._k[:need], self._v[:need], self.start

    def _compact(self) -> None:
        """Drop all but the last ``keep`` rows: once per ``keep`` steps or so, when the buffer is full."""
        assert self.keep is not None
        drop = self.length - self.keep
        self._k[: self.keep] = self._k[drop : self.length].clone()
        self._v[: self.keep] = self._v[drop : self.length].clone()
        self.start += drop
        self.length = self.keep

    def truncate(self, end: int, window: int | None) -> bool:
        """Forget positions ``>= end``; False when what a query at ``end`` must see was already dropped."""
        if end > self.end:
            return False
        needed_from = 0 if window is None else max(0, end - window + 1)
        if end > 0 and self.start > needed_from:
            return False
        self.length = max(0, end - self.start)
        return True


class KVCache:
    """The cache of a whole model: one ``LayerCache`` per layer, all at the same length."""

    def __init__(self, layers: list[LayerCache], windows: list[int | None]):
        self.layers = layers
        self.windows = windows

    @property
    def length(self) -> int:
        """Positions cached (the absolute position of the next token)."""
        return self.layers[0].end if self.layers else 0

    def truncate(self, end: int) -> bool:
        """Roll every layer back to ``end`` positions; False (cache unchanged in meaning) if impossible."""
        if end > self.length or any(
            end > 0 and layer.start > (0 if w is None else max(0, end - w + 1))
            for layer, w in zip(self.layers, self.windows, strict=True)
        ):
            return False
        for layer, w in zip(self.layers, self.windows, strict=True):
            layer.truncate(end, w)
        return True

    def reset(self) -> None:
        for layer in self.layers:
            layer.start = 0
            layer.length = 0

    def nbytes(self) -> int:
        return sum(lc._k.numel() * lc._k.element_size() * 2 for lc in self.layers)
