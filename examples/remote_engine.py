"""Drive gpt-oss served by vLLM: one agent, then several agents sharing the server at once.

Serve the model first (see the README), for example on one GPU:

    vllm serve openai/gpt-oss-120b --port 8000

then:

    python examples/remote_engine.py http://127.0.0.1:8000 "What is 17 * 23? Use the tool."
    python examples/remote_engine.py --demo    # no model, no GPU: a scripted model behind a local
                                               # server that speaks vLLM's wire format

``load_engine`` gives a ``RemoteEngine`` for an http(s) URL: the agent renders harmony and parses
the model's raw tokens itself, exactly as with a local checkpoint; vLLM only runs the model.
An API key (vLLM's ``--api-key``) is read from ``GPTOSS_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gptoss_agent.agent import Agent, AnswerDelta, ReasoningDelta, RunDone, ScriptedEngine, ToolCallStarted
from gptoss_agent.model import load_engine, load_tokenizer
from gptoss_agent.tools import tool

MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "2048"))
"""Tokens one run may generate (a safety cap)."""


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers exactly."""
    return a * b


async def several(engine, tasks: list[str]) -> None:
    """Each agent has its own conversation; their generations are batched by the one server."""
    agents = [Agent(engine, [multiply], reasoning_effort="low", max_tokens=MAX_TOKENS) for _ in tasks]
    results = await asyncio.gather(*(agent.arun(task) for agent, task in zip(agents, tasks, strict=True)))
    for task, result in zip(tasks, results, strict=True):
        print(f"{task!r} -> {result.answer!r} ({result.stop_reason}, {result.usage})")


# -- demo mode: a scripted gpt-oss behind a local server with vLLM's wire format ----------------


def scripted_model(prompt: Sequence[int]) -> str:
    """Plays gpt-oss on this example's tasks: call multiply with the task's numbers, then answer
    with the tool's result (both read from the prompt, as a model would)."""
    text = load_tokenizer().decode(list(prompt))
    task = text.rsplit("<|start|>user<|message|>", 1)[-1]
    a, b = (int(n) for n in re.findall(r"\d+", task.split("<|end|>", 1)[0])[:2])
    result = re.findall(r"functions\.multiply to=assistant<\|channel\|>commentary<\|message\|>(-?\d+)", task)
    if result:
        return f"<|channel|>final<|message|>{a} * {b} = {result[-1]}.<|return|>"
    return (
        f"<|channel|>analysis<|message|>Use the multiply tool for {a} * {b}.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.multiply <|constrain|>json<|message|>"
        f'{{"a": {a}, "b": {b}}}<|call|>'
    )


class DemoServer(ThreadingHTTPServer):
    """``GET /v1/models`` and streamed ``POST /v1/completions`` of token ids, as vLLM answers them
    (``--skip-tokenizer-init``), over a ``ScriptedEngine``; on 127.0.0.1 and a free port."""

    daemon_threads = True

    def __init__(self) -> None:
        self.engine = ScriptedEngine([scripted_model], repeat_last=True)
        self.lock = threading.Lock()  # the scripted engine plays one request at a time
        super().__init__(("127.0.0.1", 0), _DemoHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DemoHandler(BaseHTTPRequestHandler):
    server: DemoServer

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, kind: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        card = {"id": "gpt-oss-demo", "object": "model", "max_model_len": 8192}
        self._send("application/json", json.dumps({"object": "list", "data": [card]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        stop = set(body.get("stop_token_ids") or ())
        if body["prompt"] == [0]:  # RemoteEngine's one-token vocabulary probe
            ids = [0]
        else:
            with self.server.lock:
                ids = list(
                    self.server.engine.generate(body["prompt"], stop=stop, max_tokens=body.get("max_tokens"))
                )
        finish = "stop" if ids and ids[-1] in stop else "length"
        base = {"id": "cmpl-demo", "object": "text_completion", "model": "gpt-oss-demo"}
        last = {
            "index": 0,
            "text": "",
            "token_ids": [],
            "finish_reason": finish,
            "stop_reason": ids[-1] if finish == "stop" else None,
        }
        if not body.get("stream"):
            reply = {**base, "choices": [{**last, "token_ids": ids}]}
            self._send("application/json", json.dumps(reply).encode())
            return
        events = [
            {**base, "choices": [{"index": 0, "text": "", "token_ids": [t], "finish_reason": None}]}
            for t in ids
        ]
        events.append({**base, "choices": [last]})
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(ids)}
        events.append({**base, "choices": [], "usage": usage})
        data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
        self._send("text/event-stream", data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", nargs="?", default="http://127.0.0.1:8000", help="the vLLM server's base URL")
    p.add_argument("task", nargs="?", default="What is 17 * 23? Use the multiply tool.")
    p.add_argument("--demo", action="store_true", help="a scripted model behind a local vLLM-style server")
    args = p.parse_args(argv)
    demo = DemoServer() if args.demo else None
    url, task = (demo.url if demo else args.url), args.task
    engine = load_engine(url)  # a RemoteEngine: discovers the served model, checks it is gpt-oss
    print(f"serving {engine.served_model.name}, context {engine.served_model.max_model_len} tokens")

    agent = Agent(engine, [multiply], reasoning_effort="low", max_tokens=MAX_TOKENS)
    for event in agent.stream(task):
        if isinstance(event, ReasoningDelta | AnswerDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallStarted):
            print(f"\n[{event.recipient}] {event.arguments}")
        elif isinstance(event, RunDone):
            print(f"\n-> {event.result.stop_reason}, {event.result.usage}")

    asyncio.run(several(engine, [f"What is {a} * {b}?" for a, b in [(12, 13), (99, 101), (7, 8), (250, 4)]]))
    engine.close()
    if demo is not None:
        demo.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
