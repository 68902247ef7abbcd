"""RemoteEngine against real HTTP servers on 127.0.0.1 that speak vLLM's wire format and misbehave.

No vLLM needed: these pin the request the engine sends, the stream decoding, the retry rule and
every error message a user can meet.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from gptoss_agent.model import GenerationStats, Sampling
from gptoss_agent.model.remote import (
    ContextTooLong,
    NotGptOss,
    RemoteEngine,
    RemoteEngineError,
    RemoteTimeout,
    ServerError,
    ServerUnavailable,
    StreamInterrupted,
)
from remote_servers import MODEL, Reply, ScriptedServer, free_port

CALL, RETURN = 200012, 200002
FAST = {"retry_delay": 0.01, "read_timeout": 5.0, "connect_timeout": 2.0}


def engine(url: str, **kw) -> RemoteEngine:
    return RemoteEngine(url, **{**FAST, **kw})


def test_request_carries_token_ids_stop_sampling_and_key(monkeypatch):
    monkeypatch.setenv("GPTOSS_API_KEY", "sekrit")
    with ScriptedServer([Reply(tokens=[7, 8, 9])], api_key="sekrit") as server:
        eng = engine(server.url + "/v1/")  # a trailing /v1 is tolerated
        out = list(
            eng.generate(
                [1, 2, 3],
                stop={RETURN, CALL},
                sampling=Sampling(temperature=0.5, top_p=0.9, seed=4),
                max_tokens=3,
            )
        )
    assert out == [7, 8, 9]
    body = server.completions()[0]
    assert body["model"] == MODEL
    assert body["prompt"] == [1, 2, 3]
    assert body["stop_token_ids"] == [RETURN, CALL]
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.5, 0.9, 4, 3)
    assert body["return_token_ids"] is True and body["stream"] is True and body["ignore_eos"] is True
    assert all(headers["Authorization"] == "Bearer sekrit" for _, headers in server.requests)


def test_max_tokens_defaults_to_the_room_left_in_the_context():
    with ScriptedServer(max_model_len=100) as server:
        list(engine(server.url).generate(list(range(30))))
    assert server.completions()[0]["max_tokens"] == 70


def test_stop_token_ends_generation_whether_or_not_the_server_lists_it():
    for include in (True, False):
        reply = Reply(tokens=[5, 6], finish_reason="stop", stop_reason=CALL, include_stop_in_ids=include)
        with ScriptedServer([reply]) as server:
            assert list(engine(server.url).generate([1], stop={CALL, RETURN})) == [5, 6, CALL]
            assert list(engine(server.url, stream=False).generate([1], stop={CALL, RETURN})) == [5, 6, CALL]


def test_stats_count_prompt_generated_and_cached_tokens():
    usage = {"prompt_tokens": 300, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 256}}
    with ScriptedServer([Reply(tokens=[4, 5, 6], usage=usage)]) as server:
        eng = engine(server.url)
        mine = GenerationStats()
        assert list(eng.generate(list(range(300)), stats=mine)) == [4, 5, 6]
    assert eng.last_stats is mine
    assert (mine.prompt_tokens, mine.reused_tokens, mine.prefilled_tokens, mine.generated_tokens) == (
        300,
        256,
        44,
        3,
    )


def test_5xx_before_the_first_token_is_retried_once():
    with ScriptedServer([Reply(status=503), Reply(tokens=[1, 2])]) as server:
        assert list(engine(server.url).generate([3])) == [1, 2]
    assert len(server.completions()) == 2


def test_5xx_twice_gives_a_server_error():
    with (
        ScriptedServer([Reply(status=500, error="boom")]) as server,
        pytest.raises(ServerError, match="500: boom"),
    ):
        list(engine(server.url).generate([3]))
    assert len(server.completions()) == 2


def test_error_event_before_any_token_is_retried():
    with ScriptedServer([Reply(fail_after=0, failure="error_event"), Reply(tokens=[9])]) as server:
        assert list(engine(server.url).generate([3])) == [9]


def test_error_event_mid_stream_is_not_retried_and_nothing_repeats():
    with ScriptedServer(
        [Reply(tokens=[1, 2, 3, 4], fail_after=2, failure="error_event"), Reply(tokens=[1, 2, 3, 4])]
    ) as server:
        got: list[int] = []
        with pytest.raises(StreamInterrupted, match="after 2 tokens") as info:
            got.extend(engine(server.url).generate([3]))
    assert got == [1, 2] and info.value.tokens == [1, 2]
    assert len(server.completions()) == 1


def test_connection_dropped_mid_stream():
    with ScriptedServer([Reply(tokens=[1, 2, 3], fail_after=1, failure="drop")]) as server:
        got: list[int] = []
        with pytest.raises(StreamInterrupted, match="broke after 1 tokens"):
            got.extend(engine(server.url).generate([3]))
    assert got == [1]


def test_connection_dropped_before_any_token_is_retried():
    with ScriptedServer([Reply(fail_after=0, failure="drop"), Reply(tokens=[4])]) as server:
        assert list(engine(server.url).generate([3])) == [4]


def test_malformed_event_mid_stream():
    reply = Reply(tokens=[1, 2, 3], fail_after=1, failure="garbage")
    with ScriptedServer([reply]) as server, pytest.raises(StreamInterrupted, match="malformed event"):
        list(engine(server.url).generate([3]))


def test_a_stalled_stream_hits_the_read_deadline():
    with ScriptedServer([Reply(tokens=[1, 2], fail_after=1, failure="stall", stall=3.0)]) as server:
        start = time.monotonic()
        with pytest.raises(StreamInterrupted, match=r"sent nothing for 0\.5s"):
            list(engine(server.url, read_timeout=0.5).generate([3]))
        assert time.monotonic() - start < 2.5


def test_a_server_that_never_answers_times_out_without_retry():
    with ScriptedServer([Reply(failure="stall", stall=3.0)]) as server:
        with pytest.raises(RemoteTimeout, match="read_timeout"):
            list(engine(server.url, read_timeout=0.5).generate([3]))
        assert len(server.completions()) == 1


def test_server_down():
    with pytest.raises(ServerUnavailable, match="is vLLM running"):
        list(engine(f"http://127.0.0.1:{free_port()}").generate([1]))


def test_wrong_url_is_not_an_openai_server():
    with ScriptedServer(models_status=404) as server, pytest.raises(ServerUnavailable, match="404"):
        list(engine(server.url).generate([1]))


def test_missing_api_key_is_explained(monkeypatch):
    monkeypatch.delenv("GPTOSS_API_KEY", raising=False)
    with ScriptedServer(api_key="k") as server, pytest.raises(ServerError, match="GPTOSS_API_KEY"):
        list(engine(server.url).generate([1]))


def test_a_model_that_is_not_gpt_oss_is_refused_before_any_work():
    vllm_says = (
        400,
        "token_id(s) [201087] in stop_token_ids contain out-of-vocab token ids. Vocabulary size: 128256",
    )
    with ScriptedServer(probe=lambda body: vllm_says) as server:
        with pytest.raises(NotGptOss, match=r"not gpt-oss.*128256"):
            list(engine(server.url).generate([1]))
        assert server.completions() == []


def test_context_too_long_is_caught_before_sending_and_from_the_server():
    with ScriptedServer(max_model_len=8) as server:
        with pytest.raises(ContextTooLong, match="at most 8"):
            list(engine(server.url).generate(list(range(8))))
        assert server.completions() == []
    vllm_says = "This model's maximum context length is 8 tokens. However, you requested 9 tokens."
    with ScriptedServer([Reply(status=400, error=vllm_says)]) as server:
        with pytest.raises(ContextTooLong, match="maximum context length"):
            list(engine(server.url).generate([1, 2]))
        assert len(server.completions()) == 1  # a 400 is not retried


def test_prompt_ids_outside_the_vocabulary_never_reach_the_server():
    with ScriptedServer() as server:
        with pytest.raises(ValueError, match="outside gpt-oss's vocabulary"):
            engine(server.url).generate([1, 201088])  # checked at the call, before any iteration
        assert server.completions() == []


def test_errors_share_one_base_class():
    assert all(
        issubclass(e, RemoteEngineError)
        for e in (ContextTooLong, NotGptOss, RemoteTimeout, ServerError, ServerUnavailable, StreamInterrupted)
    )


def test_agenerate_runs_concurrent_streams_over_one_pool():
    async def main() -> list[list[int]]:
        eng = engine(server.url)

        async def one() -> list[int]:
            return [t async for t in eng.agenerate([1], stop={CALL})]

        try:
            return await asyncio.gather(*(one() for _ in range(8)))
        finally:
            await eng.aclose()

    reply = Reply(tokens=[3, 4], finish_reason="stop", stop_reason=CALL)
    with ScriptedServer([reply]) as server:
        results = asyncio.run(main())
    assert results == [[3, 4, CALL]] * 8


def test_agenerate_retries_and_reports_like_generate():
    async def main() -> list[int]:
        eng = engine(server.url)
        try:
            return [t async for t in eng.agenerate([1])]
        finally:
            await eng.aclose()

    with ScriptedServer([Reply(status=502), Reply(tokens=[6])]) as server:
        assert asyncio.run(main()) == [6]
    with (
        ScriptedServer([Reply(tokens=[1, 2], fail_after=1, failure="drop")]) as server,
        pytest.raises(StreamInterrupted),
    ):
        asyncio.run(main())


def test_last_stats_are_kept_per_thread_and_per_task():
    import threading

    replies = [Reply(tokens=[1] * n) for n in (2, 3, 4, 5, 6)]
    with ScriptedServer(replies) as server:
        eng = engine(server.url)
        seen: dict[int, int] = {}

        def work(n: int) -> None:
            list(eng.generate([1] * n, max_tokens=10))
            seen[n] = eng.last_stats.prompt_tokens

        threads = [threading.Thread(target=work, args=(n,)) for n in (7, 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == {7: 7, 8: 8}

        async def task(n: int) -> int:
            [t async for t in eng.agenerate([1] * n, max_tokens=10)]
            await asyncio.sleep(0.01)
            return eng.last_stats.prompt_tokens

        async def main() -> list[int]:
            try:
                return await asyncio.gather(task(3), task(4))
            finally:
                await eng.aclose()

        assert asyncio.run(main()) == [3, 4]
