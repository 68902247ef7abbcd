"""The attention kernel (online softmax, one query row at a time) against the masked torch path."""

import pytest
import torch
from gptoss_agent.model import kernels
from gptoss_agent.model.transformer import attention, masked_attention

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason="compiled kernels unavailable (no C compiler, or GPTOSS_KERNELS=0)"
)


def inputs(t: int, s: int, n_kv: int, rep: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(t, n_kv, rep, d, generator=g) * 3  # wide scores: the online max must rescale
    k = torch.randn(s, n_kv, d, generator=g)
    v = torch.randn(s, n_kv, d, generator=g)
    sinks = torch.randn(n_kv, rep, generator=g) * 4
    return q, k, v, sinks


def reference(q, k, v, sinks, *, q_start, k_start, window):
    """The masked torch path in float64."""
    args = (q.double(), k.double(), v.double(), sinks.double())
    return masked_attention(*args, q_start=q_start, k_start=k_start, window=window).float()


@needs_kernels
@pytest.mark.parametrize("rows", [1, 7, 33, 200, 1000, 4099])
@pytest.mark.parametrize("window", [None, 128])
@pytest.mark.parametrize("n_kv,rep", [(8, 8), (2, 2), (3, 12)])  # 20b/120b, tiny, two head blocks
def test_one_decoding_row(rows, window, n_kv, rep):
    q, k, v, sinks = inputs(1, rows, n_kv, rep, 64, rows)
    where = {"q_start": 50 + rows - 1, "k_start": 50, "window": window}  # the cache starts at position 50
    got = kernels.attention(q, k, v, sinks, pos0=rows - 1, window=window, scale=1 / 8)
    assert got is not None
    torch.testing.assert_close(got, reference(q, k, v, sinks, **where), atol=2e-6, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("t,s,k_start", [(37, 37, 0), (300, 300, 0), (40, 290, 100), (5, 9, 3)])
@pytest.mark.parametrize("window", [None, 128, 4])
@pytest.mark.parametrize("d", [64, 20])  # 20: the plain-C path for other head sizes
def test_many_rows_causal_and_windowed(t, s, k_start, window, d):
    """Prefill: each query sees the keys up to its own position (within the window), never later ones."""
    q, k, v, sinks = inputs(t, s, 2, 5, d, t + s)
    q_start = k_start + s - t  # the chunk's own keys are the last t rows
    got = attention(q, k, v, sinks, q_start=q_start, k_start=k_start, window=window)
    want = reference(q, k, v, sinks, q_start=q_start, k_start=k_start, window=window)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@needs_kernels
def test_queries_need_their_own_keys():
    q, k, v, sinks = inputs(3, 2, 1, 1, 64, 0)
    with pytest.raises(ValueError, match="need keys"):
        kernels.attention(q, k, v, sinks, pos0=0, window=None, scale=1.0)


@needs_kernels
@pytest.mark.parametrize("d", [64, 20])  # 64: read as bf16 in place; 20: widened first
def test_a_bf16_cache_reads_as_its_float_values(d, monkeypatch):
    """Exact with float32 products (bf16 ones, where the CPU has them: tests/model/test_kernels_isa.py)."""
    monkeypatch.setenv("GPTOSS_KERNELS_BF16", "0")
    q, k, v, sinks = inputs(9, 300, 2, 8, d, 5)
    k, v = k.bfloat16(), v.bfloat16()
    where = {"q_start": 291, "k_start": 0, "window": 128}
    got = attention(q, k, v, sinks, **where)
    want = reference(q, k.float(), v.float(), sinks, **where)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
