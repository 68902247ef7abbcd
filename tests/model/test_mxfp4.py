"""MXFP4 unpacking against a straightforward reference, on every nibble and every exponent."""

from __future__ import annotations

import math

import pytest
import torch
from gptoss_agent.model import kernels
from gptoss_agent.model.mxfp4 import FP4_VALUES, MXFP4Experts, dequantize

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def reference_value(nibble: int, exponent: int) -> float:
    """e2m1 decoded from its bits (sign, 2 exponent bits, 1 mantissa bit), times 2**(exponent - 127)."""
    sign = -1.0 if nibble & 0b1000 else 1.0
    e, m = (nibble >> 1) & 0b11, nibble & 1
    magnitude = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
    return math.ldexp(sign * magnitude, exponent - 127)


def reference_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> list[list[float]]:
    rows = []
    for r in range(blocks.shape[0]):
        row: list[float] = []
        for g in range(blocks.shape[1]):
            for byte in blocks[r, g].tolist():
                row += [
                    reference_value(byte & 0xF, int(scales[r, g])),
                    reference_value(byte >> 4, int(scales[r, g])),
                ]
        rows.append(row)
    return rows


def test_table_is_e2m1():
    assert [reference_value(n, 127) for n in range(16)] == list(FP4_VALUES)
    assert list(FP4_VALUES[:8]) == E2M1


def test_every_byte_and_every_exponent():
    # row r uses exponent r; its 16 groups hold all 256 byte values (both nibble orders)
    blocks = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(256, 16, 16).contiguous()
    scales = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 16).contiguous()
    # float64 reference, then float32's range: 6 * 2**126 and above overflow to inf, as in the engine
    expected = torch.tensor(reference_dequantize(blocks, scales), dtype=torch.float64).float()
    got = dequantize(blocks, scales, torch.float32)
    assert torch.equal(torch.signbit(got), torch.signbit(expected))  # -0.0 stays -0.0
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=False)


def test_bf16_is_exact_where_representable():
    blocks = torch.randint(0, 256, (64, 4, 16), dtype=torch.uint8)
    scales = torch.randint(100, 140, (64, 4), dtype=torch.uint8)
    assert torch.equal(dequantize(blocks, scales, torch.bfloat16).float(), dequantize(blocks, scales))


def test_expert_weight_and_shapes():
    blocks = torch.randint(0, 256, (3, 8, 2, 16), dtype=torch.uint8)
    scales = torch.randint(120, 130, (3, 8, 2), dtype=torch.uint8)
    experts = MXFP4Experts(blocks, scales)
    assert (experts.num_experts, experts.out_features, experts.in_features) == (3, 8, 64)
    assert torch.equal(experts.weight(1, torch.float32), dequantize(blocks[1], scales[1]))
    assert experts.dequantize_all(torch.float32).shape == (3, 8, 64)


needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason="compiled kernels unavailable (no C compiler, or GPTOSS_KERNELS=0)"
)


@needs_kernels
def test_fused_kernel_matches_unpacked_matmul():
    blocks = torch.randint(0, 256, (96, 4, 16), dtype=torch.uint8)
    scales = torch.randint(118, 124, (96, 4), dtype=torch.uint8)
    bias = torch.randn(96)
    w = dequantize(blocks, scales)
    for t in (1, 3, 20, 70):  # 70 rows: unpacked once, then a matmul
        x = torch.randn(t, 128)
        got = kernels.mxfp4_linear(x, blocks, scales, bias)
        assert got is not None
        torch.testing.assert_close(got, x @ w.T + bias, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_bf16_kernel_matches_matmul():
    w = torch.randn(80, 96).bfloat16()
    bias = torch.randn(80)
    for t in (1, 2):
        x = torch.randn(t, 96)
        got = kernels.linear(x, w, bias)
        assert got is not None
        torch.testing.assert_close(got, x @ w.float().T + bias, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_kernel_unpacking_matches_reference_on_every_byte_and_exponent():
    blocks = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(256, 16, 16).contiguous()
    scales = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 16).contiguous()
    got = kernels.dequantize_mxfp4(blocks, scales)
    assert got is not None
    assert torch.equal(got, dequantize(blocks, scales))
