"""Checkpoint formats: the generator's files, both formats giving identical logits, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from gptoss_agent.model import CheckpointError, LocalEngine, load_engine
from gptoss_agent.model.checkpoint import SafetensorsFile, open_checkpoint
from gptoss_agent.model.config import PRESETS, ModelConfig
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

CFG = replace(PRESETS["tiny"].with_layers(2), vocab_size=512)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {
        "original": write_random_checkpoint(root / "original", CFG, format="original", seed=3),
        "hf-mxfp4": write_random_checkpoint(root / "hf", CFG, format="hf", seed=3),
        "hf-bf16": write_random_checkpoint(root / "hf-bf16", CFG, format="hf", mxfp4=False, seed=3),
        "sharded": write_random_checkpoint(root / "sharded", CFG, format="hf", seed=3, shard_bytes=200_000),
    }


def test_formats_are_detected_and_shaped_as_shipped(dirs):
    assert open_checkpoint(dirs["original"]).format == "original"
    assert open_checkpoint(dirs["hf-mxfp4"]).format == "hf-mxfp4"
    assert open_checkpoint(dirs["hf-bf16"]).format == "hf-bf16"
    hf = json.loads((dirs["hf-mxfp4"] / "config.json").read_text())
    assert hf["model_type"] == "gpt_oss" and hf["quantization_config"]["quant_method"] == "mxfp4"
    assert hf["rope_scaling"]["rope_type"] == "yarn" and hf["sliding_window"] == 128
    assert hf["layer_types"] == ["sliding_attention", "full_attention"]
    assert "quantization_config" not in json.loads((dirs["hf-bf16"] / "config.json").read_text())
    f = SafetensorsFile(dirs["hf-mxfp4"] / "model.safetensors")
    e, i, h = CFG.num_experts, CFG.intermediate_size, CFG.hidden_size
    blocks = f.tensor("model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert blocks.dtype == torch.uint8 and tuple(blocks.shape) == (e, 2 * i, h // 32, 16)
    assert tuple(f.tensor("model.layers.1.mlp.experts.down_proj_scales").shape) == (e, h, i // 32)
    assert f.tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    dense = SafetensorsFile(dirs["hf-bf16"] / "model.safetensors")
    assert tuple(dense.tensor("model.layers.0.mlp.experts.gate_up_proj").shape) == (e, h, 2 * i)
    assert tuple(dense.tensor("model.layers.0.mlp.experts.down_proj").shape) == (e, i, h)
    orig = SafetensorsFile(dirs["original"] / "model.safetensors")
    assert tuple(orig.tensor("block.0.attn.qkv.weight").shape) == ((4 + 2 * 2) * 64, h)
    assert tuple(orig.tensor("block.0.mlp.mlp1_weight.blocks").shape) == (e, 2 * i, h // 32, 16)
    # scales decode to sensible magnitudes: around 1/sqrt(fan_in)
    assert 115 < orig.tensor("block.0.mlp.mlp1_weight.scales").float().mean() < 127


def test_all_formats_give_identical_logits(dirs):
    ids = torch.randint(0, CFG.vocab_size, (200,), generator=torch.Generator().manual_seed(0))
    logits = {
        k: LocalEngine.from_checkpoint(p, device="cpu", dtype="fp32").model(ids) for k, p in dirs.items()
    }
    assert torch.equal(logits["hf-mxfp4"], logits["original"])  # same packed experts, same code path
    assert torch.equal(logits["sharded"], logits["original"])
    # unpacked bf16 experts run through a different matmul: equal up to summation order
    torch.testing.assert_close(logits["hf-bf16"], logits["original"], atol=1e-5, rtol=0)


def test_bf16_weights_stay_memory_mapped(dirs):
    engine = LocalEngine.from_checkpoint(dirs["original"], device="cpu", dtype="bf16")
    assert engine.model.embedding.dtype == torch.bfloat16
    blocks = engine.model.mlp[0].mlp1.blocks
    assert blocks.dtype == torch.uint8  # experts stay packed
    ckpt = engine.checkpoint
    assert ckpt is not None
    mapped = ckpt.files[0]._mmap
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
    assert base <= blocks.data_ptr() < base + len(mapped)  # a view into the file, not a copy


def test_sharded_checkpoint_has_an_index(dirs):
    index = json.loads((dirs["sharded"] / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((dirs["sharded"] / s).exists() for s in shards)


def test_missing_directory_and_files(tmp_path, dirs):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is a file"):
        open_checkpoint(dirs["original"] / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_original_json()))
    with pytest.raises(CheckpointError, match=r"no \*.safetensors"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a gpt-oss config"):
        open_checkpoint(tmp_path)


def test_incomplete_checkpoint_names_what_is_missing(tmp_path, dirs):
    # a checkpoint whose config promises more layers than its files hold
    import shutil

    shutil.copytree(dirs["original"], tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"15 tensors are missing.*block\.2\.attn\.norm\.scale"):
        open_checkpoint(tmp_path / "c")
    # a shard listed in the index is gone
    shutil.copytree(dirs["sharded"], tmp_path / "s")
    victim = sorted((tmp_path / "s").glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(
        CheckpointError, match=f"shards listed in model.safetensors.index.json are missing: {victim.name}"
    ):
        load_engine(tmp_path / "s")


def test_generator_command_line(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "gptoss_agent.model.random_checkpoint", str(out), "--format", "original"]
    cmd += ["--preset", "tiny", "--layers", "1", "--vocab", "256"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "1 layers" in done.stdout
    cfg = ModelConfig.from_json(json.loads((out / "config.json").read_text()))
    assert (cfg.num_hidden_layers, cfg.vocab_size, cfg.head_dim) == (1, 256, 64)


def test_hf_config_round_trips():
    for name in ("20b", "120b", "tiny"):
        cfg = PRESETS[name]
        assert ModelConfig.from_json(cfg.to_hf_json(mxfp4=True)) == cfg
        assert ModelConfig.from_json(cfg.to_original_json()) == cfg
