"""A decode token through each layer as one C call (``kernels.decode_layer``) gives bit for bit what
the layer's Python path gives (the same kernels in the same order), across the sliding window and a
compaction of the sliding layers' rows, with bf16 products and without; a batch of sessions still
decodes as each does alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from gptoss_agent.model import LocalEngine, kernels
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = replace(PRESETS["tiny"].with_layers(3), vocab_size=1024)
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "hf", cfg, format="hf")


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture
def calls(monkeypatch):
    """Counts ``decode_layer`` calls, so that a test knows which path ran."""
    seen = []
    real = kernels.decode_layer

    def counted(step, rows, x):
        seen.extend(r.row for r in rows)
        real(step, rows, x)

    monkeypatch.setattr(kernels, "decode_layer", counted)
    return seen


def greedy(model, ids: list[int], n: int) -> torch.Tensor:
    cache = model.new_cache()
    logits = model(torch.tensor(ids), cache, last_only=True)
    out = []
    for _ in range(n):
        logits = model(logits[-1:].argmax(-1), cache)
        out.append(logits)
    return torch.cat(out)


@pytest.mark.parametrize("bf16_products", ["1", "0"])
def test_one_call_a_layer_is_the_python_path_bit_for_bit(ckpt, monkeypatch, calls, bf16_products):
    monkeypatch.setenv("GPTOSS_KERNELS_BF16", bf16_products)
    model = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="bf16").model
    layers = model.config.num_hidden_layers
    ids = prompt(480, seed=1)  # 480 + 60: the sliding layers pass the window and compact at 512 rows
    monkeypatch.setenv("GPTOSS_KERNELS_FUSED", "0")
    python = greedy(model, ids, 60)
    assert not calls
    monkeypatch.setenv("GPTOSS_KERNELS_FUSED", "1")
    fused = greedy(model, ids, 60)
    assert len(calls) == 60 * layers  # every step ran the C layers
    assert min(calls) < 300 < max(calls)  # a sliding layer's row went back after its compaction
    assert torch.equal(fused, python)


def test_a_batch_decodes_as_each_session_alone_and_as_the_python_batch(ckpt, monkeypatch, calls):
    engine = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="bf16")
    lengths = [100, 127, 150, 500]  # each crosses the window at its own step; the last compacts
    groups: dict[str, list] = {"alone": [], "batched": [], "python": []}
    for i, n in enumerate(lengths):
        for group in groups.values():
            s = engine.session()
            s.prefill(prompt(n, seed=20 + i))
            group.append(s)
    tokens = [7, 8, 9, 10]
    for _ in range(30):
        one = torch.stack([s.decode_one(t) for s, t in zip(groups["alone"], tokens, strict=True)])
        many = engine.model.decode_batch(torch.tensor(tokens), [s.cache for s in groups["batched"]])
        monkeypatch.setenv("GPTOSS_KERNELS_FUSED", "0")
        python = engine.model.decode_batch(torch.tensor(tokens), [s.cache for s in groups["python"]])
        monkeypatch.delenv("GPTOSS_KERNELS_FUSED")
        assert torch.equal(many, one) and torch.equal(python, one)
        tokens = one.argmax(-1).tolist()
    assert len(calls) == 30 * 2 * 4 * engine.model.config.num_hidden_layers  # alone and batched: C layers


def test_the_routers_top_k_is_torchs():
    logits = torch.randn(9, 32, generator=torch.Generator().manual_seed(4))
    logits[3, 5] = logits[3, 7] = logits[3].max() + 1  # a tie: the lower index first
    routed = kernels.moe_route(logits, 4)
    assert routed is not None
    ids, weights = routed
    top = torch.topk(logits, k=4, dim=-1, sorted=True)
    assert ids[3, :2].tolist() == [5, 7]
    assert torch.equal(ids[torch.arange(9) != 3], top.indices[torch.arange(9) != 3])
    torch.testing.assert_close(weights, torch.softmax(top.values, dim=-1), rtol=1e-6, atol=1e-7)
