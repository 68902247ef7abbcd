"""Every instruction-set build of the C kernels (generic C, AVX2, AVX-512 with VNNI, AMX) against the
same float64 reference, on whatever CPU runs the tests: each build this CPU can run is loaded with
``use_isa`` and checked; one it cannot run is skipped with the features it lacks (CI machines differ:
AVX2 everywhere, AVX-512/VNNI/AMX on some). Shapes are small but reach every loop's tail."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from gptoss_agent.model import kernels
from gptoss_agent.model.mxfp4 import dequantize
from gptoss_agent.model.transformer import masked_attention

EXPECTED = {
    "generic": "no AVX2",
    "avx2": "AVX2",
    "avx512": "AVX2+AVX-512+VNNI",
    "amx": "AVX2+AVX-512+VNNI+AMX",
}


@pytest.fixture(params=kernels.ISAS)
def isa(request):
    """Each instruction set in turn; the default build is back in use afterwards."""
    lacks = kernels.missing_features(request.param)
    if lacks:  # CPU features CI cannot install (each build still compiles there: test below)
        pytest.skip(f"{request.param}: this CPU lacks {', '.join(lacks)}")
    kernels.use_isa(request.param)
    yield request.param
    kernels.use_isa(None)


def _close(got: torch.Tensor | None, want: torch.Tensor, tol: float) -> None:
    assert got is not None
    err = (got.double() - want).norm() / want.norm()
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("name", kernels.ISAS)
def test_every_build_compiles_even_where_this_cpu_cannot_run_it(name, tmp_path):
    """The AMX (or AVX-512) code is at least compiled on a CI machine without those units."""
    import shutil

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    assert cc, "CI has a C compiler"
    assert kernels._compile(cc, tmp_path / f"kernels-{name}.so", name) is None
    assert (tmp_path / f"kernels-{name}.so").stat().st_size > 0


def test_the_build_has_the_instructions_it_is_named_for(isa):
    assert kernels.isa() == isa
    assert kernels.compiled_isa() == EXPECTED[isa]
    assert f"({isa}: " in kernels.describe()


@pytest.mark.parametrize("tokens", [1, 3, 4, 9])  # decode; tiles of 4 (AVX-512) and 8 (AVX2) and their tails
@pytest.mark.parametrize("inp", [96, 200, 4096])  # 64-wide steps + a 32 tail; a scalar tail; whole
def test_bf16_matvec(isa, tokens, inp, monkeypatch):
    monkeypatch.setenv("GPTOSS_KERNELS_BF16", "0")  # float32 activations (bf16 ones: the test below)
    gen = torch.Generator().manual_seed(inp + tokens)
    w = torch.randn(71, inp, generator=gen).bfloat16()  # 71: output rows in pairs and one alone
    x, bias = torch.randn(tokens, inp, generator=gen), torch.randn(71, generator=gen)
    want = x.double() @ w.double().T + bias.double()
    _close(kernels.linear(x, w, bias), want, 1e-5)  # float32 sums of up to 4096 products
    _close(kernels.linear(x, w, None), want - bias.double(), 1e-5)


@pytest.mark.parametrize("tokens", [1, 3, 16, 17, 70])  # decode rows (one weight row at a time); 4-row groups, 64-token blocks
@pytest.mark.parametrize("inp", [96, 200, 2880])  # 64-value steps + a 32 tail; a scalar tail; the 20b hidden size
def test_bf16_activations_are_the_exact_product_of_rounded_activations(isa, tokens, inp):
    """``bf16_gemv_bf16x`` (vdpbf16ps where the CPU has AVX-512 BF16; elsewhere the float32 matvec on
    the same rounded activations) against float64; ``linear`` takes it where ``bf16_activations()``."""
    gen = torch.Generator().manual_seed(inp * 7 + tokens)
    w = torch.randn(71, inp, generator=gen).bfloat16()  # 71: groups of 4 rows and a ragged one
    x, bias = torch.randn(tokens, inp, generator=gen) * 3, torch.randn(71, generator=gen)
    lib = kernels._library()
    assert lib is not None
    y = torch.empty(tokens, 71)
    lib.bf16_gemv_bf16x(*(kernels._ptr(t) for t in (w, x, bias, y)), tokens, 71, inp, 2)
    rounded = x.bfloat16().double() @ w.double().T + bias.double()
    _close(y, rounded, 1e-5)
    _close(y, x.double() @ w.double().T + bias.double(), 5e-3)  # the bf16 rounding of x itself
    if tokens <= 16 and kernels.bf16_activations():  # decode rows: each as alone (a session decodes alike in a batch)
        for t in range(tokens):
            alone = torch.empty(1, 71)
            lib.bf16_gemv_bf16x(*(kernels._ptr(v) for v in (w, x[t : t + 1].contiguous(), bias, alone)), 1, 71, inp, 2)
            assert torch.equal(alone, y[t : t + 1]), t
    got = kernels.linear(x, w, bias)
    if kernels.bf16_activations():
        assert isa in ("avx512", "amx") and torch.equal(got, y)
    else:
        _close(got, x.double() @ w.double().T + bias.double(), 1e-5)


def _mxfp4(out: int, groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (out, groups, 16), dtype=torch.uint8, generator=gen)
    blocks.view(-1, 16)[: min(16, out * groups)] = torch.arange(256, dtype=torch.uint8).view(16, 16)[
        : min(16, out * groups)
    ]  # every byte value
    scales = torch.randint(110, 140, (out, groups), dtype=torch.uint8, generator=gen)
    return blocks, scales, torch.randn(out, generator=gen)


@pytest.mark.parametrize("tokens", [1, 5, 20])  # decode, the 8-token tiles, the packed GEMM
@pytest.mark.parametrize("groups", [1, 3, 4])
def test_mxfp4_matmul(isa, tokens, groups):
    blocks, scales, bias = _mxfp4(37, groups, seed=tokens * 10 + groups)  # 37 rows: a ragged GEMM panel
    x = torch.randn(tokens, groups * 32, generator=torch.Generator().manual_seed(groups))
    want = x.double() @ dequantize(blocks, scales).double().T + bias.double()
    _close(kernels.mxfp4_linear(x, blocks, scales, bias), want, 1e-5)


def _quantized(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 path rounds it: per 32 values, to multiples of max|x| / 127 (ties to even)."""
    groups = x.double().view(-1, 32)
    step = groups.abs().amax(dim=1, keepdim=True) / 127
    return (torch.round(groups / torch.where(step > 0, step, 1)) * step).view(1, -1)


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 5, 6, 8, 9, 12, 13, 16, 20, 33, 90])  # blocks of 16, quads, pairs, tails
def test_int8_matvec_is_the_exact_product_of_quantized_activations(isa, groups):
    blocks, scales, bias = _mxfp4(40, groups, seed=groups)
    gen = torch.Generator().manual_seed(100 + groups)
    size = torch.ldexp(torch.ones(groups), torch.randint(-8, 9, (groups,), generator=gen))
    x = (torch.randn(groups, 32, generator=gen) * size[:, None]).view(1, -1)
    if groups > 2:
        x[0, 32:64] = 0.0  # an all-zero group
    w = dequantize(blocks, scales).double()
    got = kernels.mxfp4_linear(x, blocks, scales, bias, int8=True)
    _close(got, _quantized(x) @ w.T + bias.double(), 1e-6)  # integer sums: exact up to float rounding
    _close(got, x.double() @ w.T + bias.double(), 1e-2)  # the int8 rounding itself, vs fp32


@pytest.mark.parametrize("tokens", [2, 4, 15])  # a batch of decoding sequences, up to the GEMM's threshold
@pytest.mark.parametrize("groups", [3, 9, 90])
def test_int8_rows_of_a_batch_each_equal_their_own_matvec(isa, tokens, groups):
    """Batched decode: each row is quantized by itself and comes out bit for bit as it does alone,
    so a sequence decodes the same in a batch of sessions as by itself."""
    blocks, scales, bias = _mxfp4(300, groups, seed=groups + tokens)  # 300 rows: split over threads
    x = torch.randn(tokens, groups * 32, generator=torch.Generator().manual_seed(tokens)) * 3
    got = kernels.mxfp4_linear(x, blocks, scales, bias, int8=True)
    assert got is not None and got.shape == (tokens, 300)
    for t in range(tokens):
        alone = kernels.mxfp4_linear(x[t : t + 1], blocks, scales, bias, int8=True)
        assert torch.equal(got[t : t + 1], alone), t
        _close(got[t : t + 1], _quantized(x[t : t + 1]) @ dequantize(blocks, scales).double().T + bias.double(), 1e-6)


@pytest.mark.parametrize("groups", [3, 90])
def test_a_tokens_experts_in_one_call_equal_each_alone(isa, groups):
    """Decode: the k experts of a token through one kernel call (mlp1: one input for all; mlp2: one
    row each), bit for bit the per-expert int8 matvec."""
    gen = torch.Generator().manual_seed(groups)
    blocks = torch.randint(0, 256, (6, 70, groups, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(115, 135, (6, 70, groups), dtype=torch.uint8, generator=gen)
    bias = torch.randn(6, 70, generator=gen)
    chosen = torch.tensor([4, 0, 5, 2])
    shared = torch.randn(1, groups * 32, generator=gen)
    rows = torch.randn(4, groups * 32, generator=gen)
    for x in (shared, rows):
        got = kernels.mxfp4_experts_q8(x, blocks, scales, bias, chosen)
        assert got is not None and got.shape == (4, 70)
        for j, e in enumerate(chosen.tolist()):
            alone = kernels.mxfp4_linear(x[j % x.shape[0]][None], blocks[e], scales[e], bias[e], int8=True)
            assert torch.equal(got[j : j + 1], alone), (x.shape, j)


@pytest.mark.parametrize("tokens", [16, 23, 64])  # the GEMM's threshold, ragged tiles of 4 tokens, a prefill
@pytest.mark.parametrize(("out", "groups"), [(40, 1), (300, 3), (64, 9), (33, 90)])  # ragged 32-row panels
def test_int8_prefill_is_the_exact_product_of_quantized_activations(isa, tokens, out, groups):
    """Prefill with int8 activations: the VNNI GEMM, or in other builds the matvec 16 rows at a time
    (``mxfp4_linear`` takes it only with VNNI; elsewhere prefill stays exact). Each row is quantized
    by itself and comes out bit for bit the same whatever rows surround it."""
    blocks, scales, bias = _mxfp4(out, groups, seed=out + groups + tokens)
    gen = torch.Generator().manual_seed(tokens + groups)
    size = torch.ldexp(torch.ones(tokens, 1), torch.randint(-6, 7, (tokens, 1), generator=gen))
    x = torch.randn(tokens, groups * 32, generator=gen) * size
    x[1, :32] = 0.0  # an all-zero group
    w = dequantize(blocks, scales).double()
    exact = x.double() @ w.T + bias.double()
    quantized = torch.cat([_quantized(x[t : t + 1]) for t in range(tokens)]) @ w.T + bias.double()
    lib = kernels._library()
    assert lib is not None
    y = torch.empty(tokens, out)
    lib.mxfp4_gemm_q8(*(kernels._ptr(t) for t in (blocks, scales, x, bias, y)), tokens, out, groups, 2)
    got = kernels.mxfp4_linear(x, blocks, scales, bias, int8=True)
    assert got is not None and got.shape == (tokens, out)
    if "VNNI" in kernels.compiled_isa():
        assert torch.equal(got, y)
    else:
        _close(got, exact, 1e-5)
    errors = []
    for t in range(tokens):  # rows differ in size by up to 2^12: each against its own norm
        _close(y[t : t + 1], quantized[t : t + 1], 1e-6)
        errors.append(((y[t].double() - exact[t]).norm() / exact[t].norm()).item())
    assert sum(errors) / tokens <= 1e-2  # the int8 rounding itself (one group of 32 alone can reach 2%)
    later = kernels.mxfp4_linear(x[tokens - 16 :], blocks, scales, bias, int8=True)  # other neighbours
    assert later is not None and torch.equal(later, got[tokens - 16 :])


@pytest.mark.parametrize("cache", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "s", "window"), [(1, 40, None), (6, 45, 16), (2, 97, None)])
@pytest.mark.parametrize(("n_kv", "rep"), [(2, 3), (1, 9)])  # a group's heads in units of 8, and a ragged one
@pytest.mark.parametrize("bf16_products", ["0", "1"])
def test_attention(isa, cache, t, s, window, n_kv, rep, bf16_products, monkeypatch):
    """Float32 products are exact to 1e-5; with a bf16 cache where bf16_activations() (AVX-512 BF16),
    the query and the probabilities are rounded to bf16: the error of the cache's own rounding."""
    monkeypatch.setenv("GPTOSS_KERNELS_BF16", bf16_products)
    gen = torch.Generator().manual_seed(s + rep)
    d = 64
    q = torch.randn(t, n_kv, rep, d, generator=gen) * 2
    k, v = (torch.randn(s, n_kv, d, generator=gen).to(cache) for _ in range(2))
    sinks = torch.randn(n_kv, rep, generator=gen)
    pos0 = s - t
    got = kernels.attention(q, k, v, sinks, pos0=pos0, window=window, scale=d**-0.5)
    want = masked_attention(
        q.double(), k.double(), v.double(), sinks.double(), q_start=pos0, k_start=0, window=window
    )
    rounded = cache == torch.bfloat16 and kernels.bf16_activations()
    _close(got, want.reshape(t, -1), 6e-3 if rounded else 1e-5)
    if rounded:  # the query's rounding is most of it: against a reference on the rounded query, closer
        q16 = q.to(torch.bfloat16).double()
        near = masked_attention(q16, k.double(), v.double(), sinks.double(), q_start=pos0, k_start=0, window=window)
        _close(got, near.reshape(t, -1), 2e-3)
        assert bf16_products == "1" and isa in ("avx512", "amx")


def test_a_forced_instruction_set_is_used_or_refused_with_what_the_cpu_lacks(tmp_path):
    """GPTOSS_KERNELS_ISA: a set this CPU runs is the one loaded; one it lacks is refused in one
    sentence naming the missing features (an error under GPTOSS_REQUIRE_KERNELS=1)."""
    lacking = next((n for n in kernels.ISAS if kernels._missing(n)), "sse9")
    probe = "from gptoss_agent.model import kernels; print(kernels.available()); print(kernels.describe())"
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPTOSS_KERNEL")}
    for name, require in (("avx2" if "avx2" in kernels.supported_isas() else "generic", "1"), (lacking, "0")):
        env = {**base, "GPTOSS_KERNELS_ISA": name, "GPTOSS_REQUIRE_KERNELS": require}
        env["GPTOSS_KERNEL_CACHE"] = os.environ.get("GPTOSS_KERNEL_CACHE", str(tmp_path))
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        if require == "1":
            assert done.stdout.startswith("True") and f"({name}: {EXPECTED[name]})" in done.stdout
        else:
            assert done.stdout.startswith("False") and kernels._missing(lacking) in done.stdout
            assert f"GPTOSS_KERNELS_ISA={lacking}" in done.stderr  # the warning, once
    with pytest.raises(ValueError, match=r"lacks|unknown"):
        kernels.use_isa(lacking)


@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("n", [7, 2880])  # a tail only; the 20b width
def test_the_small_steps_between_the_products(isa, t, n):
    """RMSNorm, RoPE, SwiGLU and the MoE's weighted sum, each against float64 formulas."""
    gen = torch.Generator().manual_seed(n + t)
    x = torch.randn(t, n, generator=gen) * 3
    scale = torch.randn(n, generator=gen)
    want = x.double() / (x.double().pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * scale.double()
    _close(kernels.rms_norm(x, scale, 1e-5), want, 1e-6)

    h = torch.randn(t, 2 * n, generator=gen) * 4  # beyond the clamp (7) on both sides
    g, lin = h.double()[:, ::2].clamp(max=7.0), h.double()[:, 1::2].clamp(-7.0, 7.0)
    _close(kernels.swiglu(h, 1.702, 7.0), g * torch.sigmoid(1.702 * g) * (lin + 1), 1e-6)

    k = 4
    parts, w = torch.randn(t, k, n, generator=gen), torch.softmax(torch.randn(t, k, generator=gen), -1)
    want = x.double() + (parts.double() * w.double()[:, :, None]).sum(1)
    _close(kernels.moe_combine(x, parts, w), want, 1e-6)

    heads, d = 3, 64
    rows = torch.randn(t, heads * d + 5, generator=gen)  # rows wider than the rotated heads
    angle = torch.rand(t, d // 2, generator=gen) * 6
    cos, sin = angle.cos(), angle.sin()
    a, b = rows.double()[:, : heads * d].view(t, heads, d).chunk(2, -1)
    c, s = cos.double()[:, None], sin.double()[:, None]
    want = torch.cat([torch.cat((a * c - b * s, b * c + a * s), -1).reshape(t, -1), rows.double()[:, heads * d :]], 1)
    assert kernels.rope_rows(rows, heads, cos, sin)
    _close(rows, want, 1e-6)
