"""The fused decode-attention kernel against a plain softmax-with-sink reference."""

import math

import pytest
import torch
from gptoss_agent.model import kernels
from gptoss_agent.model.transformer import attention

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason="compiled kernels unavailable (no C compiler, or GPTOSS_KERNELS=0)"
)


def reference(q, k, v, sinks, first):
    """q (n_kv, rep, d), k/v (S, n_kv, d): softmax over [scores of keys first.., sink], sink value 0."""
    d = q.shape[-1]
    scores = torch.einsum("grd,sgd->grs", q.double(), k[first:].double()) / math.sqrt(d)
    scores = torch.cat([scores, sinks.double()[:, :, None]], dim=-1)
    w = torch.softmax(scores, dim=-1)[..., :-1]
    return torch.einsum("grs,sgd->grd", w, v[first:].double()).reshape(1, -1).float()


@needs_kernels
@pytest.mark.parametrize("rows,first", [(1, 0), (7, 0), (33, 0), (200, 72), (1000, 871), (4099, 0)])
@pytest.mark.parametrize("n_kv,rep", [(8, 8), (2, 2), (3, 12)])  # 20b/120b, tiny, two head blocks
def test_decode_kernel_matches_reference(rows, first, n_kv, rep):
    g = torch.Generator().manual_seed(rows)
    d = 64
    q = torch.randn(n_kv, rep, d, generator=g) * 3  # wide scores: the online max must rescale
    k = torch.randn(rows, n_kv, d, generator=g)
    v = torch.randn(rows, n_kv, d, generator=g)
    sinks = torch.randn(n_kv, rep, generator=g) * 4
    got = kernels.attention_decode(q, k, v, sinks, first, 1 / math.sqrt(d))
    assert got is not None
    torch.testing.assert_close(got, reference(q, k, v, sinks, first), atol=2e-6, rtol=1e-5)


@needs_kernels
def test_odd_head_dim_and_group_size_take_the_scalar_tails():
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(3, 5, 20, generator=g),
        torch.randn(45, 3, 20, generator=g),
        torch.randn(45, 3, 20, generator=g),
    )
    sinks = torch.randn(3, 5, generator=g)
    got = kernels.attention_decode(q, k, v, sinks, 4, 1 / math.sqrt(20))
    torch.testing.assert_close(got, reference(q, k, v, sinks, 4), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 128])
def test_one_query_row_sees_what_the_masked_path_sees(window):
    """attention() for one row (the kernel) equals the last row of the masked multi-row path."""
    g = torch.Generator().manual_seed(3)
    s = 300
    q = torch.randn(2, 8, 8, 64, generator=g)
    k, v = torch.randn(s, 8, 64, generator=g), torch.randn(s, 8, 64, generator=g)
    sinks = torch.randn(8, 8, generator=g)
    both = attention(q, k, v, sinks, q_start=s - 2 + 10, k_start=10, window=window)
    last = attention(q[1:], k, v, sinks, q_start=s - 1 + 10, k_start=10, window=window)
    torch.testing.assert_close(last, both[1:], atol=2e-6, rtol=1e-5)
