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
    with pytest.raises(CheckpointError, match=r"config\.json is not readable JSON"):
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


# -- plain checkpoints of any size (the multiple-of-32 rule is MXFP4's alone) ----------------


def test_plain_checkpoint_of_odd_sizes_matches_transformers(tmp_path):
    """A checkpoint written by transformers itself (not our generator), hidden 72, intermediate 40."""
    import transformers  # the test extra: never skipped
    config = transformers.GptOssConfig(
        num_hidden_layers=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=300,
        hidden_size=72,
        intermediate_size=40,
        head_dim=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    theirs = transformers.GptOssForCausalLM(config).eval()
    with torch.no_grad():  # random biases and sinks, so the comparison exercises them
        for name, p in theirs.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.normal_(0, 0.5)
    theirs.save_pretrained(tmp_path / "odd")
    ckpt = open_checkpoint(tmp_path / "odd")
    assert ckpt.format == "hf-bf16" and ckpt.config.hidden_size == 72
    w = ckpt.experts(0, "mlp1")
    assert isinstance(w, torch.Tensor) and w.is_contiguous() and tuple(w.shape) == (4, 80, 72)
    ours = LocalEngine.from_checkpoint(tmp_path / "odd", device="cpu", dtype="fp32")
    ids = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids[None]).logits[0]
    torch.testing.assert_close(ours.model(ids), expected, atol=1e-4, rtol=0)


def test_mxfp4_checkpoint_still_needs_multiples_of_32(tmp_path, dirs):
    import shutil

    shutil.copytree(dirs["hf-mxfp4"], tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["hidden_size"] = 72
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: hidden_size=72 is not a multiple of 32"):
        open_checkpoint(tmp_path / "c")


# -- broken and absurd checkpoints: one sentence naming the file and the field (issue 18) ----


def _header_file(path, header: bytes, data: bytes = b"", *, length: int | None = None) -> None:
    """A file laid out as safetensors: 8-byte length (``length`` overrides it), header, data."""
    path.write_bytes((len(header) if length is None else length).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize(
    ("hf_edit", "words"),
    [
        ({"vocab_size": -5}, ["config.json", "vocab_size", "-5"]),
        ({"vocab_size": 10**12}, ["config.json", "vocab_size"]),
        ({"hidden_size": 10**9}, ["config.json", "hidden_size"]),
        ({"max_position_embeddings": 10**15}, ["config.json", "max_position_embeddings"]),
        ({"num_local_experts": 0}, ["config.json", "num_local_experts", "0"]),
        ({"num_experts_per_tok": 64}, ["config.json", "num_experts_per_tok", "64"]),
        ({"num_attention_heads": 0}, ["config.json", "num_attention_heads"]),
        ({"num_key_value_heads": 0}, ["config.json", "num_key_value_heads"]),
        ({"num_key_value_heads": 3}, ["config.json", "num_key_value_heads"]),
        ({"rope_theta": "NaN"}, ["config.json", "rope_theta", "finite"]),
        ({"rope_theta": float("nan")}, ["config.json", "rope_theta", "finite"]),
        ({"rms_norm_eps": 0}, ["config.json", "rms_norm_eps", "positive"]),
        ({"hidden_size": 128.5}, ["config.json", "hidden_size", "integer"]),
        ({"num_hidden_layers": True}, ["config.json", "num_hidden_layers", "integer"]),
        ({"rope_scaling": {"factor": -1, "original_max_position_embeddings": 4096}}, ["rope_scaling.factor"]),
        ({"rope_scaling": [1, 2]}, ["config.json", "rope_scaling"]),
        ({"layer_types": ["sliding_attention", "banana"]}, ["config.json", "banana"]),
        ({"num_local_experts": None}, ["config.json", "num_local_experts"]),
        ({"hidden_size": 256}, ["model.safetensors", "shape", "hidden_size"]),
        ({"vocab_size": 1000}, ["model.safetensors", "model.embed_tokens.weight", "[512, 128]"]),
    ],
)
def test_bad_configs_are_one_sentence(tmp_path, dirs, hf_edit, words):
    import shutil

    shutil.copytree(dirs["hf-mxfp4"], tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg.update(hf_edit)
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(tmp_path / "c")
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_config_that_is_not_an_object(tmp_path, dirs):
    import shutil

    shutil.copytree(dirs["hf-mxfp4"], tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match=r"config\.json .*JSON list, expected an object"):
        open_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    with pytest.raises(CheckpointError, match=r"config\.json .*field num_hidden_layers is missing"):
        open_checkpoint(tmp_path / "c")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.write_bytes(__import__("os").urandom(4096)), ["model.safetensors", "header"]),
        (lambda p: p.write_bytes(b"\x01\x02"), ["model.safetensors", "only 2 bytes"]),
        (lambda p: _header_file(p, b"{}", length=2**62), ["model.safetensors", str(2**62)]),
        (lambda p: _header_file(p, b"nope"), ["model.safetensors", "not JSON"]),
        (lambda p: _header_file(p, b"[]"), ["model.safetensors", "not a JSON object"]),
        (
            lambda p: _header_file(p, b'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,99]}}'),
            ["model.safetensors", "tensor x", "data_offsets"],
        ),
        (
            lambda p: _header_file(p, b'{"x":{"dtype":"F32","shape":[-4],"data_offsets":[0,0]}}', b"\0" * 16),
            ["model.safetensors", "tensor x", "shape"],
        ),
        (
            lambda p: _header_file(p, b'{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}', b"\0" * 16),
            ["model.safetensors", "tensor x", "needs 16 bytes"],
        ),
    ],
)
def test_broken_safetensors_are_one_sentence(tmp_path, dirs, make, words):
    import shutil

    shutil.copytree(dirs["hf-mxfp4"], tmp_path / "c")
    make(tmp_path / "c" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(tmp_path / "c")
    message = str(info.value)
    for word in words:
        assert word in message, message


def test_cli_reports_a_broken_checkpoint_in_one_sentence_exit_2(tmp_path, dirs):
    import shutil

    shutil.copytree(dirs["hf-mxfp4"], tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["num_experts_per_tok"] = 64
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "gptoss_agent.agent", "x", "--model", str(tmp_path / "c"), "--tools", "none"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "config.json" in line and "num_experts_per_tok" in line and line.endswith(".")
