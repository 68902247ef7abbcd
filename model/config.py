"""Model dimensions: one dataclass, the real gpt-oss presets, and both on-disk config formats."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["PRESETS", "ModelConfig"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The dimensions of a gpt-oss model (names follow the original ``config.json``)."""

    num_hidden_layers: int = 24
    """Transformer blocks."""
    num_experts: int = 32
    """Experts per MoE layer."""
    experts_per_token: int = 4
    """Experts each token is routed to (top-k)."""
    vocab_size: int = 201088
    """Rows of the embedding and the unembedding."""
    hidden_size: int = 2880
    """Width of the residual stream (a multiple of 32 where the experts are MXFP4: its block size)."""
    intermediate_size: int = 2880
    """Width of one expert's SwiGLU (a multiple of 32 for MXFP4 experts)."""
    swiglu_limit: float = 7.0
    """Clamp of the gate (above) and the linear half (both sides)."""
    swiglu_alpha: float = 1.702
    """Sigmoid gain of the SwiGLU."""
    head_dim: int = 64
    num_attention_heads: int = 64
    """Query heads."""
    num_key_value_heads: int = 8
    """Key/value heads (grouped-query attention)."""
    sliding_window: int = 128
    """Keys a query sees on the banded layers (itself included)."""
    initial_context_length: int = 4096
    """YaRN's original context."""
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    """YaRN beta_slow."""
    rope_ntk_beta: float = 32.0
    """YaRN beta_fast."""
    max_position_embeddings: int = 131072
    """Longest context the RoPE is scaled for."""
    rms_norm_eps: float = 1e-5
    layer_types: tuple[str, ...] = field(default=())
    """Per layer, "sliding_attention" or "full_attention"; empty means even layers slide."""

    def __post_init__(self) -> None:
        for name, (low, high) in _INT_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high:,}, got {value:,}")
        for name, positive in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if positive and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not self.layer_types:
            types = tuple(
                "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)
            )
            object.__setattr__(self, "layer_types", types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        bad = [t for t in self.layer_types if t not in ("sliding_attention", "full_attention")]
        if bad:
            raise ValueError(f"layer_types holds {bad[0]!r}: expected sliding_attention or full_attention")
        if self.experts_per_token > self.num_experts:
            raise ValueError(
                f"experts_per_token ({self.experts_per_token}) is more than num_experts ({self.num_experts})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    def check_mxfp4(self) -> None:
        """Raise ``ValueError`` unless the expert widths fit MXFP4's 32-value blocks."""
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of 32 (MXFP4 block size)")

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends only to its last ``sliding_window`` positions."""
        return self.layer_types[layer] == "sliding_attention"

    def with_layers(self, n: int) -> ModelConfig:
        """The same model cut (or grown) to ``n`` layers, keeping the even/odd attention pattern."""
        return replace(self, num_hidden_layers=n, layer_types=())

    # ---- on-disk formats -------------------------------------------------------------------

    def to_original_json(self) -> dict[str, Any]:
        """``config.json`` as the original (openai/gpt-oss ``original/``) checkpoints ship it."""
        return {
            "num_hidden_layers": self.num_hidden_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.initial_context_length,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.rope_ntk_alpha,
            "rope_ntk_beta": self.rope_ntk_beta,
        }

    def to_hf_json(self, *, mxfp4: bool) -> dict[str, Any]:
        """``config.json`` as Hugging Face's openai/gpt-oss-20b ships it (``mxfp4=False``: plain bf16)."""
        cfg: dict[str, Any] = {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": 200002 if self.vocab_size > 200002 else None,
            "experts_per_token": self.experts_per_token,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "pad_token_id": 199999 if self.vocab_size > 199999 else None,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.55.0",
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }
        if mxfp4:
            cfg["quantization_config"] = {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
                "quant_method": "mxfp4",
            }
        return cfg

    @classmethod
    def from_json(cls, cfg: Any) -> ModelConfig:
        """Read either format's ``config.json`` (Hugging Face when ``model_type`` is present).

        Raises ``ValueError`` naming the field for a value of the wrong type, out of range or
        missing (the message uses the file's own key where it differs from ours).
        """
        if not isinstance(cfg, dict):
            raise ValueError(f"the file holds a JSON {type(cfg).__name__}, expected an object")
        try:
            return cls._from_json(cfg)
        except KeyError as e:
            raise ValueError(f"the field {e.args[0]} is missing") from None
        except ValueError as e:
            message = str(e)
            if "model_type" in cfg or "num_local_experts" in cfg:
                for ours, theirs in _HF_NAMES.items():
                    if message.startswith(ours + " ") or message.startswith(ours + "="):
                        message = theirs + message[len(ours) :]
                        break
            raise ValueError(message) from None
        except TypeError as e:
            raise ValueError(f"a field has the wrong type ({e})") from None

    @classmethod
    def _from_json(cls, cfg: dict[str, Any]) -> ModelConfig:
        if "model_type" in cfg or "num_local_experts" in cfg:
            rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
            if not isinstance(rope, dict):
                raise ValueError(f"rope_scaling must be an object, got {rope!r}")
            return cls(
                num_hidden_layers=cfg["num_hidden_layers"],
                num_experts=cfg["num_local_experts"],
                experts_per_token=cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4)),
                vocab_size=cfg["vocab_size"],
                hidden_size=cfg["hidden_size"],
                intermediate_size=cfg["intermediate_size"],
                swiglu_limit=cfg.get("swiglu_limit", 7.0),
                head_dim=cfg.get("head_dim", 64),
                num_attention_heads=cfg["num_attention_heads"],
                num_key_value_heads=cfg["num_key_value_heads"],
                sliding_window=cfg.get("sliding_window") or 128,
                initial_context_length=rope.get("original_max_position_embeddings", 4096),
                rope_theta=cfg["rope_theta"] if "rope_theta" in cfg else rope.get("rope_theta", 150000.0),
                rope_scaling_factor=rope.get("factor", 32.0),
                rope_ntk_alpha=rope.get("beta_slow", 1.0),
                rope_ntk_beta=rope.get("beta_fast", 32.0),
                max_position_embeddings=cfg.get("max_position_embeddings", 131072),
                rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
                layer_types=tuple(cfg.get("layer_types") or ()),
            )
        known = {k: v for k, v in cfg.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_INT_LIMITS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, 1024),
    "num_experts": (1, 4096),
    "experts_per_token": (1, 4096),
    "vocab_size": (1, 1 << 24),
    "hidden_size": (1, 1 << 17),
    "intermediate_size": (1, 1 << 18),
    "head_dim": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "sliding_window": (1, 1 << 24),
    "initial_context_length": (1, 1 << 24),
    "max_position_embeddings": (1, 1 << 24),
}
"""Integer fields and the range each may take: generous bounds (gpt-oss-120b is far inside them)
that refuse what no machine could hold (a 10^12-row vocabulary, a 10^15-token context)."""

_FLOAT_FIELDS: dict[str, bool] = {
    "swiglu_limit": True,
    "swiglu_alpha": False,
    "rope_theta": True,
    "rope_scaling_factor": True,
    "rope_ntk_alpha": False,
    "rope_ntk_beta": False,
    "rms_norm_eps": True,
}
"""Float fields, each True when it must also be positive."""

_HF_NAMES = {
    "num_experts": "num_local_experts",
    "experts_per_token": "num_experts_per_tok",
    "initial_context_length": "rope_scaling.original_max_position_embeddings",
    "rope_scaling_factor": "rope_scaling.factor",
    "rope_ntk_alpha": "rope_scaling.beta_slow",
    "rope_ntk_beta": "rope_scaling.beta_fast",
}
"""Our field names that a Hugging Face ``config.json`` spells differently."""


PRESETS: dict[str, ModelConfig] = {
    "20b": ModelConfig(num_hidden_layers=24, num_experts=32),
    "120b": ModelConfig(num_hidden_layers=36, num_experts=128),
    # Same architecture, small enough for tests: head_dim stays 64 (vLLM's CPU attention needs it).
    "tiny": ModelConfig(
        num_hidden_layers=2,
        num_experts=8,
        experts_per_token=4,
        vocab_size=201088,
        hidden_size=128,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
"""Real gpt-oss dimensions by name, plus ``tiny`` for tests."""
