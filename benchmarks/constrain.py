"""Benchmark constrained decoding: the grammar's cost per token against a decode step, and compile time.

    python benchmarks/constrain.py [--layers 2] [--steps 8] [--skip-decode] [--skip-xgrammar]

Measures, on this machine, with the o200k_harmony vocabulary (201,088 tokens):

* compile time of the harmony grammar for a realistic tool set (three function tools, python,
  the browser's three functions), with and without building llguidance's tokenizer view;
* per token, at reasoning positions (free ``analysis`` text) and at argument positions (inside a
  tool's JSON arguments): the fast path the engine takes (check the sampled token, advance) and the
  full vocabulary mask it computes only when the sampled token is refused;
* the same JSON schema through xgrammar (the other well-kept engine that takes a raw byte vocabulary),
  when it is installed: compile time and mask per token;
* a decode step of the gpt-oss-20b shape (hidden 2880, 32 experts, full vocabulary) cut to
  ``--layers`` and ``--layers + 1`` layers, extrapolated to 24 layers, so the mask's share of a real
  step is a measured ratio.

Writes ``benchmarks/results/constrain.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.constrain import HarmonyGrammar, HarmonySpec, ToolRule, _lltokenizer
from gptoss_agent.model.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GPTOSS_BENCH_CACHE", "/work/.cache-bench"))

WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City and country"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["location"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "quantity": {"type": "integer", "minimum": 1},
        "gift": {"type": "boolean"},
        "notes": {"type": ["string", "null"], "maxLength": 200},
    },
    "required": ["sku", "quantity"],
}
LOOKUP = {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["query"]}
SEARCH = {"type": "object", "properties": {"query": {"type": "string"}, "topn": {"type": "integer"}}, "required": ["query"]}
OPEN = {"type": "object", "properties": {"id": {"type": ["integer", "string"]}, "cursor": {"type": "integer"}, "loc": {"type": "integer"}}}
FIND = {"type": "object", "properties": {"pattern": {"type": "string"}, "cursor": {"type": "integer"}}, "required": ["pattern"]}
TOOLS = (
    ToolRule("functions.get_weather", WEATHER),
    ToolRule("functions.place_order", ORDER),
    ToolRule("functions.lookup", LOOKUP),
    ToolRule("python"),
    ToolRule("browser.search", SEARCH),
    ToolRule("browser.open", OPEN),
    ToolRule("browser.find", FIND),
)
REASONING = (
    "The user wants the weather in Lisbon for the next three days. I should call get_weather with "
    "location Lisbon, Portugal and days 3; celsius is the default they would expect in Europe. "
) * 4
ARGS = '{"location": "Lisbon, Portugal", "unit": "celsius", "days": 3}'


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_token(grammar: HarmonyGrammar, enc, head: str, body: str) -> dict:
    """Fast path and full mask, per token of ``body`` after ``head``, in microseconds."""
    head_ids = enc.encode(head, allowed_special="all")
    body_ids = enc.encode(body, allowed_special="all")
    logits = torch.zeros(len(enc._mergeable_ranks) + len(enc._special_tokens))
    fast, full = [], []
    state = grammar.start()
    for t in head_ids:
        state.advance(t)
    for t in body_ids:
        t0 = time.perf_counter()
        state.mask(logits)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ok = state.allows(t)
        state.advance(t)
        fast.append(time.perf_counter() - t0)
        assert ok
    return {
        "tokens": len(body_ids),
        "fast_us": statistics.median(fast) * 1e6,
        "mask_us": statistics.median(full) * 1e6,
    }


def bench_xgrammar(enc) -> dict | None:
    try:
        import xgrammar as xgr
    except ImportError:
        return None
    n = len(enc._mergeable_ranks) + len(enc._special_tokens)
    vocab = [b""] * n
    for token_bytes, rank in enc._mergeable_ranks.items():
        vocab[rank] = token_bytes
    for text, rank in enc._special_tokens.items():
        vocab[rank] = text.encode()
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=n, stop_token_ids=[200012, 200002])
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(WEATHER), any_whitespace=True)
    compile_s = time.perf_counter() - t0
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, n)
    masks = []
    for t in enc.encode(ARGS):
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        masks.append(time.perf_counter() - t0)
        assert matcher.accept_token(t)
    return {"tokenizer_s": tokenizer_s, "compile_s": compile_s, "mask_us": statistics.median(masks) * 1e6}


def decode_step_ms(layers: int, steps: int) -> float:
    """Median decode step (ms) of the 20b shape cut to ``layers`` layers, bf16, after 128 tokens."""
    from gptoss_agent.model.local import LocalEngine
    from gptoss_agent.model.random_checkpoint import write_random_checkpoint

    path = CACHE / f"20b-{layers}l"  # the same cut benchmarks/agent.py uses
    if not (path / "config.json").exists():
        write_random_checkpoint(path, PRESETS["20b"].with_layers(layers), format="hf")
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 199_000, (128,), generator=g).tolist()
    engine.prefill(prompt)
    times = []
    token = 1000
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.decode_one(token)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="layers of the 20b-shaped cut (and one more)")
    p.add_argument("--steps", type=int, default=8, help="decode steps per cut")
    p.add_argument("--skip-decode", action="store_true", help="only the grammar (no 20b-shaped checkpoint)")
    p.add_argument("--skip-xgrammar", action="store_true")
    p.add_argument("--cut-only", action="store_true",
                   help="compare with the cut's own step (a lower bound of the real step: the share is an upper bound)")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    enc = load_tokenizer()
    r: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    _lltokenizer(enc)
    r["llguidance_tokenizer_s"] = time.perf_counter() - t0
    spec = HarmonySpec(tools=TOOLS, tool_choice="auto")
    r["compile_s"] = timed(lambda: HarmonyGrammar.compile(enc, spec), 3)
    one = HarmonySpec(tools=(ToolRule("functions.get_weather", WEATHER),), tool_choice="required")
    r["compile_one_schema_s"] = timed(lambda: HarmonyGrammar.compile(enc, one), 3)
    grammar = HarmonyGrammar.compile(enc, spec)
    r["reasoning"] = per_token(grammar, enc, "<|channel|>analysis<|message|>", REASONING)
    r["arguments"] = per_token(
        grammar, enc, "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>", ARGS
    )
    if not args.skip_xgrammar:
        r["xgrammar"] = bench_xgrammar(enc)
    if not args.skip_decode:
        a = decode_step_ms(args.layers, args.steps)
        r["decode_ms"] = {f"{args.layers}_layers": a}
        if not args.cut_only:
            b = decode_step_ms(args.layers + 1, args.steps)
            r["decode_ms"].update({f"{args.layers + 1}_layers": b, "24_layers": a + (24 - args.layers) * (b - a)})
    out = ROOT / "results" / "constrain.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print_table(r)
    print(f"\nwrote {out}")
    return 0


def print_table(r: dict) -> None:
    print(f"machine: {r['machine']}, {r['threads']} threads")
    print(f"llguidance tokenizer view (once per process): {r['llguidance_tokenizer_s']:.2f} s")
    print(f"compile: 7 tools {r['compile_s'] * 1000:.1f} ms, one schema {r['compile_one_schema_s'] * 1000:.1f} ms")
    decode = r.get("decode_ms", {})
    step = decode.get("24_layers") or next(iter(decode.values()), None)
    print(f"{'position':<12}{'fast path (us)':>16}{'full mask (us)':>16}{'mask / 20b step':>18}")
    for name in ("reasoning", "arguments"):
        x = r[name]
        share = f"{x['mask_us'] / 1000 / step:.2%}" if step else "-"
        print(f"{name:<12}{x['fast_us']:>16.1f}{x['mask_us']:>16.1f}{share:>18}")
    xg = r.get("xgrammar")
    if xg:
        print(
            f"xgrammar (same schema): tokenizer {xg['tokenizer_s']:.2f} s, compile {xg['compile_s'] * 1000:.1f} ms, "
            f"mask {xg['mask_us']:.1f} us a token"
        )
    if step:
        d = r["decode_ms"]
        print("decode step of the 20b shape (ms): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in d.items()))


if __name__ == "__main__":
    tempfile.tempdir = tempfile.gettempdir()
    raise SystemExit(main())
