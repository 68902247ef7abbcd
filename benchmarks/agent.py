"""The agent loop's own cost, and the prefill that KV-cache reuse saves.

    python benchmarks/agent.py [--steps 10] [--runs 5] [--out benchmarks/results/agent.json]
    python benchmarks/agent.py --session [--session-checkpoint DIR]    # 3. only

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
3. A long session (``--session``): 3 user turns, 20 steps in all, on a 2-layer cut of the 20b
   shape (full vocabulary, MXFP4 experts, bf16) with realistic lengths: ~1.5k tokens of reasoning
   a turn, ~1k-token tool results, completions in gpt-oss's own forms (reasoning ``<|end|>`` then
   ``<|channel|>commentary to=functions.lookup <|constrain|>json``). Per step: prompt tokens
   (what a cold prefill runs), reused and prefilled tokens and prefill seconds; per new turn,
   where reuse stopped against where the first dropped reasoning message begins; and one real
   cold prefill of the last turn's first prompt for the seconds. The scripted tokens are run
   through the model as one chunk after each prompt (the cache then holds what decoding them
   would leave), so the run costs prefill time only.
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
import zlib
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


WORDS = (
    "tide",
    "harbor",
    "energy",
    "turbine",
    "coast",
    "water",
    "level",
    "station",
    "record",
    "measure",
    "current",
    "power",
    "grid",
    "report",
    "chapter",
    "result",
    "value",
    "table",
    "north",
    "south",
    "east",
    "west",
    "morning",
    "evening",
    "season",
    "average",
    "change",
    "model",
    "river",
    "bridge",
    "survey",
    "data",
    "point",
    "line",
    "figure",
    "source",
    "study",
    "basin",
    "flow",
)


def _words(n: int, seed: int) -> str:
    """About ``n`` o200k tokens of plain English words (one token each, with their space)."""
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def session_script(turns: int, steps: int, reasoning: int) -> tuple[list[list[str]], list[str]]:
    """Per turn its completions (tool calls then a final answer), and the turns' user messages."""
    per_turn = [steps // turns + (1 if t < steps % turns else 0) for t in range(turns)]
    out = []
    for t, n in enumerate(per_turn):
        think = reasoning // n
        turn = []
        for k in range(n - 1):
            turn.append(
                f"<|channel|>analysis<|message|>{_words(think, 1000 * t + k)}<|end|>"
                "<|start|>assistant<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>"
                f'{{"key": "turn-{t}-item-{k}", "limit": 5}}<|call|>'
            )
        turn.append(
            f"<|channel|>analysis<|message|>{_words(think, 1000 * t + 999)}<|end|>"
            f"<|start|>assistant<|channel|>final<|message|>Turn {t}: all items checked.<|return|>"
        )
        out.append(turn)
    return out, [f"Task {t}: look up every item of part {t} and summarise." for t in range(turns)]


class _Teacher:
    """A ``LocalEngine`` session made to emit a script: each prompt is prefilled as the engine
    always does (reusing its cache), then the scripted tokens but the last run through the model
    in one chunk, so the cache holds exactly what generating them would have left in it."""

    def __init__(self, session: Any, responses: list[str], enc: Any) -> None:
        from gptoss_agent.agent import ScriptedEngine
        from gptoss_agent.model.engine import GenerationStats

        self.session = session
        self.script = ScriptedEngine(responses, enc=enc)
        self.last_stats = GenerationStats()
        self.context_length = session.context_length

    def generate(
        self, prompt_ids: Any, *, stop: Any = (), sampling: Any = None, max_tokens: Any = None
    ) -> Any:
        from gptoss_agent.model.engine import Sampling

        tokens = list(self.script.generate(prompt_ids, stop=stop, max_tokens=max_tokens))
        for _ in self.session.generate(prompt_ids, max_tokens=1, sampling=Sampling(temperature=0.0)):
            pass
        self.last_stats = self.session.last_stats
        if len(tokens) > 1:
            self.session.prefill(tokens[:-1])
        self.last_stats.generated_tokens = len(tokens)
        return iter(tokens)


def session(enc: Any, checkpoint: Path, *, turns: int, steps: int, reasoning: int, tool_tokens: int) -> dict:
    """The long-session measurement (see the module docstring, 3.)."""
    from gptoss_agent.agent import Agent, StepDone, render_conversation
    from gptoss_agent.model.local import LocalEngine
    from gptoss_agent.tools import tool

    @tool
    def lookup(key: str, limit: int = 10) -> str:
        """Look up a key.

        Args:
            key: What to look up.
            limit: Most results.
        """
        return f"{key}: " + _words(tool_tokens, zlib.crc32(key.encode()))

    t0 = time.perf_counter()
    engine = LocalEngine.from_checkpoint(checkpoint, device="cpu", dtype="bf16")
    load_seconds = time.perf_counter() - t0
    live = engine.session() if hasattr(engine, "session") else engine
    scripts, tasks = session_script(turns, steps, reasoning)
    teacher = _Teacher(live, [c for turn in scripts for c in turn], enc)
    agent = Agent(teacher, [lookup], enc=enc, date="2026-01-01", max_steps=steps + 1)
    rows: list[dict[str, Any]] = []
    turn_rows = []
    for t, task in enumerate(tasks):
        before = list(agent.messages)
        first_step = len(rows)
        for event in agent.stream(task):
            if isinstance(event, StepDone):
                stats = teacher.last_stats
                rows.append(
                    {
                        "turn": t,
                        "step": event.step,
                        "prompt_tokens": event.usage.prompt_tokens,
                        "reused_tokens": event.usage.reused_tokens,
                        "prefilled_tokens": event.usage.prefilled_tokens,
                        "prefill_seconds": round(getattr(stats, "prefill_seconds", 0.0), 3),
                        "shortfall": getattr(stats, "reuse_shortfall", None),
                    }
                )
                print(f"  turn {t} step {event.step}: {rows[-1]}", file=sys.stderr, flush=True)
        if t:
            dropped = next(i for i, m in enumerate(before) if m.channel == "analysis")
            turn_rows.append(
                {
                    "turn": t,
                    "prompt_tokens": rows[first_step]["prompt_tokens"],
                    "first_dropped_message_at": len(
                        render_conversation(before[:dropped], enc, auto_drop_analysis=False)
                    ),
                    "reused_tokens": rows[first_step]["reused_tokens"],
                    "prefilled_tokens": rows[first_step]["prefilled_tokens"],
                    "prefill_seconds": rows[first_step]["prefill_seconds"],
                }
            )
    cold_prompt = teacher.script.prompts[next(i for i, r in enumerate(rows) if r["turn"] == turns - 1)]
    cold = engine.session() if hasattr(engine, "session") else engine
    cold.reset()
    t0 = time.perf_counter()
    cold.prefill(cold_prompt)
    cold_seconds = time.perf_counter() - t0
    cache_bytes = live.cache_bytes() if hasattr(live, "cache_bytes") else None
    return {
        "checkpoint": str(checkpoint),
        "load_seconds": round(load_seconds, 1),
        "turns": turns,
        "steps": len(rows),
        "steps_per_turn": [len(s) for s in scripts],
        "reasoning_tokens_per_turn": reasoning,
        "tool_result_tokens": tool_tokens,
        "per_step": rows,
        "new_turns": turn_rows,
        "totals": {
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "prefilled_tokens": sum(r["prefilled_tokens"] for r in rows),
            "reused_tokens": sum(r["reused_tokens"] for r in rows),
            "prefill_seconds": round(sum(r["prefill_seconds"] for r in rows), 1),
        },
        "cold_prefill_of_last_turn_first_prompt": {
            "tokens": len(cold_prompt),
            "seconds": round(cold_seconds, 1),
            "with_reuse_seconds": turn_rows[-1]["prefill_seconds"] if turn_rows else None,
        },
        "cache_bytes_at_end": cache_bytes,
    }


def _print_session(s: dict) -> None:
    print(
        f"{s['turns']}-turn, {s['steps']}-step session on {s['checkpoint']} "
        f"(reasoning ~{s['reasoning_tokens_per_turn']} tokens a turn, tool results ~{s['tool_result_tokens']})"
    )
    print(f"{'turn':>4} {'step':>4} {'prompt (cold)':>14} {'reused':>8} {'prefilled':>10} {'prefill s':>10}")
    for r in s["per_step"]:
        print(
            f"{r['turn']:>4} {r['step']:>4} {r['prompt_tokens']:>14} {r['reused_tokens']:>8} "
            f"{r['prefilled_tokens']:>10} {r['prefill_seconds']:>10.2f}"
            + (f"  ({r['shortfall']})" if r["shortfall"] else "")
        )
    for r in s["new_turns"]:
        print(
            f"new turn {r['turn']}: reuse stopped at {r['reused_tokens']} of {r['prompt_tokens']}; "
            f"the first dropped message begins at {r['first_dropped_message_at']}"
        )
    t, c = s["totals"], s["cold_prefill_of_last_turn_first_prompt"]
    print(
        f"whole session: {t['prefilled_tokens']} tokens prefilled of {t['prompt_tokens']} prompt tokens "
        f"({t['prefill_seconds']} s)"
    )
    print(
        f"last turn's first prompt: cold prefill {c['tokens']} tokens {c['seconds']} s, with reuse {c['with_reuse_seconds']} s"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agent.json")
    p.add_argument("--checkpoint", type=Path, help="a tiny checkpoint (default: generate one)")
    p.add_argument("--session", action="store_true", help="run only the long-session measurement (3.)")
    p.add_argument(
        "--session-checkpoint",
        type=Path,
        help="a 2-layer cut of the 20b shape (default: generated once into $GPTOSS_BENCH_CACHE)",
    )
    p.add_argument("--session-turns", type=int, default=3)
    p.add_argument("--session-steps", type=int, default=20)
    p.add_argument("--session-reasoning", type=int, default=1500, help="reasoning tokens per turn")
    p.add_argument("--session-tool-tokens", type=int, default=1000, help="tokens per tool result")
    args = p.parse_args()
    _ensure_tokenizer()
    from gptoss_agent.model import load_tokenizer

    enc = load_tokenizer()
    if args.session:
        checkpoint = args.session_checkpoint
        if checkpoint is None:
            from gptoss_agent.model.config import PRESETS
            from gptoss_agent.model.random_checkpoint import write_random_checkpoint

            cache = Path(os.environ.get("GPTOSS_BENCH_CACHE", "/work/.cache-bench")) / "gpt-oss-20b-2layers"
            if not (cache / "config.json").exists():
                write_random_checkpoint(cache, PRESETS["20b"].with_layers(2), format="hf")
            checkpoint = cache
        result = session(
            enc,
            checkpoint,
            turns=args.session_turns,
            steps=args.session_steps,
            reasoning=args.session_reasoning,
            tool_tokens=args.session_tool_tokens,
        )
        result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
        out = args.out.with_name(args.out.stem + "_session.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        _print_session(result)
        print(f"wrote {out}")
        return 0
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
