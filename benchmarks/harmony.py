"""Harmony codec speed against openai-harmony's Python binding, on the same conversations.

    python benchmarks/harmony.py [--runs 7] [--out benchmarks/results/harmony.json]

Measures, as medians of several runs:
- render: a ~4k-token agent conversation (system with browser and python, developer with function
  tools, several tool-calling steps) through ``render_conversation_for_completion``: ours cold
  (empty encoding cache), ours warm (as the agent loop re-renders a growing conversation), and
  openai-harmony (its Python wrapper serialises to JSON and the Rust core renders);
- parse: ~200k completion tokens fed one token at a time to our ``StreamParser`` and to
  openai-harmony's ``StreamableParser``, and openai-harmony's batch
  ``parse_messages_from_completion_tokens`` (all in Rust) for reference.

Both libraries are checked to agree on the output before timing. Targets: parsing at least
200k tokens/s; rendering the 4k-token conversation in under 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROSE = (
    "the weather in Paris is sunny today and the forecast says rain tomorrow so we should check "
    "the search results again before answering def compute ( x ) : return x * 2 + 1 42 3.14 "
    "naïve café 日本語 😀 — results show that the function returns a value of type int"
)
WORDS = _PROSE.split(" ")


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def agent_conversation(seed: int, target_tokens: int, enc) -> dict:
    """A realistic agent transcript (openai-harmony JSON form) of about ``target_tokens`` tokens."""
    from gptoss_agent.agent import (
        Author,
        Conversation,
        DeveloperContent,
        Message,
        ReasoningEffort,
        Role,
        SystemContent,
        ToolDescription,
        render_conversation_for_completion,
    )

    rng = random.Random(seed)
    system = (
        SystemContent.new()
        .with_reasoning_effort(ReasoningEffort.HIGH)
        .with_conversation_start_date("2026-11-27")
        .with_browser_tool()
        .with_python_tool()
    )
    weather = {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "description": "Forecast days", "default": 1},
        },
        "required": ["location"],
    }
    dev = (
        DeveloperContent.new()
        .with_instructions("Answer with care. Cite sources.")
        .with_function_tools(
            [ToolDescription.new("get_weather", "Gets the weather for a location.", weather)]
        )
    )
    msgs = [
        Message.from_role_and_content(Role.SYSTEM, system),
        Message.from_role_and_content(Role.DEVELOPER, dev),
        Message.from_role_and_content(Role.USER, _text(rng, 40)),
    ]
    convo = Conversation(msgs)
    while len(render_conversation_for_completion(convo, Role.ASSISTANT, enc)) < target_tokens:
        msgs.append(Message.from_role_and_content(Role.ASSISTANT, _text(rng, 80)).with_channel("analysis"))
        tool = rng.choice(["browser.search", "python", "functions.get_weather"])
        body = (
            json.dumps({"query": _text(rng, 5)}) if tool != "python" else f"print({rng.randint(1, 99)} * 2)"
        )
        call = (
            Message.from_role_and_content(Role.ASSISTANT, body)
            .with_channel("commentary")
            .with_recipient(tool)
        )
        if tool != "python":
            call = call.with_content_type("<|constrain|>json")
        msgs.append(call)
        result = (
            Message.from_author_and_content(Author(Role.TOOL, tool), _text(rng, 150))
            .with_recipient("assistant")
            .with_channel("commentary")
        )
        msgs.append(result)
    return convo.to_dict()


def completion_tokens(seed: int, n_tokens: int, enc) -> list[int]:
    """Model-side token streams (analysis, tool calls, final answers), ~n_tokens in total."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < n_tokens:
        analysis = f"<|start|>assistant<|channel|>analysis<|message|>{_text(rng, 120)}<|end|>"
        call = f'<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{{"location": "{_text(rng, 3)}"}}<|call|>'
        final = f"<|start|>assistant<|channel|>final<|message|>{_text(rng, 80)}<|return|>"
        chunk = analysis + rng.choice([call, final])
        parts.append(chunk)
        total += len(enc.encode(chunk, allowed_special="all"))
    return enc.encode("".join(parts), allowed_special="all")[2:]  # after <|start|>assistant


def median_time(fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--render-tokens", type=int, default=4096)
    parser.add_argument("--parse-tokens", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "harmony.json")
    args = parser.parse_args()

    if not os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
        cache = ROOT / ".cache" / "tiktoken"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_o200k.py"), str(cache)], check=True)
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(cache)

    import openai_harmony as oh
    from gptoss_agent.agent import (
        Conversation,
        Role,
        StreamParser,
        harmony,
        render_conversation_for_completion,
    )
    from gptoss_agent.model import load_tokenizer

    enc = load_tokenizer()
    oracle = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)

    # -- render -------------------------------------------------------------------------------
    payload = json.dumps(agent_conversation(0, args.render_tokens, enc))
    ours, theirs = Conversation.from_json(payload), oh.Conversation.from_json(payload)
    expected = oracle.render_conversation_for_completion(theirs, oh.Role.ASSISTANT)
    assert render_conversation_for_completion(ours, Role.ASSISTANT, enc) == expected, "renders differ"
    n_render = len(expected)

    def cold() -> None:
        harmony._codec(enc)._cache.clear()

    def render_ours() -> None:
        render_conversation_for_completion(ours, Role.ASSISTANT, enc)

    def render_theirs() -> None:
        oracle.render_conversation_for_completion(theirs, oh.Role.ASSISTANT)

    render_runs = max(21, 3 * args.runs)  # milliseconds each: more runs steady the median
    r_cold = median_time(render_ours, render_runs, setup=cold)
    render_ours()
    r_warm = median_time(render_ours, render_runs)
    r_theirs = median_time(render_theirs, render_runs)

    # -- parse --------------------------------------------------------------------------------
    tokens = completion_tokens(1, args.parse_tokens, enc)
    n_parse = len(tokens)

    def parse_ours() -> list:
        p = StreamParser(enc, Role.ASSISTANT)
        process = p.process
        for t in tokens:
            process(t)
        p.process_eos()
        return p.messages

    def parse_theirs_stream() -> list:
        p = oh.StreamableParser(oracle, oh.Role.ASSISTANT)
        process = p.process
        for t in tokens:
            process(t)
        p.process_eos()
        return p.messages

    def parse_theirs_batch() -> list:
        return oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)

    reference = [m.to_dict() for m in parse_theirs_batch()]
    assert [m.to_dict() for m in parse_ours()] == reference, "parses differ"
    parse_runs = max(3, args.runs // 2)
    p_ours = median_time(parse_ours, parse_runs)
    p_stream = median_time(parse_theirs_stream, parse_runs)
    p_batch = median_time(parse_theirs_batch, parse_runs)

    rows = [
        ("render 4k conversation, ours (cold cache)", n_render, r_cold, r_theirs / r_cold),
        ("render 4k conversation, ours (warm cache)", n_render, r_warm, r_theirs / r_warm),
        ("render 4k conversation, openai-harmony", n_render, r_theirs, 1.0),
        ("parse token by token, ours (StreamParser)", n_parse, p_ours, p_stream / p_ours),
        ("parse token by token, openai-harmony StreamableParser", n_parse, p_stream, 1.0),
        ("parse batch, openai-harmony (Rust, reference)", n_parse, p_batch, p_stream / p_batch),
    ]
    print(f"{'case':<56} {'tokens':>8} {'median ms':>10} {'tokens/s':>12} {'speed-up':>9}")
    for name, n, secs, ratio in rows:
        print(f"{name:<56} {n:>8} {secs * 1e3:>10.3f} {n / secs:>12,.0f} {ratio:>8.2f}x")
    targets = {
        "parse_tokens_per_s_at_least_200k": n_parse / p_ours >= 200_000,
        "render_4k_cold_under_5ms": r_cold < 0.005,
    }
    print("targets:", ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in targets.items()))

    result = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "runs": args.runs,
        "render": {
            "tokens": n_render,
            "ours_cold_ms": r_cold * 1e3,
            "ours_warm_ms": r_warm * 1e3,
            "openai_harmony_ms": r_theirs * 1e3,
            "speedup_cold": r_theirs / r_cold,
            "speedup_warm": r_theirs / r_warm,
        },
        "parse": {
            "tokens": n_parse,
            "ours_tokens_per_s": n_parse / p_ours,
            "openai_harmony_stream_tokens_per_s": n_parse / p_stream,
            "openai_harmony_batch_tokens_per_s": n_parse / p_batch,
            "speedup_vs_stream": p_stream / p_ours,
        },
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
