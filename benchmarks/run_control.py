"""Run control: how soon a run stops past its limit or a cancel, and what the driver costs a token.

    python benchmarks/run_control.py [--repeats 3] [--out benchmarks/results/run_control.json]

1. Stop latency: seconds past ``timeout`` until ``run`` returns, for a sync tool that ignores its
   deadline (abandoned), an async tool (cancelled) and a local engine in the middle of a long
   prefill (the tiny random checkpoint, 3.5k-token prompt; default chunks of 2048 and chunks of
   32; the process's first local run also builds the constrained-decoding grammar's vocabulary,
   which holds the GIL, and is reported apart), and for cancelling ``arun`` mid-tool and mid-prefill: seconds from ``task.cancel()`` to the
   ``CancelledError``, and to the engine's thread ending.
2. The driver's cost per token: a 4,000-token answer streamed through ``Agent.run`` from a
   ``ScriptedEngine`` (generation instant), against the same tokens fed straight to harmony's
   ``StreamParser`` in a loop (what the loop did before there was a driver, less its events).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agent"))


def _stop_latencies(enc: Any, repeats: int) -> dict[str, float]:
    from agent_helpers import call
    from gptoss_agent.agent import Agent, ScriptedEngine
    from gptoss_agent.model.config import PRESETS
    from gptoss_agent.model.local import LocalEngine
    from gptoss_agent.model.random_checkpoint import write_random_checkpoint
    from gptoss_agent.tools import tool

    @tool
    def nap() -> str:
        """Sleep, ignoring the deadline."""
        time.sleep(20)
        return "late"

    @tool
    async def doze() -> str:
        """Sleep (async)."""
        await asyncio.sleep(20)
        return "late"

    def past(make: Any, timeout: float, times: int = repeats) -> float:
        out = []
        for _ in range(times):
            agent = make(timeout)
            t0 = time.monotonic()
            agent.run("go " + LONG)
            out.append(time.monotonic() - t0 - timeout)
            if agent._engine_thread is not None:
                agent._engine_thread.done.wait()  # the engine is free before the next repeat
            agent.close()
        return statistics.median(out)

    def scripted(name: str, fn: Any) -> Any:
        return lambda timeout: Agent(
            ScriptedEngine([call(f"functions.{name}", "{}")], enc=enc), [fn], enc=enc, timeout=timeout
        )

    ckpt = write_random_checkpoint(Path(tempfile.mkdtemp()) / "tiny", PRESETS["tiny"], format="hf")
    engine = LocalEngine.from_checkpoint(ckpt, device="cpu", dtype="fp32")

    def local(chunk: int) -> Any:
        def make(timeout: float) -> Any:
            engine.prefill_chunk = chunk
            engine.reset()
            return Agent(engine, enc=enc, timeout=timeout, max_generation_tokens=4)

        return make

    results = {
        # the process's first local run also builds llguidance's view of the vocabulary for the
        # constrained-decoding grammar, in native code that holds the GIL: nothing can stop that
        "timeout_local_first_run_of_the_process_s": past(local(2048), 2.0, 1),
        "timeout_sync_tool_s": past(scripted("nap", nap), 1.0),
        "timeout_async_tool_s": past(scripted("doze", doze), 1.0),
        "timeout_local_prefill_chunk2048_s": past(local(2048), 2.0, 1),
        "timeout_local_prefill_chunk32_s": past(local(32), 2.0, 1),
    }

    async def cancel(agent: Any, after: float) -> tuple[float, float]:
        task = asyncio.create_task(agent.arun("go " + LONG))
        await asyncio.sleep(after)
        t0 = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        returned = time.monotonic() - t0
        thread = agent._engine_thread
        if thread is not None:
            await asyncio.to_thread(thread.done.wait, 300)
        return returned, time.monotonic() - t0

    mid_tool = asyncio.run(cancel(scripted("doze", doze)(None), 0.5))
    engine.prefill_chunk, _ = 32, engine.reset()
    mid_prefill = asyncio.run(cancel(Agent(engine, enc=enc, max_generation_tokens=4), 1.0))
    results.update(
        cancel_mid_tool_returned_s=mid_tool[0],
        cancel_mid_prefill_returned_s=mid_prefill[0],
        cancel_mid_prefill_engine_stopped_s=mid_prefill[1],
    )
    return results


def _per_token(enc: Any, repeats: int) -> dict[str, float]:
    from gptoss_agent.agent import Agent, ScriptedEngine
    from gptoss_agent.agent.harmony import StreamParser
    from gptoss_agent.agent.messages import Role

    answer = "<|channel|>final<|message|>" + "word " * 4000 + "<|return|>"
    tokens = ScriptedEngine([], enc=enc).encode(answer)
    through_agent, direct = [], []
    for _ in range(repeats):
        agent = Agent(ScriptedEngine([answer], enc=enc), enc=enc, max_generation_tokens=len(tokens) + 10)
        t0 = time.perf_counter()
        agent.run("talk")
        through_agent.append((time.perf_counter() - t0) / len(tokens))
        parser = StreamParser(enc, Role.ASSISTANT)
        t0 = time.perf_counter()
        for t in tokens:
            list(parser.process(t))
        direct.append((time.perf_counter() - t0) / len(tokens))
    return {
        "tokens": len(tokens),
        "agent_us_per_token": statistics.median(through_agent) * 1e6,
        "parser_only_us_per_token": statistics.median(direct) * 1e6,
    }


LONG = " ".join(f"word{i}" for i in range(1150))  # ~3.5k tokens with the rest of the prompt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(ROOT / ".cache" / "tiktoken")
    from gptoss_agent.model import load_tokenizer

    enc = load_tokenizer()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        **_per_token(enc, args.repeats),
        **_stop_latencies(enc, args.repeats),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
