"""RemoteEngine throughput against a local vLLM server, next to LocalEngine, and the client's own cost.

    source scripts/setup_vllm.sh          # starts vLLM (CPU) and exports GPTOSS_VLLM_URL/_CHECKPOINT
    python benchmarks/remote.py [--tokens 64] [--streams 8]

Three measurements:

1. tokens/s of 1 and of N concurrent greedy generation streams through ``RemoteEngine``
   (``agenerate`` over one pooled client, so vLLM batches them), each stream a distinct
   harmony-shaped prompt; and of 1 and N concurrent ``Agent`` runs (``arun``) sharing one
   ``RemoteEngine``, the way N agents share one server;
2. the same work on ``LocalEngine`` with the same checkpoint (one stream at a time: it has one
   KV cache, so N streams or agent runs go back to back);
3. the client's overhead per token: ``RemoteEngine`` reading pre-made vLLM stream events from a
   local HTTP server that sends them as fast as the socket takes them, against plain httpx
   reading the same bytes line by line.

Prints a table and writes benchmarks/results/remote.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from gptoss_agent.model import Sampling
from gptoss_agent.model.remote import RemoteEngine

GREEDY = Sampling(temperature=0.0)
RESULTS = Path(__file__).resolve().parent / "results" / "remote.json"


def prompts(n: int, length: int = 48) -> list[list[int]]:
    out = []
    for i in range(n):
        rng = random.Random(i)
        out.append(
            [
                200006,
                1428,
                200008,
                *(rng.randrange(0, 199_998) for _ in range(length)),
                200007,
                200006,
                173781,
            ]
        )
    return out


async def remote_streams(engine: RemoteEngine, batch: list[list[int]], tokens: int) -> tuple[int, float]:
    async def one(p: list[int]) -> int:
        return sum([1 async for _ in engine.agenerate(p, sampling=GREEDY, max_tokens=tokens)])

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in batch))
    return sum(counts), time.perf_counter() - start


def bench_remote(url: str, streams: int, tokens: int) -> dict[str, Any]:
    engine = RemoteEngine(url)

    async def main() -> dict[str, Any]:
        try:
            await remote_streams(engine, prompts(1, 8), 4)  # warm up
            out = {}
            for n in (1, streams):
                generated, seconds = await remote_streams(engine, prompts(n), tokens)
                out[f"{n}_streams"] = {
                    "tokens": generated,
                    "seconds": seconds,
                    "tokens_per_s": generated / seconds,
                }
            return out
        finally:
            await engine.aclose()

    return asyncio.run(main())


def bench_local(checkpoint: str, streams: int, tokens: int) -> dict[str, Any]:
    from gptoss_agent.model import LocalEngine

    engine = LocalEngine.from_checkpoint(checkpoint, device="cpu", dtype="float32")
    list(engine.generate(prompts(1, 8)[0], sampling=GREEDY, max_tokens=4))  # warm up
    out = {}
    for n in (1, streams):
        start, generated = time.perf_counter(), 0
        for p in prompts(n):
            generated += sum(1 for _ in engine.generate(p, sampling=GREEDY, max_tokens=tokens))
        seconds = time.perf_counter() - start
        out[f"{n}_streams"] = {"tokens": generated, "seconds": seconds, "tokens_per_s": generated / seconds}
    return out


def bench_agents(engine: Any, streams: int, tokens: int, concurrent: bool) -> dict[str, Any]:
    """Whole agent runs (render, generate, parse): 1, then ``streams`` of them, concurrent or back to back.

    The checkpoint is random, so each run generates until its ``max_tokens`` budget (or the parser
    gives up on the noise); the number that matters is tokens through the whole loop per second.
    """
    from gptoss_agent.agent import Agent

    def agent() -> Agent:
        return Agent(engine, reasoning_effort="low", max_tokens=tokens, max_steps=1, date="2026-01-01")

    tasks = [f"Task {i}: summarise the rules of chess." for i in range(streams)]
    agent().run("warm up")
    out = {}
    for n in (1, streams):
        start = time.perf_counter()
        if concurrent:

            async def all_runs(n: int = n) -> list[Any]:
                return await asyncio.gather(*(agent().arun(t) for t in tasks[:n]))

            results = asyncio.run(all_runs())
        else:
            results = [agent().run(t) for t in tasks[:n]]
        seconds = time.perf_counter() - start
        generated = sum(r.usage.generated_tokens for r in results)
        out[f"{n}_agents"] = {"tokens": generated, "seconds": seconds, "tokens_per_s": generated / seconds}
    return out


# -- client overhead ---------------------------------------------------------------------------


def _sse_blob(n: int) -> bytes:
    """vLLM's stream for ``n`` tokens, one token per event, as one chunked HTTP body."""
    events = []
    for i in range(n):
        last = i == n - 1
        choice = {
            "index": 0,
            "text": "",
            "logprobs": None,
            "finish_reason": "length" if last else None,
            "stop_reason": None,
            "token_ids": [1000 + i % 5000],
        }
        events.append(
            f"data: {json.dumps({'id': 'cmpl-x', 'object': 'text_completion', 'created': 0, 'model': 'm', 'choices': [choice]})}\n\n"
        )
    events.append(
        f"data: {json.dumps({'id': 'cmpl-x', 'choices': [], 'usage': {'prompt_tokens': 3, 'completion_tokens': n}})}\n\n"
    )
    events.append("data: [DONE]\n\n")
    body = "".join(events).encode()
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


class _BlobServer:
    def __init__(self, n: int) -> None:
        blob = _sse_blob(n)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._json({"data": [{"id": "m", "max_model_len": 1 << 20}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not body.get("stream"):
                    self._json({"choices": [{"token_ids": [1], "finish_reason": "length"}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(blob)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bench_client(n: int, repeats: int = 5) -> dict[str, Any]:
    server = _BlobServer(n)
    try:
        engine = RemoteEngine(server.url)
        best_engine = best_raw = float("inf")
        body = {"model": "m", "prompt": [1, 2, 3], "stream": True}
        with httpx.Client() as raw:
            for _ in range(repeats):
                start = time.perf_counter()
                got = sum(1 for _ in engine.generate([1, 2, 3], max_tokens=n))
                best_engine = min(best_engine, time.perf_counter() - start)
                assert got == n, got
                start = time.perf_counter()
                with raw.stream("POST", server.url + "/v1/completions", json=body) as response:
                    lines = sum(1 for line in response.iter_lines() if line)
                best_raw = min(best_raw, time.perf_counter() - start)
                assert lines == n + 2
        engine.close()
    finally:
        server.close()
    return {
        "tokens": n,
        "remote_engine_us_per_token": best_engine / n * 1e6,
        "raw_httpx_lines_us_per_token": best_raw / n * 1e6,
        "engine_overhead_us_per_token": (best_engine - best_raw) / n * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("GPTOSS_VLLM_URL"), help="vLLM server (default: $GPTOSS_VLLM_URL)"
    )
    parser.add_argument(
        "--checkpoint", default=os.environ.get("GPTOSS_VLLM_CHECKPOINT"), help="the checkpoint it serves"
    )
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument(
        "--client-tokens", type=int, default=20000, help="tokens for the client-overhead test"
    )
    args = parser.parse_args()

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "host": socket.gethostname(),
        },
        "tokens_per_stream": args.tokens,
    }
    if args.url:
        results["remote_vllm"] = bench_remote(args.url, args.streams, args.tokens)
        with RemoteEngine(args.url) as remote:
            results["remote_vllm_agents"] = bench_agents(remote, args.streams, args.tokens, concurrent=True)
    if args.checkpoint:
        from gptoss_agent.model import LocalEngine

        results["local_engine"] = bench_local(args.checkpoint, args.streams, args.tokens)
        local = LocalEngine.from_checkpoint(args.checkpoint, device="cpu", dtype="float32")
        results["local_engine_agents"] = bench_agents(local, args.streams, args.tokens, concurrent=False)
    results["client"] = bench_client(args.client_tokens)

    print("| engine | work | tokens | seconds | tokens/s |\n|---|---|---|---|---|")
    for name in ("remote_vllm", "local_engine", "remote_vllm_agents", "local_engine_agents"):
        for key, row in results.get(name, {}).items():
            engine, work = name.removesuffix("_agents"), key.replace("_", " ")
            print(
                f"| {engine} | {work} | {row['tokens']} | {row['seconds']:.2f} | {row['tokens_per_s']:.1f} |"
            )
    c = results["client"]
    print(
        f"\nclient, {c['tokens']} pre-made events: RemoteEngine {c['remote_engine_us_per_token']:.1f} µs/token, "
        f"plain httpx line reading {c['raw_httpx_lines_us_per_token']:.1f} µs/token, "
        f"decoding overhead {c['engine_overhead_us_per_token']:.1f} µs/token"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
