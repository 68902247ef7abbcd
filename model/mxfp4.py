"""MXFP4: the 4-bit format of gpt-oss's MoE weights, kept packed and unpacked per expert on demand.

A weight matrix ``W`` of shape ``(out, in)`` is stored as

* ``blocks``: uint8 ``(out, in/32, 16)``: 32 FP4 (e2m1) values per block, two per byte, the
  low nibble first;
* ``scales``: uint8 ``(out, in/32)``: one shared power of two per block, an exponent with bias 127.

so ``W[o, 32*g + 2*j]   = FP4[blocks[o, g, j] & 0xF] * 2**(scales[o, g] - 127)`` and
``W[o, 32*g + 2*j+1] = FP4[blocks[o, g, j] >> 4]  * 2**(scales[o, g] - 127)``.
Expert tensors add a leading expert axis. The packed form is 4.25 bits per weight; the engine
keeps it in memory and unpacks only the experts a step routes to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FP4_VALUES", "MXFP4Experts", "dequantize"]

FP4_VALUES = (
    +0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)  # fmt: skip
"""The 16 e2m1 values, indexed by nibble (bit 3 is the sign)."""


def _byte_table(device: torch.device) -> torch.Tensor:
    """(256, 2) float32: both nibbles of every byte, doubled so that they are small integers."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=device) * 2
    b = torch.arange(256, device=device)
    return torch.stack([lut[b & 0xF], lut[b >> 4]], dim=-1)


def _scale_table(device: torch.device) -> torch.Tensor:
    """(256,) float32: ``2**(s - 128)``, the block scale with the doubling of the byte table undone.

    Halving the scale instead of the value keeps every exponent finite (``2**128`` is not), so the
    product equals ``ldexp(value, s - 127)`` for every nibble and every exponent.
    """
    return torch.ldexp(torch.ones(256, device=device), torch.arange(256, device=device) - 128)


_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _TABLES:
        _TABLES[device] = (_byte_table(device), _scale_table(device))
    return _TABLES[device]


def dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unpack MXFP4 ``blocks (..., G, 16)`` and ``scales (..., G)`` into ``(..., G*32)`` of ``dtype``."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(
            f"MXFP4 shapes do not match: blocks {tuple(blocks.shape)}, scales {tuple(scales.shape)}"
        )
    byte_table, scale_table = _tables(blocks.device)
    values = byte_table[blocks.long()]  # (..., G, 16, 2)
    values = values.flatten(-2) * scale_table[scales.long()].unsqueeze(-1)  # (..., G, 32)
    return values.flatten(-2).to(dtype)


@dataclass
class MXFP4Experts:
    """One MoE projection for all experts, packed: ``blocks (E, out, G, 16)``, ``scales (E, out, G)``."""

    blocks: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self) -> None:
        if self.blocks.dim() != 4 or self.blocks.shape[:-1] != self.scales.shape:
            raise ValueError(
                f"MXFP4 expert shapes do not match: blocks {tuple(self.blocks.shape)}, scales {tuple(self.scales.shape)}"
            )

    @property
    def num_experts(self) -> int:
        return self.blocks.shape[0]

    @property
    def out_features(self) -> int:
        return self.blocks.shape[1]

    @property
    def in_features(self) -> int:
        return self.blocks.shape[2] * 32

    def weight(self, expert: int, dtype: torch.dtype) -> torch.Tensor:
        """Expert ``expert``'s weight, unpacked: ``(out, in)``."""
        return dequantize(self.blocks[expert], self.scales[expert], dtype)

    def dequantize_all(self, dtype: torch.dtype) -> torch.Tensor:
        """Every expert unpacked: ``(E, out, in)`` (what a plain bf16 checkpoint stores, transposed)."""
        return torch.stack([self.weight(e, dtype) for e in range(self.num_experts)])

    def to(self, device: torch.device) -> MXFP4Experts:
        return MXFP4Experts(self.blocks.to(device), self.scales.to(device))
