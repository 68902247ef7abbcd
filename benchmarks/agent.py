"""The agent loop's own cost, and the prefill that KV-cache reuse saves.

    python benchmarks/agent.py [--steps 10] [--runs 5] [--out benchmarks/results/agent.json]

1. Loop overhead per step: everything but generation and tool execution (rendering the prompt,
   parsing the streamed tokens, events, routing and argument validation, appending messages),
   over a ``--steps``-step tool-calling run driven by a ``ScriptedEngine`` (generation is instant)
   with a tool that does nothing. The peer is the same loop written by hand on openai-harmony
   (its ``render_conversation_for_completion`` and ``StreamableParser``, messages appended as
   openai-harmony objects, a dict lookup for the tool): the least a loop built on the official
   library has to do per step. Both see the same token streams.
2. Prefill saved by reuse: the same kind of run on the real ``LocalEngine`` with a tiny random
   checkpoint (tokens forced from the script, so the cache holds exactly what the loop renders
   back), once with the engine's prefix reuse and once with the cache cleared before every step.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "tests"))


def _ensure_tokenizer() -> None:
    if not os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
        import subprocess

        target = ROOT / ".cache" / "tiktoken"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_o200k.py"), str(target)], check=True)
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(target)


def script(steps: int) -> list[str]:
    """``steps - 1`` tool calls with a little reasoning, then a final answer."""
    out = []
    for i in range(steps - 1):
        think = (
            f"Step {i}: I will look up item {i} and compare it with the previous results before answering."
        )
        out.append(
            f"<|channel|>analysis<|message|>{think}<|end|>"
            f"<|start|>assistant to=functions.lookup<|channel|>commentary <|constrain|>json<|message|>"
            f'{{"key": "item-{i}", "limit": {i + 1}}}<|call|>'
        )
    out.append(
        "<|channel|>analysis<|message|>Done.<|end|><|start|>assistant<|channel|>final<|message|>All items checked.<|return|>"
    )
    return out


def _lookup_tool() -> Any:
    from gptoss_agent.tools import tool

    @tool
    def lookup(key: str, limit: int = 10) -> str:
        """Look up a key.

        Args:
            key: What to look up.
            limit: Most results.
        """
        return f"{key}: found {limit} result(s)."

    return lookup


def ours(enc: Any, steps: int) -> list[float]:
    """Per-step loop overhead (seconds) of ``Agent`` over one run."""
    from gptoss_agent.agent import Agent, ScriptedEngine, StepDone

    engine = ScriptedEngine(script(steps), enc=enc)
    agent = Agent(engine, [_lookup_tool()], enc=enc, date="2026-01-01", max_steps=steps + 1)
    overhead = []
    for event in agent.stream("Check every item."):
        if isinstance(event, StepDone):
            overhead.append(event.seconds - event.generation_seconds - event.tool_seconds)
    assert len(overhead) == steps
    return overhead


def peer(enc: Any, steps: int) -> list[float]:
    """The same run, by hand on openai-harmony: render, stream-parse, dispatch through a dict."""
    import openai_harmony as oh

    harmony = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    responses = [list(enc.encode(s, allowed_special="all")) for s in script(steps)]
    tool = _lookup_tool()
    tools = {"functions.lookup": tool}
    system = oh.SystemContent.new().with_conversation_start_date("2026-01-01")
    developer = oh.DeveloperContent.new().with_function_tools(
        [oh.ToolDescription.new("lookup", tool.description, tool.parameters)]
    )
    messages = [
        oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
        oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
        oh.Message.from_role_and_content(oh.Role.USER, "Check every item."),
    ]
    overhead = []
    for tokens in responses:
        t0 = time.perf_counter()
        harmony.render_conversation_for_completion(oh.Conversation.from_messages(messages), oh.Role.ASSISTANT)
        parser = oh.StreamableParser(harmony, oh.Role.ASSISTANT)
        for token in tokens:  # generation is instant here too
            parser.process(token)
        new = parser.messages
        messages += new
        last = new[-1]
        if last.recipient is not None:
            t1 = time.perf_counter()
            output = tools[last.recipient].call("lookup", last.content[0].text)
            tool_seconds = time.perf_counter() - t1
            reply = (
                oh.Message.from_author_and_content(
                    oh.Author.new(oh.Role.TOOL, last.recipient), output.content
                )
                .with_recipient("assistant")
                .with_channel(last.channel or "commentary")
            )
            messages.append(reply)
        else:
            tool_seconds = 0.0
        overhead.append(time.perf_counter() - t0 - tool_seconds)
    return overhead


def prefill(enc: Any, steps: int, checkpoint: Path) -> dict[str, Any]:
    """Prompt, prefilled and reused tokens and prefill seconds, with and without prefix reuse."""
    from gptoss_agent.agent import Agent, ForcedEngine, StepDone
    from gptoss_agent.model.local import LocalEngine

    local = LocalEngine.from_checkpoint(checkpoint, device="cpu", dtype="fp32")

    class Cold(ForcedEngine):
        def generate(self, prompt_ids, **kw):  # type: ignore[no-untyped-def]
            self.engine.reset()
            return super().generate(prompt_ids, **kw)

    out: dict[str, Any] = {}
    for name, cls in (("reuse", ForcedEngine), ("no_reuse", Cold)):
        local.reset()
        engine = cls(local, script(steps), enc=enc)
        agent = Agent(engine, [_lookup_tool()], enc=enc, date="2026-01-01", max_steps=steps + 1)
        prompt = prefilled = reused = 0
        seconds = 0.0
        per_step = []
        for event in agent.stream("Check every item."):
            if isinstance(event, StepDone):
                prompt += event.usage.prompt_tokens
                prefilled += event.usage.prefilled_tokens
                reused += event.usage.reused_tokens
                seconds += local.last_stats.prefill_seconds
                per_step.append(event.usage.prefilled_tokens)
        out[name] = {
            "prompt_tokens": prompt,
            "prefilled_tokens": prefilled,
            "reused_tokens": reused,
            "prefill_seconds": round(seconds, 4),
            "prefilled_per_step": per_step,
        }
    out["prefill_tokens_saved"] = out["no_reuse"]["prefilled_tokens"] - out["reuse"]["prefilled_tokens"]
    out["prefill_seconds_saved"] = round(
        out["no_reuse"]["prefill_seconds"] - out["reuse"]["prefill_seconds"], 4
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agent.json")
    p.add_argument("--checkpoint", type=Path, help="a tiny checkpoint (default: generate one)")
    args = p.parse_args()
    _ensure_tokenizer()
    from gptoss_agent.model import load_tokenizer

    enc = load_tokenizer()
    ours(enc, args.steps), peer(enc, args.steps)  # warm up caches and imports
    mine = [statistics.median(ours(enc, args.steps)) for _ in range(args.runs)]
    theirs = [statistics.median(peer(enc, args.steps)) for _ in range(args.runs)]
    last_ours = ours(enc, args.steps)
    last_peer = peer(enc, args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from gptoss_agent.model.config import PRESETS
            from gptoss_agent.model.random_checkpoint import write_random_checkpoint

            checkpoint = write_random_checkpoint(Path(tmp) / "tiny", PRESETS["tiny"], format="hf")
        cache = prefill(enc, args.steps, checkpoint)

    result = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "steps": args.steps,
        "runs": args.runs,
        "overhead": {
            "ours_median_step_ms": statistics.median(mine) * 1e3,
            "openai_harmony_loop_median_step_ms": statistics.median(theirs) * 1e3,
            "ours_last_step_ms": last_ours[-1] * 1e3,
            "openai_harmony_loop_last_step_ms": last_peer[-1] * 1e3,
            "speedup": statistics.median(theirs) / statistics.median(mine),
        },
        "prefill": cache,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    o, c = result["overhead"], cache
    rows = [
        (
            "loop overhead per step, median",
            f"{o['ours_median_step_ms']:.3f} ms",
            f"{o['openai_harmony_loop_median_step_ms']:.3f} ms",
        ),
        (
            "loop overhead, last step",
            f"{o['ours_last_step_ms']:.3f} ms",
            f"{o['openai_harmony_loop_last_step_ms']:.3f} ms",
        ),
    ]
    print(f"{args.steps}-step tool-calling run, {args.runs} runs")
    print(f"{'':34} {'gptoss-agent':>14} {'openai-harmony loop':>20}")
    for name, a, b in rows:
        print(f"{name:34} {a:>14} {b:>20}")
    print()
    print(f"{'tiny LocalEngine, whole run':34} {'prefix reuse':>14} {'cache cleared':>20}")
    for key in ("prompt_tokens", "prefilled_tokens", "reused_tokens", "prefill_seconds"):
        print(f"{key:34} {c['reuse'][key]:>14} {c['no_reuse'][key]:>20}")
    print(f"prefill saved: {c['prefill_tokens_saved']} tokens, {c['prefill_seconds_saved']:.3f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
