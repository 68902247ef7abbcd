"""Every engine says how long its context is: ``context_length`` (what the agent compacts against)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from gptoss_agent.model import LocalEngine, RemoteEngine
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.random_checkpoint import write_random_checkpoint
from gptoss_agent.model.remote import ContextTooLong
from remote_servers import ScriptedServer

FAST = {"retry_delay": 0.01, "read_timeout": 5.0, "connect_timeout": 2.0, "check_vocab": False}


def test_local_engine_and_its_sessions_report_the_models_context(tmp_path):
    cfg = replace(PRESETS["tiny"].with_layers(1), vocab_size=256, max_position_embeddings=300)
    engine = LocalEngine.from_checkpoint(write_random_checkpoint(tmp_path / "c", cfg), device="cpu")
    assert engine.context_length == 300 == engine.session().context_length
    out = list(engine.generate([i % 256 for i in range(290)], max_tokens=50))
    assert len(out) == 10  # generation ends at the context's end
    with pytest.raises(ValueError, match="does not fit the context of 300"):
        engine.generate([i % 256 for i in range(300)])


def test_remote_engine_learns_max_model_len_from_the_server():
    with ScriptedServer(max_model_len=4096) as server:
        assert RemoteEngine(server.url, **FAST).context_length == 4096


def test_remote_engine_takes_max_model_len_as_an_argument():
    with ScriptedServer(max_model_len=None) as server:  # type: ignore[arg-type]  # a server that does not say
        assert RemoteEngine(server.url, **FAST).context_length is None
        engine = RemoteEngine(server.url, max_model_len=100, **FAST)
        assert engine.context_length == 100
        list(engine.generate(list(range(30))))
        assert server.completions()[-1]["max_tokens"] == 70  # the room left in the context
        with pytest.raises(ContextTooLong, match="at most 100"):
            list(engine.generate(list(range(100))))
    with ScriptedServer(max_model_len=4096) as server:  # less than the server's: the smaller one
        assert RemoteEngine(server.url, max_model_len=1000, **FAST).context_length == 1000
