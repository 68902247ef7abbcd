"""Checkpoint directories: the original gpt-oss format and the Hugging Face format, memory-mapped.

Both formats are read into one set of names (the original format's), so the model has a single
loading path:

==========================================  =================================================
original (``original/`` on the Hub)          Hugging Face (``GptOssForCausalLM``)
==========================================  =================================================
``embedding.weight``                         ``model.embed_tokens.weight``
``block.N.attn.norm.scale``                  ``model.layers.N.input_layernorm.weight``
``block.N.attn.qkv.weight|bias``             ``...self_attn.q_proj|k_proj|v_proj.weight|bias``
``block.N.attn.sinks``                       ``...self_attn.sinks``
``block.N.attn.out.weight|bias``             ``...self_attn.o_proj.weight|bias``
``block.N.mlp.norm.scale``                   ``...post_attention_layernorm.weight``
``block.N.mlp.gate.weight|bias``             ``...mlp.router.weight|bias``
``block.N.mlp.mlp1_weight.blocks|scales``    ``...mlp.experts.gate_up_proj_blocks|_scales``
                                             (or bf16 ``gate_up_proj``, ``(E, in, out)``)
``block.N.mlp.mlp1_bias``                    ``...mlp.experts.gate_up_proj_bias``
``block.N.mlp.mlp2_weight.blocks|scales``    ``...mlp.experts.down_proj_blocks|_scales``
                                             (or bf16 ``down_proj``, ``(E, in, out)``)
``block.N.mlp.mlp2_bias``                    ``...mlp.experts.down_proj_bias``
``norm.scale``                               ``model.norm.weight``
``unembedding.weight``                       ``lm_head.weight``
==========================================  =================================================

Tensors are views into ``mmap``-ed files: nothing is read until it is touched, and the packed
MXFP4 experts stay packed.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
from gptoss_agent.model.config import ModelConfig
from gptoss_agent.model.mxfp4 import MXFP4Experts

__all__ = ["Checkpoint", "CheckpointError", "ExpertWeight", "SafetensorsFile", "open_checkpoint"]

ExpertWeight: TypeAlias = MXFP4Experts | torch.Tensor
"""An MoE projection for all experts: packed MXFP4, or a dense ``(E, out, in)`` tensor."""

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called while loading, in bytes."""


HF_LAYER_NAMES = {
    "attn.norm.scale": "input_layernorm.weight",
    "attn.sinks": "self_attn.sinks",
    "attn.out.weight": "self_attn.o_proj.weight",
    "attn.out.bias": "self_attn.o_proj.bias",
    "mlp.norm.scale": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.gate.bias": "mlp.router.bias",
    "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
    "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
}
"""Per-layer tensors that only change name between the original format (``block.N.<key>``) and the
Hugging Face format (``model.layers.N.<value>``)."""


class CheckpointError(Exception):
    """The directory is not a usable gpt-oss checkpoint (the message says what is wrong or missing)."""


_DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}


_MAX_HEADER = 100 << 20
"""safetensors' own limit on the JSON header (100 MB)."""


def _check_entry(name: str, entry: Any, data_bytes: int) -> str | None:
    """What is wrong with one header entry (dtype, shape, offsets within the file), or None."""
    if not isinstance(entry, dict):
        return f"entry {name} is not an object"
    if not isinstance(entry.get("dtype"), str):
        return f"tensor {name} has no dtype"
    dtype = _DTYPES.get(entry["dtype"])  # None: a dtype we never read (refused if asked for)
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"tensor {name} has an invalid shape {shape!r}"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        return f"tensor {name} has data_offsets {offsets!r} outside the file's {data_bytes} data bytes"
    count = math.prod(shape)
    if dtype is not None and offsets[1] - offsets[0] != count * dtype.itemsize:
        return (
            f"tensor {name} of shape {shape} ({entry['dtype']}) needs {count * dtype.itemsize} bytes, "
            f"its data_offsets span {offsets[1] - offsets[0]}"
        )
    return None


class SafetensorsFile:
    """One ``.safetensors`` file, memory-mapped; ``tensor(name)`` is a zero-copy view.

    The header is validated before anything is mapped: its length against the file's size, its
    JSON, and every entry's dtype, shape and offsets (``CheckpointError`` naming the file and field).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path} is not a safetensors file: it is only {size} bytes long")
                (header_len,) = struct.unpack("<Q", head)
                if header_len > min(size - 8, _MAX_HEADER):
                    raise CheckpointError(
                        f"{path} is not a safetensors file: its header length field says {header_len} bytes, "
                        f"the file has {size - 8} after it"
                    )
                try:
                    header = json.loads(f.read(header_len))
                except ValueError as e:
                    raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
                if not isinstance(header, dict):
                    raise CheckpointError(f"{path} is not a safetensors file: its header is not a JSON object")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise CheckpointError(f"{path} cannot be read: {e}") from e
        metadata = header.pop("__metadata__", None) or {}
        self.metadata: dict[str, str] = metadata if isinstance(metadata, dict) else {}
        data_bytes = size - 8 - header_len
        for name, entry in header.items():
            problem = _check_entry(name, entry, data_bytes)
            if problem is not None:
                raise CheckpointError(f"{path}: {problem}")
        self._entries: dict[str, dict[str, Any]] = header
        self._base = 8 + header_len

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def names(self) -> list[str]:
        return list(self._entries)

    def nbytes(self, name: str) -> int:
        start, end = self._entries[name]["data_offsets"]
        return int(end - start)

    def tensor(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        shape = entry["shape"]
        count = end - start
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._mmap, dtype=torch.uint8, count=count, offset=self._base + start)
        return flat.view(dtype).reshape(shape)


@dataclass
class Checkpoint:
    """An opened checkpoint: its config, format, and memory-mapped tensors under original names."""

    path: Path
    config: ModelConfig
    format: str
    """"original", "hf-mxfp4" or "hf-bf16"."""
    files: list[SafetensorsFile]
    _where: dict[str, SafetensorsFile] = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data on disk."""
        return sum(f.nbytes(k) for f in self.files for k in f.names())

    def _raw(self, name: str) -> torch.Tensor:
        try:
            return self._where[name].tensor(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name} is missing") from None

    def _has(self, name: str) -> bool:
        return name in self._where

    # The model asks for tensors by their original-format names.

    def tensor(self, name: str) -> torch.Tensor:
        """A dense tensor by original-format name (``block.N.attn.qkv.weight``, ...)."""
        if self.format == "original":
            return self._raw(name)
        return self._hf_tensor(name)

    def experts(self, layer: int, which: str) -> ExpertWeight:
        """``which`` = "mlp1" (gate/up, out = 2*intermediate) or "mlp2" (down) of ``layer``."""
        if self.format == "original":
            base = f"block.{layer}.mlp.{which}_weight"
            return MXFP4Experts(self._raw(base + ".blocks"), self._raw(base + ".scales"))
        proj = {"mlp1": "gate_up_proj", "mlp2": "down_proj"}[which]
        base = f"model.layers.{layer}.mlp.experts.{proj}"
        if self.format == "hf-mxfp4":
            return MXFP4Experts(self._raw(base + "_blocks"), self._raw(base + "_scales"))
        # stored (E, in, out) -> (E, out, in), copied once here so every call reads rows in order
        return self._raw(base).transpose(1, 2).contiguous()

    def _hf_tensor(self, name: str) -> torch.Tensor:
        parts = name.split(".")
        if name == "embedding.weight":
            return self._raw("model.embed_tokens.weight")
        if name == "unembedding.weight":
            return self._raw("lm_head.weight")
        if name == "norm.scale":
            return self._raw("model.norm.weight")
        layer, rest = parts[1], ".".join(parts[2:])
        hf = f"model.layers.{layer}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = parts[-1]
            return torch.cat([self._raw(hf + f"self_attn.{p}_proj.{kind}") for p in "qkv"], dim=0)
        return self._raw(hf + HF_LAYER_NAMES[rest])

    def required(self) -> list[str]:
        """Every on-disk tensor name this checkpoint's format and config need."""
        n = self.config.num_hidden_layers
        if self.format == "original":
            names = ["embedding.weight", "norm.scale", "unembedding.weight"]
            for i in range(n):
                b = f"block.{i}."
                names += [b + "attn.norm.scale", b + "attn.qkv.weight", b + "attn.qkv.bias", b + "attn.sinks"]
                names += [b + "attn.out.weight", b + "attn.out.bias", b + "mlp.norm.scale"]
                names += [
                    b + "mlp.gate.weight",
                    b + "mlp.gate.bias",
                    b + "mlp.mlp1_bias",
                    b + "mlp.mlp2_bias",
                ]
                names += [b + f"mlp.mlp{k}_weight.{p}" for k in (1, 2) for p in ("blocks", "scales")]
            return names
        names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
        for i in range(n):
            b = f"model.layers.{i}."
            names += [
                b + "input_layernorm.weight",
                b + "post_attention_layernorm.weight",
                b + "self_attn.sinks",
            ]
            names += [b + f"self_attn.{p}_proj.{k}" for p in "qkvo" for k in ("weight", "bias")]
            names += [b + "mlp.router.weight", b + "mlp.router.bias"]
            for proj in ("gate_up_proj", "down_proj"):
                e = b + f"mlp.experts.{proj}"
                names += [e + "_bias"]
                names += [e + "_blocks", e + "_scales"] if self.format == "hf-mxfp4" else [e]
        return names

    def check(self) -> None:
        """Raise ``CheckpointError`` naming the missing tensors, if any, or the first whose shape
        disagrees with ``config.json``."""
        missing = [n for n in self.required() if not self._has(n)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CheckpointError(
                f"{self.path}: {len(missing)} tensors are missing ({self.format} format): {shown}"
            )
        if self.format != "hf-bf16":
            try:
                self.config.check_mxfp4()
            except ValueError as e:
                raise CheckpointError(f"{self.path / 'config.json'}: {e}") from None
        for name, shape in self.expected_shapes().items():
            found = self._where[name].shape(name)
            if found != shape:
                raise CheckpointError(
                    f"{self._where[name].path}: tensor {name} has shape {list(found)}, but config.json "
                    f"(hidden_size, vocab_size, heads, experts ...) implies {list(shape)}"
                )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape ``config.json`` implies for each on-disk tensor this format needs."""
        c = self.config
        v, h, e, i2 = c.vocab_size, c.hidden_size, c.num_experts, c.intermediate_size
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        if self.format == "original":
            shapes: dict[str, tuple[int, ...]] = {
                "embedding.weight": (v, h),
                "norm.scale": (h,),
                "unembedding.weight": (v, h),
            }
            for n in range(c.num_hidden_layers):
                b = f"block.{n}."
                shapes |= {
                    b + "attn.norm.scale": (h,),
                    b + "attn.qkv.weight": (q + 2 * kv, h),
                    b + "attn.qkv.bias": (q + 2 * kv,),
                    b + "attn.sinks": (c.num_attention_heads,),
                    b + "attn.out.weight": (h, q),
                    b + "attn.out.bias": (h,),
                    b + "mlp.norm.scale": (h,),
                    b + "mlp.gate.weight": (e, h),
                    b + "mlp.gate.bias": (e,),
                    b + "mlp.mlp1_bias": (e, 2 * i2),
                    b + "mlp.mlp2_bias": (e, h),
                    b + "mlp.mlp1_weight.blocks": (e, 2 * i2, h // 32, 16),
                    b + "mlp.mlp1_weight.scales": (e, 2 * i2, h // 32),
                    b + "mlp.mlp2_weight.blocks": (e, h, i2 // 32, 16),
                    b + "mlp.mlp2_weight.scales": (e, h, i2 // 32),
                }
            return shapes
        shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
        for n in range(c.num_hidden_layers):
            b = f"model.layers.{n}."
            x = b + "mlp.experts."
            shapes |= {
                b + "input_layernorm.weight": (h,),
                b + "post_attention_layernorm.weight": (h,),
                b + "self_attn.sinks": (c.num_attention_heads,),
                b + "self_attn.q_proj.weight": (q, h),
                b + "self_attn.q_proj.bias": (q,),
                b + "self_attn.k_proj.weight": (kv, h),
                b + "self_attn.k_proj.bias": (kv,),
                b + "self_attn.v_proj.weight": (kv, h),
                b + "self_attn.v_proj.bias": (kv,),
                b + "self_attn.o_proj.weight": (h, q),
                b + "self_attn.o_proj.bias": (h,),
                b + "mlp.router.weight": (e, h),
                b + "mlp.router.bias": (e,),
                x + "gate_up_proj_bias": (e, 2 * i2),
                x + "down_proj_bias": (e, h),
            }
            if self.format == "hf-mxfp4":
                shapes |= {
                    x + "gate_up_proj_blocks": (e, 2 * i2, h // 32, 16),
                    x + "gate_up_proj_scales": (e, 2 * i2, h // 32),
                    x + "down_proj_blocks": (e, h, i2 // 32, 16),
                    x + "down_proj_scales": (e, h, i2 // 32),
                }
            else:
                shapes |= {x + "gate_up_proj": (e, h, 2 * i2), x + "down_proj": (e, i2, h)}
        return shapes


def _find_dir(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file: pass the checkpoint directory (the one holding config.json)"
        )
    if not (path / "config.json").exists() and (path / "original" / "config.json").exists():
        return path / "original"
    return path


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint directory of either format (sharded or not) without reading weights.

    Raises ``CheckpointError`` with one clear message when the directory is wrong or incomplete.
    """
    root = _find_dir(Path(path).expanduser())
    cfg_path = root / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{root} has no config.json: not a gpt-oss checkpoint directory")
    try:
        raw_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} is not readable JSON: {e}") from None
    if isinstance(raw_cfg, dict) and "model_type" in raw_cfg and raw_cfg["model_type"] != "gpt_oss":
        raise CheckpointError(f"{cfg_path}: model_type is {raw_cfg['model_type']!r}, expected 'gpt_oss'")
    try:
        config = ModelConfig.from_json(raw_cfg)
    except ValueError as e:
        raise CheckpointError(f"{cfg_path} is not a usable gpt-oss config: {e}") from None

    index = root / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map is not an object of file names")
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index: {e}") from e
        if any(Path(s).is_absolute() or ".." in Path(s).parts for s in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map names a file outside {root}")
        shard_names = sorted(set(weight_map.values()))
        absent = [s for s in shard_names if not (root / s).exists()]
        if absent:
            raise CheckpointError(f"{root}: shards listed in {index.name} are missing: {', '.join(absent)}")
        shard_paths = [root / s for s in shard_names]
    else:
        shard_paths = sorted(root.glob("*.safetensors"))
        if not shard_paths:
            raise CheckpointError(f"{root} has config.json but no *.safetensors weight files")
    files = [SafetensorsFile(p) for p in shard_paths]
    where = {name: f for f in files for name in f.names()}

    if "embedding.weight" in where or any(k.startswith("block.") for k in where):
        fmt = "original"
    elif any(k.endswith("gate_up_proj_blocks") for k in where):
        fmt = "hf-mxfp4"
    else:
        fmt = "hf-bf16"
    ckpt = Checkpoint(path=root, config=config, format=fmt, files=files, _where=where)
    ckpt.check()
    return ckpt
