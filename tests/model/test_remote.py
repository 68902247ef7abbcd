"""RemoteEngine against a real vLLM server (CPU, float32) serving a tiny random gpt-oss checkpoint.

``scripts/setup_vllm.sh`` (sourced by scripts/test.sh) starts the server and exports
``GPTOSS_VLLM_URL`` and ``GPTOSS_VLLM_CHECKPOINT``. The server runs in float32, so greedy decoding
through vLLM equals greedy decoding through ``LocalEngine`` in float32 token for token.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from gptoss_agent.model import Sampling
from gptoss_agent.model.remote import (
    ContextTooLong,
    RemoteEngine,
    ServerUnavailable,
    StreamInterrupted,
    _looks_out_of_vocab,
    _looks_too_long,
)
from remote_servers import DroppingProxy
from vllm_server import vllm_server

pytestmark = pytest.mark.vllm

START, CHANNEL, MESSAGE, END, RETURN, CALL = 200006, 200005, 200008, 200007, 200002, 200012
STOP = {RETURN, CALL}
GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def vllm_url() -> str:
    if error := os.environ.get("GPTOSS_VLLM_ERROR"):
        pytest.fail(f"the vLLM server was to be started but was not: {error}")
    url = os.environ.get("GPTOSS_VLLM_URL")
    if not url:
        pytest.skip(
            "GPTOSS_VLLM_URL is not set: `source scripts/setup_vllm.sh` starts vLLM (scripts/test.sh does)"
        )
    return url


@pytest.fixture(scope="module")
def remote(vllm_url: str):
    with RemoteEngine(vllm_url) as engine:
        yield engine


@pytest.fixture(scope="module")
def local(vllm_url: str):
    from gptoss_agent.model import LocalEngine

    checkpoint = os.environ.get("GPTOSS_VLLM_CHECKPOINT")
    if not checkpoint:
        pytest.fail("GPTOSS_VLLM_CHECKPOINT is not set next to GPTOSS_VLLM_URL")
    return LocalEngine.from_checkpoint(checkpoint, device="cpu", dtype="float32")


def prompt(n: int, seed: int) -> list[int]:
    """A harmony-shaped prompt: a user message of ``n`` random text tokens, then the assistant's turn."""
    rng = random.Random(seed)
    body = [rng.randrange(0, 199_998) for _ in range(n)]
    return [START, 1428, MESSAGE, *body, END, START, 173781]


def test_greedy_matches_local_engine_token_for_token(remote, local):
    # Prompt lengths on both sides of the 128-token sliding window of the even layers.
    for n, seed in [(4, 1), (60, 2), (300, 3)]:
        ids = prompt(n, seed)
        want = list(local.generate(ids, sampling=GREEDY, max_tokens=24))
        got = list(remote.generate(ids, sampling=GREEDY, max_tokens=24))
        assert got == want, f"prompt of {len(ids)} tokens"
        assert remote.last_stats.prompt_tokens == len(ids)
        assert remote.last_stats.generated_tokens == 24


def test_stop_tokens_end_generation(remote):
    ids = prompt(20, 4)
    free = list(remote.generate(ids, sampling=GREEDY, max_tokens=16))
    stop_at = free[5]
    cut = free.index(stop_at) + 1
    got = list(remote.generate(ids, stop={stop_at, RETURN}, sampling=GREEDY, max_tokens=16))
    assert got == free[:cut]
    assert got[-1] == stop_at


def test_streaming_and_non_streaming_agree(vllm_url, remote):
    with RemoteEngine(vllm_url, stream=False) as whole:
        for sampling in (GREEDY, Sampling(temperature=1.0, top_p=0.9, seed=7)):
            ids = prompt(30, 5)
            streamed = list(remote.generate(ids, stop=STOP, sampling=sampling, max_tokens=20))
            at_once = list(whole.generate(ids, stop=STOP, sampling=sampling, max_tokens=20))
            assert streamed == at_once
            assert whole.last_stats.generated_tokens == len(at_once)


def test_seeded_sampling_repeats_and_seeds_differ(remote):
    ids = prompt(10, 6)
    draw = [
        list(remote.generate(ids, sampling=Sampling(temperature=1.0, seed=s), max_tokens=12))
        for s in (1, 1, 2)
    ]
    assert draw[0] == draw[1]
    assert draw[0] != draw[2]


def test_concurrent_streams_share_the_server_and_match_sequential(remote):
    prompts = [prompt(8 + 5 * i, 10 + i) for i in range(8)]
    sequential = [list(remote.generate(p, sampling=GREEDY, max_tokens=12)) for p in prompts]

    async def all_at_once() -> list[list[int]]:
        async def one(p: list[int]) -> list[int]:
            return [t async for t in remote.agenerate(p, sampling=GREEDY, max_tokens=12)]

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await remote.aclose()

    assert asyncio.run(all_at_once()) == sequential


def test_prefix_cache_reuse_is_reported(remote):
    ids = prompt(400, 7)
    list(remote.generate(ids, sampling=GREEDY, max_tokens=2))
    list(remote.generate([*ids, 200, 300], sampling=GREEDY, max_tokens=2))
    stats = remote.last_stats
    assert stats.prompt_tokens == len(ids) + 2
    assert stats.reused_tokens >= 256  # whole 128-token blocks of the shared prefix
    assert stats.prefilled_tokens == stats.prompt_tokens - stats.reused_tokens


def test_server_dying_mid_stream_is_a_clear_error(vllm_url, remote):
    ids = prompt(12, 8)
    whole = list(remote.generate(ids, sampling=GREEDY, max_tokens=10))
    with (
        DroppingProxy(vllm_url, after_events=4) as proxy,
        RemoteEngine(proxy.url, retry_delay=0.01) as engine,
    ):
        got: list[int] = []
        with pytest.raises(StreamInterrupted, match=r"broke after \d+ tokens and is not retried") as info:
            got.extend(engine.generate(ids, sampling=GREEDY, max_tokens=10))
    assert got == info.value.tokens
    assert 0 < len(got) < 10
    assert got == whole[: len(got)]  # what did arrive is right, and nothing repeats


def test_context_limit_and_vllms_own_messages(vllm_url, remote):
    limit = remote.served_model.max_model_len
    assert limit == 4096
    with pytest.raises(ContextTooLong):
        list(remote.generate([1] * limit))
    # Near the limit, max_tokens is cut to the room left instead of failing.
    assert len(list(remote.generate([1] * (limit - 3), sampling=GREEDY))) == 3
    # The texts the engine maps to its errors are vLLM's actual ones.
    name = remote.served_model.name
    too_long = httpx.post(
        f"{vllm_url}/v1/completions",
        json={"model": name, "prompt": [1] * (limit + 1), "max_tokens": 1},
        timeout=60,
    )
    assert too_long.status_code == 400 and _looks_too_long(too_long.json()["error"]["message"])
    out_of_vocab = httpx.post(
        f"{vllm_url}/v1/completions",
        json={"model": name, "prompt": [1], "max_tokens": 1, "stop_token_ids": [201088]},
        timeout=60,
    )
    assert out_of_vocab.status_code == 400 and _looks_out_of_vocab(out_of_vocab.json()["error"]["message"])


def test_load_engine_gives_a_remote_engine_for_a_url(vllm_url):
    from gptoss_agent.model import load_engine

    engine = load_engine(vllm_url)
    assert isinstance(engine, RemoteEngine)
    assert len(list(engine.generate(prompt(3, 9), sampling=GREEDY, max_tokens=3))) == 3


def test_agent_round_trip_with_a_scripted_tool_call(remote, local, enc):
    """The agent loop over the server: a scripted tool call, the real tool, then vLLM writes the answer.

    A random checkpoint cannot decide to call a tool, so the first turn is scripted; the second
    turn's prompt (with the tool's result rendered in it) goes to vLLM, which writes the answer's
    text after a forced ``final`` header. The answer must be what LocalEngine writes for that prompt.
    """
    from gptoss_agent.agent import Agent, ScriptedEngine, StopReason
    from gptoss_agent.tools import tool

    calls: list[str] = []

    @tool
    def weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"Sunny and 21 C in {city}."

    header = list(enc.encode("<|channel|>final<|message|>", allowed_special="all"))
    seen: dict[str, list[int]] = {}

    def answer_from_vllm(prompt_ids):
        forced = [*prompt_ids, *header]
        seen["prompt"], seen["local"] = forced, list(local.generate(forced, sampling=GREEDY, max_tokens=6))
        seen["remote"] = list(remote.generate(forced, stop=STOP, sampling=GREEDY, max_tokens=6))
        seen["stats"] = remote.last_stats  # per thread: this is the agent's engine thread
        return [*header, *seen["remote"], RETURN]

    script = [
        ' to=functions.weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
        answer_from_vllm,
    ]
    engine = ScriptedEngine(script, enc=enc)
    result = Agent(engine, [weather], enc=enc, date="2026-11-27", max_steps=4).run("Weather in Oslo?")

    assert calls == ["Oslo"]
    assert [c.recipient for c in result.tool_calls] == ["functions.weather"]
    tool_output = list(enc.encode("Sunny and 21 C in Oslo."))
    prompt = seen["prompt"]
    assert any(prompt[i : i + len(tool_output)] == tool_output for i in range(len(prompt)))
    assert result.stop_reason is StopReason.ANSWER, result.stop_reason
    assert seen["remote"] == seen["local"]
    assert result.answer == enc.decode(seen["remote"])
    assert seen["stats"].prompt_tokens == len(prompt)


def _tokenizer_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The served checkpoint plus an o200k_harmony ``tokenizer.json`` (built from the tiktoken ranks)."""
    if (out / "tokenizer.json").exists():
        return out
    from gptoss_agent.model.tokenizer import O200K_PATTERN, SPECIAL_TOKENS
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(os.environ["TIKTOKEN_ENCODINGS_BASE"]) / "o200k_base.tiktoken"
    specials = [name for name, _ in sorted(SPECIAL_TOKENS.items(), key=lambda item: item[1])]
    tokenizer = TikTokenConverter(
        vocab_file=str(ranks), pattern=O200K_PATTERN, extra_special_tokens=specials
    ).converted()
    assert [tokenizer.token_to_id(name) for name in specials] == sorted(SPECIAL_TOKENS.values())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in checkpoint.iterdir():
        (tmp / item.name).symlink_to(item.resolve())
    tokenizer.save(str(tmp / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|return|>",
        "pad_token": "<|endoftext|>",
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@pytest.fixture(scope="module")
def own_server(vllm_url):
    """A second, short-lived vLLM server started *with* a tokenizer (no --skip-tokenizer-init)."""
    checkpoint = Path(os.environ["GPTOSS_VLLM_CHECKPOINT"])
    served = _tokenizer_checkpoint(checkpoint, checkpoint.with_name(checkpoint.name + "-tokenizer"))
    extra = ("--max-model-len", "4096", "--max-num-seqs", "4")
    with vllm_server(served, "gpt-oss-tiny", served.parent / "own-server.log", *extra) as server:
        yield server


def test_a_server_with_its_own_tokenizer_then_killed_mid_stream(own_server, remote):
    """Same tokens from a normal server (it detokenizes too); then SIGKILL it while it streams."""
    url, proc = own_server
    with RemoteEngine(url) as engine:
        for n, seed in [(6, 21), (90, 22)]:
            ids = prompt(n, seed)
            want = list(remote.generate(ids, stop=STOP, sampling=GREEDY, max_tokens=16))
            assert list(engine.generate(ids, stop=STOP, sampling=GREEDY, max_tokens=16)) == want

        got: list[int] = []
        stream = engine.generate(prompt(10, 23), sampling=GREEDY, max_tokens=3000)
        with pytest.raises(StreamInterrupted, match="broke after") as info:
            for token in stream:
                got.append(token)
                if len(got) == 3:
                    os.killpg(proc.pid, signal.SIGKILL)
        assert got == info.value.tokens and len(got) >= 3
        assert "not retried" in str(info.value)
        with pytest.raises(ServerUnavailable, match="is the vLLM server running"):
            list(engine.generate(prompt(4, 24), max_tokens=2))
