"""Random gpt-oss checkpoints in the exact on-disk formats, for tests and benchmarks.

    python -m gptoss_agent.model.random_checkpoint OUT --format original|hf --preset tiny|20b [--layers N]
        [--vocab N] [--experts N] [--bf16] [--seed S] [--shard-mb N]

* ``original``: ``config.json`` + ``model.safetensors`` as in openai/gpt-oss-20b's ``original/``
  (bf16 tensors, MoE weights as MXFP4 ``.blocks``/``.scales`` uint8).
* ``hf``: ``config.json`` (``model_type: gpt_oss``, ``quantization_config: {quant_method: mxfp4}``,
  YaRN ``rope_scaling``, ``layer_types``) + ``model-0000K-of-0000N.safetensors`` shards +
  ``model.safetensors.index.json``, as Hugging Face's openai/gpt-oss-20b; loadable by transformers'
  ``GptOssForCausalLM`` and by vLLM. ``--bf16`` writes plain bf16 experts instead (no quantization).

The same ``--seed`` gives the same weights in every format. Values have realistic ranges: bf16
weights scaled by ``1/sqrt(fan_in)``, MXFP4 nibbles uniform over all 16 codes with block exponents
around ``127 + log2(1/(3*sqrt(fan_in)))``. Files are written tensor by tensor, so a 20b-shaped
checkpoint needs little memory.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from gptoss_agent.model.checkpoint import HF_LAYER_NAMES
from gptoss_agent.model.config import PRESETS, ModelConfig
from gptoss_agent.model.mxfp4 import dequantize

__all__ = ["random_tensors", "write_random_checkpoint", "write_safetensors"]

_ST_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.uint8: "U8", torch.float16: "F16"}


class _Spec:
    def __init__(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]):
        self.name, self.dtype, self.shape = name, dtype, shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()


def write_safetensors(path: Path, specs: list[_Spec], tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Stream tensors (arriving in ``specs`` order) into one safetensors file."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {
            "dtype": _ST_DTYPES[s.dtype],
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for s in specs:
            name, t = next(tensors)
            if name != s.name or tuple(t.shape) != s.shape or t.dtype != s.dtype:
                raise AssertionError(
                    f"writer out of order: expected {s.name} {s.shape}, got {name} {tuple(t.shape)}"
                )
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())


# ---- the weights, by original-format names ----------------------------------------------------


def _normal(g: torch.Generator, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=g) * std + mean).to(torch.bfloat16)


def _mxfp4(g: torch.Generator, e: int, out: int, inp: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = torch.randint(0, 256, (e, out, inp // 32, 16), generator=g, dtype=torch.uint8)
    target = 1.0 / (3.0 * math.sqrt(inp))  # rms of uniform FP4 codes is ~2.9
    center = 127 + round(math.log2(target))
    scales = torch.randint(center - 1, center + 2, (e, out, inp // 32), generator=g, dtype=torch.uint8)
    return blocks, scales


def _layer_specs(cfg: ModelConfig, i: int) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    h, d, i2 = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    e, bf, u8 = cfg.num_experts, torch.bfloat16, torch.uint8
    b = f"block.{i}."
    return [
        (b + "attn.norm.scale", bf, (h,)),
        (b + "attn.qkv.weight", bf, (qkv, h)),
        (b + "attn.qkv.bias", bf, (qkv,)),
        (b + "attn.sinks", bf, (cfg.num_attention_heads,)),
        (b + "attn.out.weight", bf, (h, cfg.num_attention_heads * d)),
        (b + "attn.out.bias", bf, (h,)),
        (b + "mlp.norm.scale", bf, (h,)),
        (b + "mlp.gate.weight", bf, (e, h)),
        (b + "mlp.gate.bias", bf, (e,)),
        (b + "mlp.mlp1_weight.blocks", u8, (e, 2 * i2, h // 32, 16)),
        (b + "mlp.mlp1_weight.scales", u8, (e, 2 * i2, h // 32)),
        (b + "mlp.mlp1_bias", bf, (e, 2 * i2)),
        (b + "mlp.mlp2_weight.blocks", u8, (e, h, i2 // 32, 16)),
        (b + "mlp.mlp2_weight.scales", u8, (e, h, i2 // 32)),
        (b + "mlp.mlp2_bias", bf, (e, h)),
    ]


def random_tensors(cfg: ModelConfig, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a random checkpoint, original-format names, in file order (lazily)."""
    h = cfg.hidden_size
    g = torch.Generator().manual_seed(seed)
    yield "embedding.weight", _normal(g, (cfg.vocab_size, h), 1.0)
    for i in range(cfg.num_hidden_layers):
        g = torch.Generator().manual_seed(seed * 1000 + i + 1)
        b = f"block.{i}."
        qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
        e, i2, nd = cfg.num_experts, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim
        yield b + "attn.norm.scale", _normal(g, (h,), 0.1, 1.0)
        yield b + "attn.qkv.weight", _normal(g, (qkv, h), 1.0 / math.sqrt(h))
        yield b + "attn.qkv.bias", _normal(g, (qkv,), 0.1)
        yield b + "attn.sinks", _normal(g, (cfg.num_attention_heads,), 1.0, 0.5)
        yield b + "attn.out.weight", _normal(g, (h, nd), 0.5 / math.sqrt(nd))
        yield b + "attn.out.bias", _normal(g, (h,), 0.05)
        yield b + "mlp.norm.scale", _normal(g, (h,), 0.1, 1.0)
        yield b + "mlp.gate.weight", _normal(g, (e, h), 1.0 / math.sqrt(h))
        yield b + "mlp.gate.bias", _normal(g, (e,), 0.1)
        blocks, scales = _mxfp4(g, e, 2 * i2, h)
        yield b + "mlp.mlp1_weight.blocks", blocks
        yield b + "mlp.mlp1_weight.scales", scales
        yield b + "mlp.mlp1_bias", _normal(g, (e, 2 * i2), 0.1)
        blocks, scales = _mxfp4(g, e, h, i2)
        yield b + "mlp.mlp2_weight.blocks", blocks
        yield b + "mlp.mlp2_weight.scales", scales
        yield b + "mlp.mlp2_bias", _normal(g, (e, h), 0.05)
    g = torch.Generator().manual_seed(seed * 1000 + 999)
    yield "norm.scale", _normal(g, (h,), 0.1, 1.0)
    yield "unembedding.weight", _normal(g, (cfg.vocab_size, h), 2.0 / math.sqrt(h))


def _original_specs(cfg: ModelConfig) -> list[_Spec]:
    h, v, bf = cfg.hidden_size, cfg.vocab_size, torch.bfloat16
    specs = [_Spec("embedding.weight", bf, (v, h))]
    for i in range(cfg.num_hidden_layers):
        specs += [_Spec(*s) for s in _layer_specs(cfg, i)]
    return [*specs, _Spec("norm.scale", bf, (h,)), _Spec("unembedding.weight", bf, (v, h))]


# ---- the Hugging Face names -----------------------------------------------------------------


def _to_hf(cfg: ModelConfig, name: str, t: torch.Tensor, mxfp4: bool) -> list[tuple[str, torch.Tensor]]:
    """One original-format tensor as the Hugging Face tensors it becomes (in HF file order)."""
    top = {"embedding.weight": "model.embed_tokens.weight", "norm.scale": "model.norm.weight"}
    if name in top:
        return [(top[name], t)]
    if name == "unembedding.weight":
        return [("lm_head.weight", t)]
    parts = name.split(".")
    b, rest = f"model.layers.{parts[1]}.", ".".join(parts[2:])
    nq, nkv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = parts[-1]
        q, k, v = t.split([nq, nkv, nkv], dim=0)
        return [
            (b + f"self_attn.{p}_proj.{kind}", x.contiguous()) for p, x in zip("qkv", (q, k, v), strict=True)
        ]
    if rest.endswith("_weight.blocks") or rest.endswith("_weight.scales"):
        proj = "gate_up_proj" if "mlp1" in rest else "down_proj"
        suffix = "_blocks" if rest.endswith("blocks") else "_scales"
        return [(b + "mlp.experts." + proj + suffix, t)] if mxfp4 else []
    return [(b + HF_LAYER_NAMES[rest], t)]


def _hf_stream(cfg: ModelConfig, seed: int, mxfp4: bool) -> Iterator[tuple[str, torch.Tensor]]:
    pending: dict[str, torch.Tensor] = {}
    for name, t in random_tensors(cfg, seed):
        yield from _to_hf(cfg, name, t, mxfp4)
        if not mxfp4 and ("_weight.blocks" in name or "_weight.scales" in name):
            pending[name] = t
            base = name.rsplit(".", 1)[0]
            if base + ".blocks" in pending and base + ".scales" in pending:
                w = dequantize(pending.pop(base + ".blocks"), pending.pop(base + ".scales"), torch.bfloat16)
                proj = "gate_up_proj" if "mlp1" in name else "down_proj"
                layer = name.split(".")[1]
                # (E, out, in) -> HF's (E, in, out)
                yield f"model.layers.{layer}.mlp.experts.{proj}", w.transpose(1, 2).contiguous()


def _hf_specs(cfg: ModelConfig, mxfp4: bool) -> list[_Spec]:
    specs: list[_Spec] = []
    for s in _original_specs(cfg):
        dummy = torch.empty(s.shape, dtype=s.dtype, device="meta")
        for name, t in _to_hf(cfg, s.name, dummy, mxfp4):
            specs.append(_Spec(name, t.dtype, tuple(t.shape)))
        if not mxfp4 and s.name.endswith("_weight.scales"):
            layer, e, h, i2 = s.name.split(".")[1], cfg.num_experts, cfg.hidden_size, cfg.intermediate_size
            proj, shape = ("gate_up_proj", (e, h, 2 * i2)) if "mlp1" in s.name else ("down_proj", (e, i2, h))
            specs.append(_Spec(f"model.layers.{layer}.mlp.experts.{proj}", torch.bfloat16, shape))
    return specs


# ---- writing ----------------------------------------------------------------------------------


def _shard(specs: list[_Spec], shard_bytes: int) -> list[list[_Spec]]:
    shards: list[list[_Spec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def write_random_checkpoint(
    out: str | Path,
    config: ModelConfig,
    *,
    format: str = "hf",
    mxfp4: bool = True,
    seed: int = 0,
    shard_bytes: int = 4 << 30,
) -> Path:
    """Write a random checkpoint of ``config`` into directory ``out`` and return it.

    ``format`` is "original" or "hf"; ``mxfp4=False`` (HF only) stores the experts as plain bf16.
    Tensors go into shards of at most ``shard_bytes`` (original: one file unless that is exceeded).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if format == "original":
        if not mxfp4:
            raise ValueError("the original format stores experts in MXFP4 only")
        specs, stream = _original_specs(config), random_tensors(config, seed)
        (out / "config.json").write_text(json.dumps(config.to_original_json(), indent=2) + "\n")
        (out / "dtypes.json").write_text(
            json.dumps({s.name: _ST_DTYPES[s.dtype] for s in specs}, indent=2) + "\n"
        )
    elif format == "hf":
        specs, stream = _hf_specs(config, mxfp4), _hf_stream(config, seed, mxfp4)
        (out / "config.json").write_text(json.dumps(config.to_hf_json(mxfp4=mxfp4), indent=2) + "\n")
        if config.vocab_size > 200012:
            generation = {
                "bos_token_id": 199998,
                "eos_token_id": [200002, 199999, 200012],
                "pad_token_id": 199999,
            }
            (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    else:
        raise ValueError(f"format must be 'original' or 'hf', not {format!r}")
    shards = _shard(specs, shard_bytes)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        write_safetensors(out / name, shard, stream)
    if format == "hf" and len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": {s.name: n for n, shard in zip(names, shards, strict=True) for s in shard},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gptoss_agent.model.random_checkpoint", description=__doc__.split("\n")[0]
    )
    p.add_argument("out", type=Path, help="directory to write")
    p.add_argument("--format", choices=["original", "hf"], default="hf")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--layers", type=int, help="number of layers (default: the preset's)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's, the real 201088)")
    p.add_argument("--experts", type=int, help="experts per layer (default: the preset's)")
    p.add_argument("--bf16", action="store_true", help="HF only: plain bf16 experts instead of MXFP4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-mb", type=int, default=4096, help="largest shard, MiB")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset]
    if args.layers:
        cfg = cfg.with_layers(args.layers)
    if args.vocab:
        cfg = replace(cfg, vocab_size=args.vocab)
    if args.experts:
        cfg = replace(cfg, num_experts=args.experts)
    try:
        out = write_random_checkpoint(
            args.out,
            cfg,
            format=args.format,
            mxfp4=not args.bf16,
            seed=args.seed,
            shard_bytes=args.shard_mb << 20,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"wrote {args.format}{'' if not args.bf16 else ' bf16'} checkpoint ({cfg.num_hidden_layers} layers, "
        f"{cfg.num_experts} experts, vocab {cfg.vocab_size}) to {out}: {size / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
