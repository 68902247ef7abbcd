"""The KV cache: keys and values of the tokens already run, per layer.

Full-attention layers keep every position. Sliding-window layers keep what a future query can
see (the last ``window`` positions) plus a small ``margin``, so that a next prompt which rewrites
the last few tokens (an agent turn replacing its stop token) can still roll back and reuse the
cache; they hold up to twice that and drop the excess in one copy when full, not one row a step.

Rolling a sliding layer back further needs the rows it dropped. The cache keeps those around
*anchors* (positions where a later prompt is likely to branch off: where a generation began,
where a message starts): when rows ``[a - window + 1, a + after)`` of an anchor ``a`` are about to
be dropped they are saved as a snapshot piece, so that the cache can be rolled back to any
position in ``[a, a + after]``. For gpt-oss-20b in bf16 an anchor costs 12 sliding layers x 159
rows x 2 KiB = 3.9 MB at most (less where anchors are closer than a window); ``max_snapshot_rows``
bounds a layer's pieces: the oldest go first, those around a *strong* anchor (where a generation
began: where a new turn that drops the last one's reasoning branches off) last.
"""

from __future__ import annotations

import bisect

import torch

__all__ = ["KVCache", "LayerCache"]

Piece = tuple[int, torch.Tensor, torch.Tensor]
"""Saved rows of a sliding layer: (first position, keys, values)."""


class LayerCache:
    """One layer's keys and values ``(positions, n_kv_heads, head_dim)``, with their start position."""

    def __init__(
        self,
        n_kv_heads: int,
        head_dim: int,
        *,
        keep: int | None,
        dtype: torch.dtype,
        device: torch.device,
        window: int | None = None,
    ):
        self.keep = keep
        """Positions a sliding layer keeps at least (window + margin); None keeps everything."""
        self.window = window
        """The attention window of a sliding layer (None: full attention)."""
        self.start = 0
        """Absolute position of row 0."""
        self.length = 0
        """Rows in use."""
        self.anchors: list[int] = []
        """Sorted positions whose surrounding rows are saved before they are dropped (see the module)."""
        self.strong: set[int] = set()
        """Anchors whose pieces are forgotten last."""
        self.after = 32
        """Positions after an anchor that stay restorable."""
        self.pieces: list[Piece] = []
        """Saved rows older than ``start``, in order, disjoint."""
        self.max_snapshot_rows = 4096
        """Rows ``pieces`` may hold; beyond it the oldest are forgotten."""
        self._k = torch.empty(0, n_kv_heads, head_dim, dtype=dtype, device=device)
        self._v = torch.empty_like(self._k)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the keys and values are kept in."""
        return self._k.dtype

    @property
    def end(self) -> int:
        """One past the last cached position."""
        return self.start + self.length

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Append ``k, v (T, n_kv, d)`` at position ``end``; return the cached keys/values and their start.

        The rows returned include every position the new queries may see (a sliding layer may
        return older ones too: attention masks by position).
        """
        row, keys, values = self.claim(k.shape[0])
        need = row + k.shape[0]
        keys[row:need] = k
        values[row:need] = v
        return keys[:need], values[:need], self.start

    def claim(self, t: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Make room for ``t`` rows at position ``end`` and count them in: ``(row, keys, values)``, the
        buffers (``(capacity, n_kv, d)``) and the first of the rows, which the caller then fills."""
        if self.keep is not None and self.length > self.keep and self.length + t > self._k.shape[0]:
            self._compact()
        row, need = self.length, self.length + t
        if need > self._k.shape[0]:
            cap = max(need, 2 * self._k.shape[0], 256) if self.keep is None else max(need, 2 * self.keep)
            self._grow(cap)
        self.length = need
        return row, self._k, self._v

    def _grow(self, cap: int) -> None:
        grown_k = self._k.new_empty(cap, *self._k.shape[1:])
        grown_v = self._v.new_empty(cap, *self._v.shape[1:])
        grown_k[: self.length] = self._k[: self.length]
        grown_v[: self.length] = self._v[: self.length]
        self._k, self._v = grown_k, grown_v

    def _compact(self) -> None:
        """Drop all but the last ``keep`` rows: once per ``keep`` steps or so, when the buffer is full."""
        assert self.keep is not None
        drop = self.length - self.keep
        self._save(self.start, self.start + drop)
        self._k[: self.keep] = self._k[drop : self.length].clone()
        self._v[: self.keep] = self._v[drop : self.length].clone()
        self.start += drop
        self.length = self.keep

    def _protected(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of positions ``[lo, hi)`` that some anchor needs, merged, in order."""
        if self.window is None:
            return []
        before, out = self.window - 1, list[tuple[int, int]]()
        i = bisect.bisect_left(self.anchors, lo - self.after)
        for a in self.anchors[i:]:
            a0, a1 = max(lo, a - before), min(hi, a + self.after)
            if a0 >= hi:
                break
            if a0 >= a1:
                continue
            if out and a0 <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], a1))
            else:
                out.append((a0, a1))
        return out

    def _save(self, lo: int, hi: int) -> None:
        """Keep copies of the anchored rows among live positions ``[lo, hi)`` (about to be dropped)."""
        for a, b in self._protected(lo, hi):
            r0, r1 = a - self.start, b - self.start
            self.pieces.append((a, self._k[r0:r1].clone(), self._v[r0:r1].clone()))
        excess = sum(p[1].shape[0] for p in self.pieces) - self.max_snapshot_rows
        while excess > 0 and self.pieces:
            weak = (i for i, (p, k, _) in enumerate(self.pieces) if not self._holds_strong(p, p + k.shape[0]))
            excess -= self.pieces.pop(next(weak, 0))[1].shape[0]

    def _holds_strong(self, lo: int, hi: int) -> bool:
        before = (self.window or 1) - 1
        return any(a - before < hi and lo < a + self.after for a in self.strong)

    def runs(self) -> list[tuple[int, int]]:
        """Contiguous position ranges ``[a, b)`` this layer holds (saved pieces, then the live rows)."""
        out: list[tuple[int, int]] = []
        spans = [(p, p + k.shape[0]) for p, k, _ in self.pieces]
        if self.length:
            spans.append((self.start, self.end))
        for a, b in spans:
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def restorable(self, end: int) -> bool:
        """Whether the layer can be rolled back to ``end`` (it holds every row a query at ``end`` sees)."""
        if end == 0:
            return True
        lo = 0 if self.window is None else max(0, end - self.window + 1)
        return any(a <= lo and end <= b for a, b in self.runs())

    def _rows(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions ``[lo, hi)``, gathered from pieces and live rows (held)."""
        ks, vs, pos = [], [], lo
        spans = [*self.pieces, (self.start, self._k[: self.length], self._v[: self.length])]
        for p, k, v in spans:
            if pos >= hi:
                break
            if p <= pos < p + k.shape[0]:
                take = min(hi, p + k.shape[0]) - pos
                ks.append(k[pos - p : pos - p + take])
                vs.append(v[pos - p : pos - p + take])
                pos += take
        assert pos == hi, f"positions {lo}..{hi} are not all held"
        return torch.cat(ks), torch.cat(vs)

    def truncate(self, end: int, window: int | None = None) -> bool:
        """Forget positions ``>= end``; False (and unchanged) when a query at ``end`` would miss rows."""
        if window is not None:
            self.window = window
        if not self.restorable(end):
            return False
        if end == 0:
            self.clear()
            return True
        lo = 0 if self.window is None else max(0, end - self.window + 1)
        if self.start > lo:  # roll back into saved rows: they become the live ones again
            k, v = self._rows(lo, end)
            if self._k.shape[0] < k.shape[0]:
                self._k = self._k.new_empty(max(k.shape[0], 2 * (self.keep or 0)), *self._k.shape[1:])
                self._v = torch.empty_like(self._k)
            self._k[: k.shape[0]] = k
            self._v[: v.shape[0]] = v
            self.start = lo
        self.length = end - self.start
        cut = self.start  # saved rows stay only below the live ones
        self.pieces = [(p, k[: cut - p], v[: cut - p]) for p, k, v in self.pieces if p < cut]
        del self.anchors[bisect.bisect_left(self.anchors, end + 1) :]
        self.strong.difference_update([a for a in self.strong if a > end])
        return True

    def clear(self) -> None:
        """Forget every position (buffers stay allocated)."""
        self.start = self.length = 0
        self.pieces = []
        self.anchors.clear()
        self.strong.clear()

    def release(self) -> None:
        """Forget every position and free the buffers."""
        self.clear()
        self._k = self._k.new_empty(0, *self._k.shape[1:])
        self._v = torch.empty_like(self._k)

    def copy_prefix(self, other: LayerCache, end: int) -> None:
        """Hold what ``other`` holds for positions ``< end`` (``other.restorable(end)`` must be true)."""
        self.clear()
        if end == 0:
            return
        lo = 0 if self.window is None else max(0, end - self.window + 1)
        k, v = other._rows(lo, end)
        if self._k.shape[0] < k.shape[0]:
            cap = max(k.shape[0], 2 * (self.keep or 0), 256)
            self._k = other._k.new_empty(cap, *other._k.shape[1:])
            self._v = torch.empty_like(self._k)
        self._k[: k.shape[0]] = k
        self._v[: v.shape[0]] = v
        self.start, self.length = lo, end - lo
        # saved pieces are never written in place: the copy shares them
        self.pieces = [(p, pk[: lo - p], pv[: lo - p]) for p, pk, pv in other.pieces if p < lo]

    def nbytes(self) -> int:
        """Bytes held: the buffers plus the saved pieces."""
        held = self._k.numel() + sum(k.numel() for _, k, _ in self.pieces)
        return 2 * held * self._k.element_size()

    def snapshot_bytes(self) -> int:
        """Bytes of the saved pieces alone."""
        return 2 * sum(k.numel() for _, k, _ in self.pieces) * self._k.element_size()


class KVCache:
    """The cache of a whole model: one ``LayerCache`` per layer, all at the same length."""

    def __init__(self, layers: list[LayerCache], windows: list[int | None]):
        self.layers = layers
        self.windows = windows
        self.anchors: list[int] = []
        """Positions whose sliding-window rows are kept restorable (shared by every layer)."""
        self.strong: set[int] = set()
        """Anchors whose snapshots are forgotten last (where generations began)."""
        for layer, w in zip(layers, windows, strict=True):
            layer.window = w
            layer.anchors = self.anchors
            layer.strong = self.strong

    @property
    def length(self) -> int:
        """Positions cached (the absolute position of the next token)."""
        return self.layers[0].end if self.layers else 0

    def anchor(self, position: int, *, strong: bool = False) -> None:
        """Keep the cache restorable to ``position`` (and a few positions after it); a ``strong``
        anchor's snapshot is forgotten last when ``max_snapshot_rows`` is reached."""
        if strong:
            self.strong.add(position)
        i = bisect.bisect_left(self.anchors, position)
        if i == len(self.anchors) or self.anchors[i] != position:
            self.anchors.insert(i, position)

    def restorable(self, end: int) -> bool:
        """Whether ``truncate(end)`` would succeed."""
        return end <= self.length and all(layer.restorable(end) for layer in self.layers)

    def best_restorable(self, end: int) -> int:
        """The largest position ``<= end`` the cache can be rolled back to (0 at worst)."""
        end = min(end, self.length)
        if self.restorable(end):
            return end
        best = 0
        for layer in self.layers:
            if layer.window is None:
                continue
            for a, b in layer.runs():
                e = min(b, end)
                if e >= (a + layer.window - 1 if a > 0 else 0) and e > best and self.restorable(e):
                    best = e
        return best

    @torch.inference_mode()
    def truncate(self, end: int) -> bool:
        """Roll every layer back to ``end`` positions; False (cache unchanged) if impossible."""
        if not self.restorable(end):
            return False
        for layer in self.layers:
            layer.truncate(end)
        return True

    @torch.inference_mode()
    def copy_prefix(self, other: KVCache, end: int) -> None:
        """Hold what ``other`` holds for positions ``< end`` (``other.restorable(end)`` must be true)."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.copy_prefix(theirs, end)
        self.anchors[:] = [a for a in other.anchors if a <= end]
        self.strong.update(a for a in other.strong if a <= end)

    def reset(self) -> None:
        for layer in self.layers:
            layer.clear()

    def release(self) -> None:
        """Forget everything and free the memory (an evicted session)."""
        for layer in self.layers:
            layer.release()

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def snapshot_bytes(self) -> int:
        """Bytes the sliding layers spend on saved rows around anchors."""
        return sum(layer.snapshot_bytes() for layer in self.layers)
