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
    blocks = torch.randint(0, 256, (100, 4, 16), dtype=torch.uint8)  # 100 rows: a ragged last panel of 16
    scales = torch.randint(118, 124, (100, 4), dtype=torch.uint8)
    bias = torch.randn(100)
    w = dequantize(blocks, scales)
    for t in (1, 3, 15, 16, 23, 70):  # from 16 rows on: the packed GEMM (six-token tiles, a ragged last one)
        x = torch.randn(t, 128)
        got = kernels.mxfp4_linear(x, blocks, scales, bias)
        assert got is not None
        torch.testing.assert_close(got, x @ w.T + bias, atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_kernel_matches_matmul(monkeypatch, with_bias):
    monkeypatch.setattr(kernels, "SCRATCH_ELEMENTS", 30 * 96)  # BLAS path in blocks of 30 rows
    monkeypatch.setenv("GPTOSS_KERNELS_BF16", "0")  # float32 activations (test_kernels_isa: bf16 ones)
    w = torch.randn(80, 96).bfloat16()
    bias = torch.randn(80) if with_bias else None
    for t in (1, 2, 9, 70):  # 70 rows: widened a block at a time, then BLAS
        x = torch.randn(t, 96)
        got = kernels.linear(x, w, bias)
        assert got is not None
        want = x @ w.float().T + (bias if bias is not None else 0)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_kernel_unpacking_matches_reference_on_every_byte_and_exponent():
    """Each path unpacks exactly: multiplying by rows of the identity reads the weights back.

    Exponents stop at 250: from 251 on, 6 * 2**(e - 127) overflows float32, and inf * 0 is NaN.
    """
    blocks = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(251, 16, 16).contiguous()
    scales = torch.arange(251, dtype=torch.uint8)[:, None].expand(251, 16).contiguous()
    want = dequantize(blocks, scales).T  # (512, 251)
    eye = torch.eye(512)
    for rows in (eye[:1], eye[300:301], eye[:8], eye[100:115], eye):  # one row, tiles of 8, the GEMM
        got = kernels.mxfp4_linear(rows, blocks, scales, None)
        assert got is not None
        first = int(rows.argmax(dim=1)[0])
        assert torch.equal(got, want[first : first + rows.shape[0]])


def _int8_case(out: int, groups: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random bytes (every nibble), exponents 100..154, and x whose groups span 2**-8..2**8."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (out, groups, 16), dtype=torch.uint8, generator=gen)
    blocks.view(-1, 16)[: 16 * groups] = torch.arange(256, dtype=torch.uint8).view(16, 16).repeat(groups, 1)
    scales = torch.randint(100, 155, (out, groups), dtype=torch.uint8, generator=gen)
    group_size = torch.ldexp(torch.ones(groups), torch.randint(-8, 9, (groups,), generator=gen))
    x = (torch.randn(groups, 32, generator=gen) * group_size[:, None]).view(1, -1)
    x[0, :7] = 0.0  # a partly zero group
    if groups > 2:
        x[0, 32:64] = 0.0  # an all-zero group
    return blocks, scales, torch.randn(out, generator=gen), x


def _quantized(x: torch.Tensor) -> torch.Tensor:
    """x rounded as the int8 path does: per 32 values, to multiples of max|x| / 127 (ties to even)."""
    groups = x.double().view(-1, 32)
    step = groups.abs().amax(dim=1, keepdim=True) / 127
    return (torch.round(groups / torch.where(step > 0, step, 1)) * step).view(1, -1)


@needs_kernels
@pytest.mark.parametrize("groups", [1, 2, 3, 5, 6, 90])  # odd counts: the single-group tail
def test_int8_kernel_is_the_exact_product_of_quantized_activations(groups):
    blocks, scales, bias, x = _int8_case(64, groups, seed=groups)
    w = dequantize(blocks, scales).double()
    got = kernels.mxfp4_linear(x, blocks, scales, bias, int8=True)
    assert got is not None
    expected = _quantized(x) @ w.T + bias.double()
    assert (got.double() - expected).norm() <= 1e-6 * expected.norm()
    exact = x.double() @ w.T + bias.double()
    # vs the float reference, the error is int8 rounding only: stated bound 1e-2 of the output norm
    assert (got.double() - exact).norm() <= 1e-2 * exact.norm()


@needs_kernels
def test_int8_is_opt_in_and_switched_off_by_the_environment(monkeypatch):
    blocks, scales, bias, x = _int8_case(96, 4, seed=7)
    exact = dequantize(blocks, scales).double()
    reference = (x.double() @ exact.T + bias.double()).float()
    got = kernels.mxfp4_linear(x, blocks, scales, bias)  # the default stays exact
    assert got is not None
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    approx = kernels.mxfp4_linear(x, blocks, scales, bias, int8=True)
    assert approx is not None and not torch.equal(approx, reference)
    batch = kernels.mxfp4_linear(x.repeat(3, 1), blocks, scales, bias, int8=True)  # decode rows of 3 sequences
    assert batch is not None and all(torch.equal(row[None], approx) for row in batch)
    monkeypatch.setenv("GPTOSS_KERNELS_INT8", "0")
    assert not kernels.int8_enabled()
    off = kernels.mxfp4_linear(x, blocks, scales, bias, int8=True)
    assert off is not None
    torch.testing.assert_close(off, reference, atol=1e-5, rtol=1e-5)


def _forked_product(blocks: torch.Tensor, scales: torch.Tensor, x: torch.Tensor, conn) -> None:
    got = kernels.mxfp4_linear(x, blocks, scales, None)
    conn.send(None if got is None else got.tolist())  # plain data: tensors would go by shared memory


@needs_kernels
def test_thread_pool_survives_fork_and_concurrent_callers(monkeypatch):
    """Workers are started once; a forked child (no workers) and two Python threads still get answers."""
    import multiprocessing
    import threading

    monkeypatch.setattr(kernels, "threads", 2)
    blocks = torch.randint(0, 256, (512, 4, 16), dtype=torch.uint8)
    scales = torch.randint(118, 124, (512, 4), dtype=torch.uint8)
    x = torch.randn(3, 128)
    want = x @ dequantize(blocks, scales).T
    torch.testing.assert_close(kernels.mxfp4_linear(x, blocks, scales, None), want)  # pool started

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_forked_product, args=(blocks, scales, x, child), daemon=True)
    proc.start()
    assert parent.poll(30), "the forked child hung on the kernel's thread pool"
    torch.testing.assert_close(torch.tensor(parent.recv()), want)
    proc.join(10)

    results: list[torch.Tensor | None] = [None] * 4

    def call(i: int) -> None:
        for _ in range(20):
            results[i] = kernels.mxfp4_linear(x, blocks, scales, None)

    workers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    for r in results:
        torch.testing.assert_close(r, want)
