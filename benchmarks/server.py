"""Benchmark the OpenAI-compatible server: what it adds to the in-process Agent, and throughput.

    python benchmarks/server.py [--requests 30] [--tokens 200] [--vllm URL] [--concurrency 1,8,32]

Measures, on this machine, with a scripted engine (so only the server's own work is timed):

* per request: a non-streamed Chat Completions and Responses call through the official ``openai``
  SDK against a live uvicorn server on 127.0.0.1, against ``Agent.arun`` on the same engine in
  this process (median of ``--requests``);
* per streamed token: a streamed Responses call of ``--tokens`` answer tokens against
  ``Agent.astream`` in process;
* with ``--vllm URL`` (default ``$GPTOSS_VLLM_URL``, the CI's tiny vLLM CPU server): requests/s and
  p50 latency of 1 / 8 / 32 concurrent clients, each asking for a 16-token answer, the agent running
  on a ``RemoteEngine``.

Writes ``benchmarks/results/server.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import openai
import uvicorn
from gptoss_agent.agent import Agent
from gptoss_agent.agent.scripted import ScriptedEngine
from gptoss_agent.model.tokenizer import load_tokenizer
from gptoss_agent.server import create_app

ROOT = Path(__file__).resolve().parent


def answer(tokens: int) -> str:
    return "<|channel|>final<|message|>" + " word" * tokens + "<|return|>"


def start(app) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}/v1", server


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def in_process(enc, tokens: int, n: int) -> dict:
    engine = ScriptedEngine([answer(tokens)], enc=enc, repeat_last=True)
    run, stream, cpu_run, cpu_stream = [], [], 0.0, 0.0
    for _ in range(n):
        agent = Agent(engine, enc=enc, reasoning_effort="low")
        t0, c0 = time.perf_counter(), time.process_time()
        await agent.arun("hello")
        run.append(time.perf_counter() - t0)
        cpu_run += time.process_time() - c0
        agent = Agent(engine, enc=enc, reasoning_effort="low")
        t0, c0 = time.perf_counter(), time.process_time()
        async for _ in agent.astream("hello"):
            pass
        stream.append(time.perf_counter() - t0)
        cpu_stream += time.process_time() - c0
    return {
        "request_ms": median_ms(run),
        "stream_ms": median_ms(stream),
        "request_cpu_ms": cpu_run / n * 1000,
        "stream_cpu_ms": cpu_stream / n * 1000,
    }


def _child(port: int, tokens: int) -> None:
    """The server under test, alone in its process (so its CPU time can be read)."""
    enc = load_tokenizer()
    engine = ScriptedEngine([answer(tokens)], enc=enc, repeat_last=True)
    uvicorn.run(
        create_app(engine, enc=enc, reasoning_effort="low"), host="127.0.0.1", port=port, log_level="warning"
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_stream(client, url: str) -> int:
    body = {"model": "m", "input": "hello", "store": False, "stream": True}
    with client.stream("POST", url + "/responses", json=body) as response:
        return sum(len(chunk) for chunk in response.iter_bytes())


def through_server(tokens: int, n: int) -> dict:
    """Wall time per call (httpx, a thin client) and the server process's CPU time per call."""
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = subprocess.Popen([sys.executable, __file__, "--child", str(port), str(tokens)])
    url = f"http://127.0.0.1:{port}/v1"
    client = httpx.Client(timeout=120)
    try:
        while True:
            try:
                client.get(url + "/models")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        calls = {
            "models": lambda: client.get(url + "/models"),
            "chat": lambda: client.post(
                url + "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hello"}]},
            ),
            "responses": lambda: client.post(
                url + "/responses", json={"model": "m", "input": "hello", "store": False}
            ),
            "stream": lambda: _read_stream(client, url),
        }
        out = {}
        for name, call in calls.items():
            call()  # warm
            walls = []
            cpu0 = _cpu_seconds(child.pid)
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                walls.append(time.perf_counter() - t0)
            out[f"{name}_ms"] = median_ms(walls)
            out[f"{name}_cpu_ms"] = (_cpu_seconds(child.pid) - cpu0) / n * 1000
        return out
    finally:
        child.terminate()
        child.wait(10)


async def concurrent(url: str, enc, clients: int, per_client: int) -> dict:
    from gptoss_agent.model.remote import RemoteEngine

    app = create_app(RemoteEngine(url), enc=enc, max_concurrency=clients, reasoning_effort="low", max_steps=1)
    base, server = start(app)
    client = openai.AsyncOpenAI(base_url=base, api_key="-", max_retries=0, timeout=120)
    latencies: list[float] = []

    async def one() -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            await client.chat.completions.create(
                model="gpt-oss", messages=[{"role": "user", "content": "hi"}], max_tokens=16, temperature=0
            )
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(clients)))
    finally:
        server.should_exit = True
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests_per_s": len(latencies) / wall, "p50_ms": median_ms(latencies)}


def main() -> int:
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--tokens", type=int, default=200, help="answer tokens of the streamed case")
    p.add_argument(
        "--vllm", default=os.environ.get("GPTOSS_VLLM_URL"), help="a vLLM server URL for throughput"
    )
    p.add_argument("--concurrency", default="1,8,32")
    args = p.parse_args()
    enc = load_tokenizer()
    ours = asyncio.run(in_process(enc, args.tokens, args.requests))
    served = through_server(args.tokens, args.requests)
    r = {
        "in_process": ours,
        "server": served,
        "added_cpu_ms_per_request": served["chat_cpu_ms"] - ours["request_cpu_ms"],
        "added_cpu_ms_per_responses_request": served["responses_cpu_ms"] - ours["request_cpu_ms"],
        "added_cpu_us_per_token": (served["stream_cpu_ms"] - ours["stream_cpu_ms"]) * 1000 / args.tokens,
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    if args.vllm:
        r["vllm"] = [
            asyncio.run(concurrent(args.vllm, enc, int(c), max(2, 32 // int(c))))
            for c in args.concurrency.split(",")
        ]
    out = ROOT / "results" / "server.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"{os.cpu_count()} CPUs, load {r['load']:.1f}; wall: medians of {args.requests}, CPU: means")
    print(f"{'':<30}{'in process':>16}{'server':>16}{'added CPU':>14}")
    rows = [
        ("trivial GET /v1/models", None, "models", None),
        ("chat request", "request", "chat", r["added_cpu_ms_per_request"]),
        ("responses request", "request", "responses", r["added_cpu_ms_per_responses_request"]),
        (f"stream {args.tokens} tokens", "stream", "stream", r["added_cpu_us_per_token"]),
    ]
    for label, mine, theirs, added in rows:
        left = f"{ours[mine + '_ms']:.1f}/{ours[mine + '_cpu_ms']:.1f}" if mine else "-"
        right = f"{served[theirs + '_ms']:.1f}/{served[theirs + '_cpu_ms']:.1f}"
        unit = " us/tok" if theirs == "stream" else " ms"
        extra = f"{added:.2f}{unit}" if added is not None else ""
        print(f"{label + ' (wall/CPU ms)':<30}{left:>16}{right:>16}{extra:>14}")
    for row in r.get("vllm", []):
        print(
            f"vLLM, {row['clients']:>2} clients: {row['requests_per_s']:.2f} requests/s, p50 {row['p50_ms']:.0f} ms"
        )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
