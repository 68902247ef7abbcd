"""Fast CPU paths for decoding (filled in by the compiled kernels; ``None`` means "not handled")."""

from __future__ import annotations

import torch

__all__ = ["linear", "mxfp4_linear"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x @ weight.T + bias`` for float32 ``x`` and bf16 ``weight`` on the CPU, or None."""
    return None


def mxfp4_linear(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor | None:
    """``x @ W.T + bias`` with ``W`` packed MXFP4 ``(out, G, 16)`` / ``(out, G)``, or None."""
    return None
