"""The shipped form of the demo model: an ordinary gpt-oss checkpoint (Hugging Face format, MXFP4
experts, full vocabulary), equal to the trained model, loadable by transformers, packed small."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from gptoss_agent.model.demo.pack import ARCHIVE, demo_checkpoint, export, export_bf16, mxfp4_pack, pack
from gptoss_agent.model.demo.train import DEMO_CONFIG, DemoModel, mxfp4_round
from gptoss_agent.model.local import LocalEngine, load_engine
from gptoss_agent.model.mxfp4 import dequantize

SMALL = replace(DEMO_CONFIG, num_hidden_layers=2, hidden_size=64, intermediate_size=64, layer_types=())
IDS = [200006, 200005, 200008, 200007, 200012, 200002, *range(1000, 1090)]  # a compact vocabulary


@pytest.fixture(scope="module")
def trained():
    """A DemoModel with random weights (as if trained) and its training state."""
    torch.manual_seed(0)
    model = DemoModel(SMALL, 128, seed=3)
    with torch.no_grad():
        for p in model.parameters():  # biases and norms away from their init, as training leaves them
            p.add_(torch.randn_like(p) * 0.05)
    model.used = len(IDS)
    state = {"model": model.state_dict(), "vocab": IDS, "capacity": 128, "model_config": asdict(SMALL), "step": 7}
    return model, state


def test_mxfp4_pack_is_the_training_rounding():
    w = torch.randn(4, 8, 96, generator=torch.Generator().manual_seed(1)) * 0.1
    blocks, scales = mxfp4_pack(w)
    assert blocks.dtype == torch.uint8 and blocks.shape == (4, 8, 3, 16) and scales.shape == (4, 8, 3)
    torch.testing.assert_close(dequantize(blocks, scales), mxfp4_round(w), atol=0, rtol=0)


def test_export_equals_the_trained_model_in_its_shipped_precision(trained, tmp_path):
    model, state = trained
    path = export(state, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss" and cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["vocab_size"] == 201088 and cfg["tie_word_embeddings"] is False
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="fp32")
    tokens = [IDS[i % len(IDS)] for i in range(0, 300, 7)]
    compact = torch.tensor([IDS.index(t) for t in tokens])
    model.quantized = True
    with torch.no_grad():
        expected = model.logits(model(None, compact[None])[0])
        got = engine.model(torch.tensor(tokens))
    torch.testing.assert_close(got[:, IDS], expected[:, :-1], atol=2e-4, rtol=1e-4)
    others = torch.ones(201088, dtype=torch.bool)
    others[IDS] = False
    assert torch.all(got[:, others] == 0)  # ids the data never used: zero rows, logit 0


def test_transformers_loads_the_export_and_agrees(trained, tmp_path):
    import transformers  # the test extra: never skipped
    _, state = trained
    path = export(state, tmp_path / "ckpt")
    ours = LocalEngine.from_checkpoint(path, device="cpu", dtype="fp32")
    theirs = transformers.GptOssForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    theirs.eval()
    ids = torch.tensor([IDS[i % len(IDS)] for i in range(5, 400, 3)])
    with torch.no_grad():
        expected = theirs(ids[None]).logits[0]
        got = ours.model(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_the_bf16_copy_holds_the_same_weights(trained, tmp_path):
    # for vLLM on the CPU, which has no MXFP4 path without AMX: every MXFP4 value is exact in bf16
    from safetensors.torch import load_file

    _, state = trained
    path = export(state, tmp_path / "ckpt")
    copy = export_bf16(path, tmp_path / "bf16")
    assert "quantization_config" not in json.loads((copy / "config.json").read_text())
    packed, plain = load_file(str(path / "model.safetensors")), load_file(str(copy / "model.safetensors"))
    assert not any(n.endswith(("_blocks", "_scales")) for n in plain)
    for name, t in plain.items():
        if name.endswith(("gate_up_proj", "down_proj")):
            w = dequantize(packed[name + "_blocks"], packed[name + "_scales"])
            assert torch.equal(t.float(), w.transpose(1, 2))  # HF's plain layout: (E, in, out)
        else:
            assert torch.equal(t, packed[name])
    ids = torch.tensor([IDS[i % len(IDS)] for i in range(3, 300, 5)])
    with torch.no_grad():  # the experts take another kernel: summation order only
        mx = LocalEngine.from_checkpoint(path, device="cpu", dtype="fp32").model(ids)
        bf = LocalEngine.from_checkpoint(copy, device="cpu", dtype="fp32").model(ids)
    torch.testing.assert_close(bf, mx, atol=1e-5, rtol=0)


def test_pack_and_unpack_into_the_cache(trained, tmp_path, monkeypatch):
    _, state = trained
    archive = pack(state, tmp_path / "demo.tar.xz")
    assert archive.stat().st_size < 2_000_000  # zero rows compress away
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path / "cache"))
    first = demo_checkpoint(archive)
    assert first.parent == tmp_path / "cache" / "demo"
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "demo.json", "generation_config.json", "model.safetensors"]
    assert demo_checkpoint(archive) == first  # unpacked once
    engine = load_engine(str(first), device="cpu", dtype="fp32")
    assert engine.model.config.num_hidden_layers == 2


def test_a_missing_archive_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train it with"):
        demo_checkpoint(tmp_path / "nothing.tar.xz")


def test_the_shipped_archive_is_small_and_loads_as_demo(tmp_path, monkeypatch):
    assert ARCHIVE.stat().st_size < 12 * 2**20
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path))
    engine = load_engine("demo")
    cfg = engine.model.config
    assert cfg.num_experts >= 4 and cfg.vocab_size == 201088 and cfg.sliding_window == 128
