"""The model: tokenizer, checkpoint loading, the torch model, and the ``Engine`` seam."""

from gptoss_agent.model.engine import Engine, GenerationStats, Sampling
from gptoss_agent.model.tokenizer import SPECIAL_TOKENS, TokenizerNotFound, load_tokenizer

__all__ = ["SPECIAL_TOKENS", "Engine", "GenerationStats", "Sampling", "TokenizerNotFound", "load_tokenizer"]
