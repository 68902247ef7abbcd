"""LocalEngine sessions: longest-common-prefix reuse past the sliding window, one engine shared by
threads and asyncio tasks, batched decode across sessions, bounded idle caches."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest
import torch
from gptoss_agent.model import Engine, LocalEngine, Sampling
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

VOCAB = 1024
GREEDY = Sampling(temperature=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = replace(PRESETS["tiny"].with_layers(3), vocab_size=VOCAB)
    assert cfg.sliding_window == 128
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "hf", cfg, format="hf")


def new_engine(ckpt, **options) -> LocalEngine:
    return LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="fp32", **options)


@pytest.fixture
def engine(ckpt) -> LocalEngine:
    return new_engine(ckpt)


def prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (n,), generator=g).tolist()  # ids >= 1000 are free for markers


def cold(ckpt, ids: list[int], n: int) -> list[int]:
    return list(new_engine(ckpt).generate(ids, sampling=GREEDY, max_tokens=n))


def dropped_reasoning_turn(gen, shared: list[int]) -> list[int]:
    """The measured case: a 400-token prefix, a 2,100-token middle (the finished turn's reasoning and
    tool results, which the next turn drops), then a 540-token prompt sharing only the prefix."""
    first = list(gen(shared, sampling=GREEDY, max_tokens=5))
    list(gen(shared + first + prompt(2100, seed=2), sampling=GREEDY, max_tokens=3))
    nxt = shared + prompt(140, seed=3)
    assert nxt[400] != first[0]  # the common prefix is exactly the 400 shared tokens
    return nxt


@pytest.mark.parametrize("how", ["engine", "session"])
def test_reuse_is_the_common_prefix_across_a_dropped_reasoning_turn(ckpt, engine, how):
    gen = engine.generate if how == "engine" else engine.session().generate
    shared = prompt(400, seed=1)
    nxt = dropped_reasoning_turn(gen, shared)
    out = gen(nxt, sampling=GREEDY, max_tokens=8)
    tokens = list(out)
    stats = out.stats
    assert (stats.prompt_tokens, stats.reused_tokens, stats.prefilled_tokens) == (540, 400, 140)
    assert stats.reuse_shortfall is None
    assert tokens == cold(ckpt, nxt, 8)  # greedy tokens after the roll-back equal a cold run


def test_when_reuse_stops_short_the_stats_say_why(ckpt):
    engine = new_engine(ckpt, snapshot_rows=0)  # no snapshots: today's behaviour
    session = engine.session()
    nxt = dropped_reasoning_turn(session.generate, prompt(400, seed=1))
    tokens = list(session.generate(nxt, sampling=GREEDY, max_tokens=8))
    stats = session.last_stats
    assert stats.reused_tokens == 0 and stats.prefilled_tokens == 540
    assert stats.reuse_shortfall is not None and "shares 400 tokens" in stats.reuse_shortfall
    assert tokens == cold(ckpt, nxt, 8)


def test_a_message_start_is_restorable_after_an_edit_further_on(ckpt):
    # compaction rewrites an old tool result: the prompt branches a few tokens after a <|start|>
    engine = new_engine(ckpt, snapshot_tokens={1001})
    session = engine.session()
    head, start, header = prompt(300, seed=4), [1001], prompt(6, seed=5)
    long = head + start + header + prompt(900, seed=6)
    list(session.generate(long, sampling=GREEDY, max_tokens=2))
    edited = head + start + header + prompt(50, seed=7)
    tokens = list(session.generate(edited, sampling=GREEDY, max_tokens=6))
    assert session.last_stats.reused_tokens == 307
    assert tokens == cold(ckpt, edited, 6)


def test_sessions_are_engines_with_their_own_caches(ckpt, engine):
    a, b = engine.session(), engine.session()
    assert isinstance(a, Engine) and a.context_length == engine.context_length
    pa, pb = prompt(60, seed=10), prompt(70, seed=11)
    out_a = list(a.generate(pa, sampling=GREEDY, max_tokens=4))
    out_b = list(b.generate(pb, sampling=GREEDY, max_tokens=4))
    more_a = list(a.generate(pa + out_a + [3, 4], sampling=GREEDY, max_tokens=4))
    assert a.last_stats.reused_tokens == 63  # b's call did not touch a's cache
    assert out_b == cold(ckpt, pb, 4)
    assert more_a == cold(ckpt, pa + out_a + [3, 4], 4)


def test_batched_decode_equals_each_alone(ckpt, engine):
    model = engine.model
    lengths = [100, 127, 150, 500]  # each crosses the window at its own step; the last drops rows
    alone, batched = [], []
    for i, n in enumerate(lengths):
        s = engine.session()
        s.prefill(prompt(n, seed=20 + i))
        alone.append(s)
        t = engine.session()
        t.prefill(prompt(n, seed=20 + i))
        batched.append(t)
    tokens = [7, 8, 9, 10]
    for _ in range(40):
        one = torch.stack([s.decode_one(tok) for s, tok in zip(alone, tokens, strict=True)])
        many = model.decode_batch(torch.tensor(tokens), [t.cache for t in batched])
        torch.testing.assert_close(many, one, atol=1e-4, rtol=1e-4)
        assert many.argmax(-1).tolist() == one.argmax(-1).tolist()
        tokens = one.argmax(-1).tolist()


def conversation(gen, seed: int) -> list[list[int]]:
    """Three calls of one agent-like conversation (each prompt extends the last)."""
    ids = prompt(90 + 10 * seed, seed=seed)
    outs = []
    for step in range(3):
        out = list(gen(ids, sampling=GREEDY, max_tokens=12))
        outs.append(out)
        ids = ids + out + prompt(20, seed=100 * seed + step)
    return outs


def test_threads_over_one_engine_get_what_each_gets_alone(ckpt, engine):
    alone = {k: conversation(new_engine(ckpt).generate, k) for k in range(4)}
    got: dict[int, list[list[int]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run(k: int) -> None:
        try:
            barrier.wait()
            got[k] = conversation(engine.generate, k)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and got == alone
    assert engine._batcher.rows > engine._batcher.batches  # some steps ran as batches
    assert len(engine._pool) >= 4  # each conversation had its own cache


def test_asyncio_gather_over_one_engine(ckpt, engine):
    alone = [conversation(new_engine(ckpt).generate, k) for k in range(3)]

    async def main() -> list[list[list[int]]]:
        return await asyncio.gather(*(asyncio.to_thread(conversation, engine.generate, k) for k in range(3)))

    assert asyncio.run(main()) == alone


def test_idle_sessions_are_dropped_past_the_cache_budget(ckpt):
    engine = new_engine(ckpt)
    sessions = [engine.session() for _ in range(3)]
    ids = [prompt(200, seed=30 + i) for i in range(3)]
    for s, p in zip(sessions, ids, strict=True):
        list(s.generate(p, sampling=GREEDY, max_tokens=2))
    one = sessions[0].cache_bytes()
    assert engine.cache_bytes() >= 3 * one
    engine.cache_budget = int(2.5 * one)
    list(sessions[2].generate(ids[2], sampling=GREEDY, max_tokens=2))  # a call ends: the budget applies
    assert sessions[0].cached_tokens == [] and sessions[0].cache_bytes() == 0  # least recently used
    assert sessions[1].cached_tokens and sessions[2].cached_tokens
    assert engine.cache_bytes() <= engine.cache_budget
    again = list(sessions[0].generate(ids[0], sampling=GREEDY, max_tokens=4))
    stats = sessions[0].last_stats
    assert stats.reused_tokens == 0 and "cache_budget" in (stats.reuse_shortfall or "")
    assert again == cold(ckpt, ids[0], 4)


def test_agents_sharing_a_system_prompt_keep_their_own_histories(ckpt, engine):
    system = prompt(300, seed=40)
    a, b = system + prompt(20, seed=41), system + prompt(25, seed=42)
    out_a = list(engine.generate(a, sampling=GREEDY, max_tokens=4))
    out_b = list(engine.generate(b, sampling=GREEDY, max_tokens=4))
    assert engine.last_stats.reused_tokens == 300  # b started from a copy of the system prompt
    a2, b2 = a + out_a + [5, 6], b + out_b + [7, 8]
    assert list(engine.generate(a2, sampling=GREEDY, max_tokens=4)) == cold(ckpt, a2, 4)
    assert engine.last_stats.reused_tokens == len(a) + 3  # a's own history, untouched by b
    list(engine.generate(b2, sampling=GREEDY, max_tokens=4))
    assert engine.last_stats.reused_tokens == len(b) + 3
