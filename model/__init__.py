"""The model: tokenizer, checkpoint loading, the torch model, and the ``Engine`` seam."""

from gptoss_agent.model.checkpoint import CheckpointError
from gptoss_agent.model.config import PRESETS, ModelConfig
from gptoss_agent.model.engine import Engine, GenerationStats, Sampling
from gptoss_agent.model.local import LocalEngine, load_engine
from gptoss_agent.model.remote import RemoteConfig, RemoteEngine, RemoteEngineError
from gptoss_agent.model.tokenizer import SPECIAL_TOKENS, TokenizerNotFound, load_tokenizer

__all__ = ["SPECIAL_TOKENS", "Engine", "GenerationStats", "Sampling", "TokenizerNotFound", "load_tokenizer"]
__all__ += ["PRESETS", "CheckpointError", "LocalEngine", "ModelConfig", "load_engine"]
__all__ += ["RemoteConfig", "RemoteEngine", "RemoteEngineError"]
