"""Drive gpt-oss served by vLLM: one agent, then several agents sharing the server at once.

Serve the model first (see the README), for example on one GPU:

    vllm serve openai/gpt-oss-120b --port 8000

then:

    python examples/remote_engine.py http://127.0.0.1:8000 "What is 17 * 23? Use the tool."

``load_engine`` gives a ``RemoteEngine`` for an http(s) URL: the agent renders harmony and parses
the model's raw tokens itself, exactly as with a local checkpoint; vLLM only runs the model.
An API key (vLLM's ``--api-key``) is read from ``GPTOSS_API_KEY``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from gptoss_agent.agent import Agent, AnswerDelta, ReasoningDelta, RunDone, ToolCallStarted
from gptoss_agent.model import load_engine
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


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    task = sys.argv[2] if len(sys.argv) > 2 else "What is 17 * 23? Use the multiply tool."
    engine = load_engine(url)  # a RemoteEngine: discovers the served model, checks it is gpt-oss
    print(f"serving {engine.served_model.name}, context {engine.served_model.max_model_len} tokens")

    agent = Agent(engine, [multiply], reasoning_effort="low", max_tokens=MAX_TOKENS)
    for event in agent.stream(task):
        if isinstance(event, ReasoningDelta | AnswerDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallStarted):
            print(f"\n[{event.recipient}] {event.arguments}")
        elif isinstance(event, RunDone):
            print(f"\n-> {event.result.stop_reason}")
    print("stats of the last generation:", engine.last_stats)

    asyncio.run(several(engine, [f"What is {a} * {b}?" for a, b in [(12, 13), (99, 101), (7, 8), (250, 4)]]))


if __name__ == "__main__":
    main()
