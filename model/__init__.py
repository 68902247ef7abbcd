"""The model: tokenizer, checkpoint loading, the torch model, and the ``Engine`` seam.

Names are imported on first use, so that ``import gptoss_agent.model`` (and the agent, which
needs only the ``Engine`` seam) does not load torch until a local model is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gptoss_agent.model.engine import Deadline, Engine, GenerationStats, Sampling
from gptoss_agent.model.tokenizer import SPECIAL_TOKENS, TokenizerNotFound, load_tokenizer

if TYPE_CHECKING:
    from gptoss_agent.model.checkpoint import CheckpointError
    from gptoss_agent.model.config import PRESETS, ModelConfig
    from gptoss_agent.model.local import LocalEngine, load_engine
    from gptoss_agent.model.remote import RemoteConfig, RemoteEngine, RemoteEngineError

_LAZY = {
    "CheckpointError": "checkpoint",
    "PRESETS": "config",
    "ModelConfig": "config",
    "LocalEngine": "local",
    "load_engine": "local",
    "RemoteConfig": "remote",
    "RemoteEngine": "remote",
    "RemoteEngineError": "remote",
}

__all__ = [
    "PRESETS",
    "SPECIAL_TOKENS",
    "CheckpointError",
    "Deadline",
    "Engine",
    "GenerationStats",
    "LocalEngine",
    "ModelConfig",
    "RemoteConfig",
    "RemoteEngine",
    "RemoteEngineError",
    "Sampling",
    "TokenizerNotFound",
    "load_engine",
    "load_tokenizer",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"gptoss_agent.model.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
