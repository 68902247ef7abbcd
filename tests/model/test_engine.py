"""LocalEngine: cached decode, prefix reuse, chunked prefill, sampling, stop tokens, limits."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from gptoss_agent.model import Engine, LocalEngine, Sampling, load_engine
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

VOCAB = 1024
GREEDY = Sampling(temperature=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = replace(PRESETS["tiny"].with_layers(3), vocab_size=VOCAB)
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "hf", cfg, format="hf")


@pytest.fixture
def engine(ckpt) -> LocalEngine:
    return LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="fp32")


def prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g).tolist()


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert "3 layers" in engine.summary() and "hf-mxfp4" in engine.summary()


def test_bf16_weights_compute_like_fp32(ckpt, engine, monkeypatch):
    # the checkpoint's weights are bf16, so widening them is exact: only summation order differs
    # (with int8 and bf16 activations off; test_int8_decoding_stays_close covers them)
    monkeypatch.setenv("GPTOSS_KERNELS_INT8", "0")
    monkeypatch.setenv("GPTOSS_KERNELS_BF16", "0")
    bf16 = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="bf16")
    ids = prompt(40, seed=9)
    torch.testing.assert_close(
        bf16.model(torch.tensor(ids)), engine.model(torch.tensor(ids)), atol=1e-3, rtol=0
    )
    out = list(bf16.generate(ids, sampling=GREEDY, max_tokens=6))
    assert out == list(engine.generate(ids, sampling=GREEDY, max_tokens=6))


def test_the_cuda_arithmetic_on_the_cpu(ckpt, engine, monkeypatch):
    """On CUDA activations are bf16 and no CPU kernel runs (torch ops, MXFP4 unpacked per expert):
    the same path, forced here on the CPU, stays close to fp32 and decodes like its own full pass."""
    from gptoss_agent.model import transformer

    monkeypatch.setattr(transformer, "activation_dtype", lambda device, dtype: dtype)
    bf16 = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="bf16")
    assert bf16.model.compute_dtype == torch.bfloat16
    ids = prompt(150, seed=4)  # past the 128-token window
    full, exact = bf16.model(torch.tensor(ids)), engine.model(torch.tensor(ids))
    # bf16 rounding may flip a token's choice of expert (as in the reference implementation):
    # most positions agree closely, a few may not
    close = torch.nn.functional.cosine_similarity(full, exact, dim=-1) > 0.999
    assert close.float().mean().item() > 0.9
    bf16.prefill(ids[:-3])
    steps = torch.stack([bf16.decode_one(ids[i]) for i in range(len(ids) - 3, len(ids))])
    agree = torch.nn.functional.cosine_similarity(steps, full[-3:], dim=-1) > 0.999
    assert agree.sum().item() >= 2
    assert len(list(bf16.generate(ids, sampling=GREEDY, max_tokens=4))) == 4


def test_int8_decoding_stays_close(ckpt, engine):
    # bf16 mode on the CPU decodes MXFP4 experts with int8 activations: close to fp32, not equal
    bf16 = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="bf16")
    ids = prompt(40, seed=9)
    for e in (bf16, engine):
        e.reset()
        e.prefill(ids[:-1])
    quantised, exact = bf16.decode_one(ids[-1]), engine.decode_one(ids[-1])
    scale = exact.abs().max().item()
    assert (quantised - exact).abs().max().item() < 0.05 * scale
    assert torch.nn.functional.cosine_similarity(quantised, exact, dim=0).item() > 0.999


def test_cached_decode_equals_full_recompute(engine):
    ids = prompt(150)  # the cache crosses the 128-token window while decoding
    out = list(engine.generate(ids, sampling=GREEDY, max_tokens=12))
    assert len(out) == 12
    full = engine.model(torch.tensor(ids + out[:-1]))
    assert full[len(ids) - 1 :].argmax(-1).tolist() == out
    # logits, not only argmax: decode step by step against the full forward pass
    engine.reset()
    engine.prefill(ids)
    for i, tok in enumerate(out[:-1]):
        step = engine.decode_one(tok)
        torch.testing.assert_close(step, full[len(ids) + i], atol=1e-4, rtol=1e-4)


def test_chunked_prefill_equals_one_shot(ckpt):
    ids = prompt(300)
    one = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="fp32")
    one.prefill_chunk = 1024
    chunked = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="fp32")
    chunked.prefill_chunk = 37
    a, b = one.prefill(ids), chunked.prefill(ids)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # and the caches agree: the next decode step gives the same logits
    torch.testing.assert_close(one.decode_one(5), chunked.decode_one(5), atol=1e-4, rtol=1e-4)


def test_prefix_reuse_equals_cold_run(engine, ckpt):
    first = prompt(200, seed=1)
    turn1 = list(engine.generate(first, sampling=GREEDY, max_tokens=5))
    assert engine.last_stats.reused_tokens == 0 and engine.last_stats.prefilled_tokens == 200
    second = first + turn1 + prompt(40, seed=2)  # the next turn extends the last one
    warm = list(engine.generate(second, sampling=GREEDY, max_tokens=8))
    stats = engine.last_stats
    assert stats.prompt_tokens == len(second)
    assert stats.reused_tokens == 204  # the prompt plus the generated tokens that were run
    assert stats.prefilled_tokens == len(second) - 204
    cold_engine = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="fp32")
    cold = list(cold_engine.generate(second, sampling=GREEDY, max_tokens=8))
    assert warm == cold
    assert cold_engine.last_stats.reused_tokens == 0


def test_prefix_reuse_rolls_back_a_rewritten_tail(engine):
    base = prompt(180, seed=3)
    list(engine.generate(base, sampling=GREEDY, max_tokens=4))
    edited = [*base[:-3], 7, 8, 9, 10]  # the last three tokens rewritten
    warm = list(engine.generate(edited, sampling=GREEDY, max_tokens=6))
    assert engine.last_stats.reused_tokens == 177
    engine.reset()
    assert warm == list(engine.generate(edited, sampling=GREEDY, max_tokens=6))


def test_identical_prompt_reprefills_only_its_last_token(engine):
    ids = prompt(64, seed=4)
    a = list(engine.generate(ids, sampling=GREEDY, max_tokens=3))
    b = list(engine.generate(ids, sampling=GREEDY, max_tokens=3))
    assert a == b and engine.last_stats.prefilled_tokens == 1


def test_stop_tokens_and_max_tokens(engine):
    ids = prompt(20, seed=5)
    free = list(engine.generate(ids, sampling=GREEDY, max_tokens=10))
    stop_at = free[3]
    first = free.index(stop_at)
    stopped = list(engine.generate(ids, sampling=GREEDY, max_tokens=10, stop={stop_at}))
    assert stopped == free[: first + 1]
    assert list(engine.generate(ids, sampling=GREEDY, max_tokens=0)) == []
    assert engine.last_stats.generated_tokens == 0


def test_seeded_sampling_is_reproducible_and_top_p_narrows(engine):
    ids = prompt(30, seed=6)
    s = Sampling(temperature=1.0, seed=123)
    a = list(engine.generate(ids, sampling=s, max_tokens=8))
    b = list(engine.generate(ids, sampling=s, max_tokens=8))
    assert a == b
    c = list(engine.generate(ids, sampling=Sampling(temperature=1.0, seed=124), max_tokens=8))
    assert c != a
    # top_p that keeps one token is greedy
    greedy = list(engine.generate(ids, sampling=GREEDY, max_tokens=8))
    assert (
        list(engine.generate(ids, sampling=Sampling(temperature=1.0, top_p=1e-6, seed=1), max_tokens=8))
        == greedy
    )


def test_an_abandoned_stream_does_not_block_the_next_call(engine):
    ids = prompt(50, seed=8)
    cold = list(engine.generate(ids, sampling=GREEDY, max_tokens=10))
    engine.reset()
    first = engine.generate(ids, sampling=GREEDY, max_tokens=10)
    a = [next(first), next(first)]
    b = list(engine.generate([*ids, *a], sampling=GREEDY, max_tokens=3))
    # the unfinished stream keeps its session; the new call starts from a copy of its prefix
    assert engine.last_stats.reused_tokens == 51  # the prompt and the first token, which was run
    assert engine.last_stats.reuse_shortfall is None
    assert a + list(first) == cold  # and the old stream still finishes correctly
    engine.reset()
    assert b == list(engine.generate([*ids, *a], sampling=GREEDY, max_tokens=3))


def test_a_newer_call_on_a_session_takes_its_cache_over(engine):
    session = engine.session()
    ids = prompt(50, seed=8)
    first = session.generate(ids, sampling=GREEDY, max_tokens=10)
    a = [next(first), next(first)]
    b = list(session.generate([*ids, *a], sampling=GREEDY, max_tokens=3))
    assert session.last_stats.reused_tokens == 51
    assert list(first) == []  # the old stream ends instead of corrupting the cache
    engine.reset()
    assert b == list(engine.generate([*ids, *a], sampling=GREEDY, max_tokens=3))


def test_bad_prompts_raise(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate([])
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([VOCAB + 5])


def test_load_engine_dispatches_on_urls(ckpt):
    assert isinstance(load_engine(ckpt, device="cpu"), LocalEngine)
    remote = load_engine("http://127.0.0.1:9")
    assert type(remote).__name__ == "RemoteEngine"


def test_load_engine_progress_callback(ckpt):
    seen: list[tuple[int, int, str]] = []
    load_engine(ckpt, device="cpu", progress=lambda d, t, w: seen.append((d, t, w)))
    assert seen[-1][0] == seen[-1][1] == 3 + 2
    assert [w for _, _, w in seen] == ["embedding", "layer 0", "layer 1", "layer 2", "unembedding"]


def test_a_forward_keeps_torch_on_one_thread_but_its_products(engine, monkeypatch):
    # torch's OpenMP team, woken by every small op between two kernel calls, spun against the
    # kernels' own pool: a 512-token prefill of the 20b shape took 2.6 s instead of 1.75 s
    from gptoss_agent.model import kernels, transformer

    assert kernels.available(), kernels.describe()
    seen: dict[str, set[int]] = {"norm": set(), "blas": set()}
    real_linear, real_norm = transformer.F.linear, transformer.RMSNorm.forward

    def linear(*args, **kwargs):
        seen["blas"].add(torch.get_num_threads())
        return real_linear(*args, **kwargs)

    def norm(self, x):
        seen["norm"].add(torch.get_num_threads())
        return real_norm(self, x)

    monkeypatch.setattr(transformer.F, "linear", linear)
    monkeypatch.setattr(transformer.RMSNorm, "forward", norm)
    torch.set_num_threads(2)  # the fixture restores one afterwards
    out = list(engine.generate(prompt(12), sampling=GREEDY, max_tokens=3))  # fp32: products by BLAS
    assert len(out) == 3 and seen == {"norm": {1}, "blas": {2}}
    assert torch.get_num_threads() == 2
