"""The remote engine under a deadline: its HTTP timeouts follow the time left, and the stream is
closed (the server then aborts the request) when the deadline passes or is cancelled. A real HTTP
server on 127.0.0.1 in vLLM's wire format that stalls like a server in a long prefill."""

from __future__ import annotations

import asyncio
import threading
import time

from gptoss_agent.model.engine import Deadline
from gptoss_agent.model.remote import RemoteEngine
from remote_servers import Reply, ScriptedServer

SLACK = 1.5  # seconds past a limit that still count as "about a second" on a loaded machine


def test_a_stalled_prefill_ends_quietly_at_the_deadline() -> None:
    with ScriptedServer([Reply(tokens=[11, 12], failure="stall", stall=30)]) as server:
        engine = RemoteEngine(server.url, read_timeout=300)
        t0 = time.monotonic()
        tokens = list(engine.generate([1, 2, 3], max_tokens=8, deadline=Deadline.after(1.0)))
        assert tokens == [] and time.monotonic() - t0 < 1.0 + SLACK  # no RemoteTimeout: the deadline ended it
        engine.close()


def test_a_stream_stops_at_the_deadline_and_keeps_what_came() -> None:
    reply = Reply(tokens=[11, 12, 13, 14], failure="stall", fail_after=2, stall=30)
    with ScriptedServer([reply]) as server:
        engine = RemoteEngine(server.url, read_timeout=300)
        t0 = time.monotonic()
        tokens = list(engine.generate([1, 2, 3], max_tokens=8, deadline=Deadline.after(1.0)))
        assert tokens == [11, 12] and time.monotonic() - t0 < 1.0 + SLACK
        engine.close()


def test_cancelling_the_deadline_closes_the_stream() -> None:
    reply = Reply(tokens=list(range(100, 400)), failure="stall", fail_after=3, stall=0.2)
    with ScriptedServer([reply] * 2) as server:
        engine = RemoteEngine(server.url)
        deadline = Deadline()
        stream = engine.generate([1, 2, 3], max_tokens=300, deadline=deadline)
        first = next(stream)
        threading.Timer(0.1, deadline.cancel).start()
        rest = list(stream)
        assert first == 100 and len(rest) < 20  # it did not read the remaining ~300 tokens
        engine.close()


def test_the_async_stream_follows_the_deadline_too() -> None:
    async def main() -> tuple[list[int], float]:
        with ScriptedServer([Reply(tokens=[11], failure="stall", stall=30)]) as server:
            async with RemoteEngine(server.url, read_timeout=300) as engine:
                t0 = time.monotonic()
                tokens = [t async for t in engine.agenerate([1, 2], max_tokens=4, deadline=Deadline.after(1.0))]
                return tokens, time.monotonic() - t0

    tokens, elapsed = asyncio.run(main())
    assert tokens == [] and elapsed < 1.0 + SLACK
