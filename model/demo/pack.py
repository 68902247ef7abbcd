"""The shipped demo checkpoint: written from a training state, compressed, unpacked on first use.

``export(state, out)`` writes an ordinary Hugging Face gpt-oss checkpoint: ``config.json`` with
``quantization_config: {quant_method: mxfp4}``, experts as MXFP4 ``*_blocks``/``*_scales``, the
other weights bf16, embedding and ``lm_head`` expanded to the full 201,088-token vocabulary (rows
of ids the training data never used are zeros), the unembedding untied (a copy of the trained,
tied rows). ``pack(state, archive)`` puts that directory into one ``.tar.xz`` (a few MB: the zero
rows compress to nothing); ``demo_checkpoint()`` unpacks the archive shipped in this package
into ``$GPTOSS_CACHE_DIR/demo/<hash>`` (default ``~/.cache/gptoss-agent/demo/<hash>``) once, and
returns that directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch
from gptoss_agent.model.checkpoint import HF_LAYER_NAMES
from gptoss_agent.model.config import ModelConfig

__all__ = ["ARCHIVE", "demo_checkpoint", "export", "export_bf16", "mxfp4_pack", "pack"]

ARCHIVE = Path(__file__).with_name("demo-checkpoint.tar.xz")
"""The packed checkpoint shipped as package data."""


def mxfp4_pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w (..., in)`` float as MXFP4 ``blocks (..., in/32, 16)`` and ``scales (..., in/32)`` uint8.

    The same rounding as training's ``mxfp4_round``: scale ``2**ceil(log2(max|w|/6))`` per block
    of 32, each value to the nearest e2m1 code (low nibble first).
    """
    from gptoss_agent.model.demo.train import _FP4_MID

    shape = w.shape
    blocks = w.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = blocks.abs().amax(-1, keepdim=True).clamp(min=2.0**-126)
    exponent = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    x = blocks / torch.exp2(exponent)
    magnitude = torch.bucketize(x.abs(), _FP4_MID)  # 0..7, the index into 0, .5, 1, 1.5, 2, 3, 4, 6
    code = magnitude + 8 * ((x < 0) & (magnitude > 0)).long()
    code = code.to(torch.uint8)
    packed = code[..., 0::2] | (code[..., 1::2] << 4)  # (..., G, 16)
    scales = (exponent.squeeze(-1) + 127).to(torch.uint8)
    return packed.contiguous(), scales.contiguous()


def _config(raw: dict[str, Any]) -> ModelConfig:
    return ModelConfig(**{**raw, "layer_types": tuple(raw["layer_types"])})


def export(state: str | Path | dict[str, Any], out: str | Path) -> Path:
    """Write the Hugging Face gpt-oss checkpoint of a training state into directory ``out``."""
    from safetensors.torch import save_file

    if not isinstance(state, dict):
        state = torch.load(state, weights_only=False, map_location="cpu")
    assert isinstance(state, dict)
    cfg = _config(state["model_config"])
    params = {k.replace("params.", "", 1).replace("__", "."): v.float() for k, v in state["model"].items()}
    ids = torch.tensor(state["vocab"], dtype=torch.long)
    n = len(ids)
    bf = torch.bfloat16
    tensors: dict[str, torch.Tensor] = {}
    full = torch.zeros(cfg.vocab_size, cfg.hidden_size)
    full[ids] = params["embedding.weight"][:n]
    tensors["model.embed_tokens.weight"] = full.to(bf)
    tensors["lm_head.weight"] = full.to(bf).clone()
    tensors["model.norm.weight"] = params["norm.scale"].to(bf)
    nq, nkv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    for i in range(cfg.num_hidden_layers):
        b, hf = f"block.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = params[b + f"attn.qkv.{kind}"].split([nq, nkv, nkv], dim=0)
            for name, t in zip("qkv", (q, k, v), strict=True):
                tensors[hf + f"self_attn.{name}_proj.{kind}"] = t.contiguous().to(bf)
        for key, name in HF_LAYER_NAMES.items():
            tensors[hf + name] = params[b + key].to(bf)
        for which, proj in (("mlp1_weight", "gate_up_proj"), ("mlp2_weight", "down_proj")):
            blocks, scales = mxfp4_pack(params[b + "mlp." + which])
            tensors[hf + f"mlp.experts.{proj}_blocks"] = blocks
            tensors[hf + f"mlp.experts.{proj}_scales"] = scales
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg.to_hf_json(mxfp4=True), indent=2) + "\n")
    generation = {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    about = {
        "what": "gptoss-agent demo model: trained by gptoss_agent.model.demo on synthetic harmony conversations",
        "steps": state.get("step"),
        "compact_vocab": n,
        "train_config": state.get("train_config"),
    }
    (out / "demo.json").write_text(json.dumps(about, indent=2, default=str) + "\n")
    return out


def export_bf16(checkpoint: str | Path, out: str | Path) -> Path:
    """Write ``checkpoint`` (a demo checkpoint directory) again with the experts as plain bf16.

    The same weights: every MXFP4 value (an e2m1 number times a power of two) is exact in bf16.
    For servers without an MXFP4 path on the CPU (vLLM's needs AMX): ``serve`` this copy there and
    it computes what the shipped checkpoint does."""
    from gptoss_agent.model.mxfp4 import dequantize
    from safetensors.torch import load_file, save_file

    src, out = Path(checkpoint), Path(out)
    tensors = load_file(str(src / "model.safetensors"))
    for name in [n for n in tensors if n.endswith("_blocks")]:
        base = name.removesuffix("_blocks")
        w = dequantize(tensors.pop(name), tensors.pop(base + "_scales"), torch.float32)  # (E, out, in)
        tensors[base] = w.transpose(1, 2).contiguous().to(torch.bfloat16)  # HF's (E, in, out)
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for extra in ("generation_config.json", "demo.json"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, out / extra)
    return out


def pack(state: str | Path | dict[str, Any], archive: str | Path = ARCHIVE) -> Path:
    """Export a training state and compress the checkpoint into ``archive`` (``.tar.xz``)."""
    archive = Path(archive)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = export(state, Path(tmp) / "demo")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz", preset=6) as tar:
            for f in sorted(ckpt.iterdir()):
                info = tar.gettarinfo(str(f), arcname=f.name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp_archive = archive.with_suffix(".partial")
    tmp_archive.write_bytes(buf.getvalue())
    tmp_archive.replace(archive)
    return archive


def _cache_root() -> Path:
    if os.environ.get("GPTOSS_CACHE_DIR"):
        return Path(os.environ["GPTOSS_CACHE_DIR"]) / "demo"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gptoss-agent" / "demo"


def demo_checkpoint(archive: str | Path = ARCHIVE, cache: str | Path | None = None) -> Path:
    """The directory of the unpacked demo checkpoint, unpacking ``archive`` on first use.

    Raises FileNotFoundError when the package has no packed checkpoint (a source tree where the
    model was never trained and packed).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(
            f"the demo model is not packed in this installation ({archive} is missing); "
            "train it with `python -m gptoss_agent.model.demo train OUT` and pack it"
        )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    target = Path(cache) if cache is not None else _cache_root() / digest
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with tarfile.open(archive, mode="r:xz") as tar:
            tar.extractall(tmp, filter="data")
        if target.exists():  # another process finished first
            return target
        tmp.replace(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
