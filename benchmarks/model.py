"""Benchmark the local engine on a gpt-oss-20b-shaped MXFP4 checkpoint, on the CPU.

    python benchmarks/model.py [--checkpoint DIR] [--contexts 128,2048,8192] [--threads N]
        [--skip-full] [--skip-transformers] [--skip-reference] [--reference-python PY]

Measures, in one run, on this machine:

* the memory-bandwidth ceiling: a large tensor copy (bytes read + bytes written per second);
* the full 20b shape (24 layers, 32 experts, vocabulary 201088, MXFP4 experts): load time, peak
  RSS, prefill tokens/s, decode tokens/s at each context, and decode as a fraction of the
  ceiling for the bytes one token must read (active weights plus the KV cache it attends over);
* per layer, against Hugging Face transformers' ``GptOssForCausalLM`` (the strongest peer that runs
  here; it unpacks MXFP4 to bf16 on the CPU) on a 2-layer cut of the same checkpoint (same seed,
  so the same layer weights; vocabulary cut to 1024 so that the head does not dominate);
* per layer, against the reference ``gpt_oss.torch`` implementation (PyPI ``gpt-oss``, Python 3.12;
  ``scripts/setup_reference.sh`` builds its venv) on an original-format copy of the same 2-layer
  cut, through ``benchmarks/reference_gpt_oss.py`` in a subprocess. The reference has no KV cache
  (each token reruns the whole sequence) and its MoE gathers ~200 MB of bf16 expert weights per
  position per layer, so it runs at a short context (``--reference-context``, default 8) and is
  compared with our decode at that same context; its one-position forward (what a step would cost
  it with a cache) is compared with our decode at ``--layer-context``. Its logits are checked
  against ours (fp32 on a tiny checkpoint, bf16 on the cut);
* prefix reuse: a tool result appended after a long prefix prefills only its own tokens;
* with ``--llama-cpp``, llama.cpp in the same run (``benchmarks/llama_cpp.py``: built from the
  ``llama-cpp-python`` sdist with ``-DGGML_NATIVE=ON``, the checkpoint converted by its own
  ``convert_hf_to_gguf.py``) on a cut of the 20b shape with the full vocabulary
  (``--llama-cpp-layers``, default 4): prefill of 512 and 2048 tokens and decode at 128/2k/8k,
  ours and theirs, and the ratios. Two cuts (``--llama-cpp-layers 2,4``) split each engine's time
  into a per-layer and a fixed part (embedding, head) and project both to the 24-layer 20b: quicker
  than the full shape's own GGUF (13.8 GB; 4 minutes to convert here, 8 of llama-bench), but this
  VM's bandwidth noise is amplified by the split.

The table names the CPU's vector and matrix features and the kernel build in use
(``GPTOSS_KERNELS_ISA`` forces one).

Decode contexts other than the prefill's length are reached by filling the KV cache with random
keys and values (decode cost depends on the cache's length, not its contents): prefilling 8k
tokens through 24 layers on two CPU cores would take over ten minutes. Decode rates are one over
the median step. Missing checkpoints are generated first (``nice``d; the 20b
one needs about 13 GB of disk). Writes ``benchmarks/results/model.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from gptoss_agent.model import kernels
from gptoss_agent.model.checkpoint import open_checkpoint
from gptoss_agent.model.config import PRESETS, ModelConfig
from gptoss_agent.model.local import LocalEngine
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GPTOSS_BENCH_CACHE", "/work/.cache-bench"))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bandwidth_ceiling(gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s of a large copy, counting bytes read and bytes written."""
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n / best / 1e9


def bytes_per_token(cfg: ModelConfig, context: int, kv_element: int) -> int:
    """Bytes one decode step reads: active weights (bf16 dense, packed experts) plus the KV cache."""
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d * h
    out = h * cfg.num_attention_heads * d
    router = cfg.num_experts * h
    expert = (2 * i * h + h * i) * 17 // 32  # 4 bits per weight + one scale byte per 32
    per_layer = 2 * (qkv + out + router) + cfg.experts_per_token * expert
    kv = 0
    for layer in range(cfg.num_hidden_layers):
        seen = min(context, cfg.sliding_window) if cfg.is_sliding(layer) else context
        kv += seen * cfg.num_key_value_heads * d * 2 * kv_element  # keys and values
    return cfg.num_hidden_layers * per_layer + 2 * cfg.vocab_size * h + kv


@torch.inference_mode()
def fill_cache(engine: LocalEngine, length: int) -> None:
    """Bring the cache to ``length`` positions of random keys/values (synthetic context)."""
    engine.reset()
    cfg = engine.model.config
    g = torch.Generator().manual_seed(0)
    step = 1024
    for start in range(0, length, step):
        n = min(step, length - start)
        for layer in engine.cache.layers:
            k = torch.randn(n, cfg.num_key_value_heads, cfg.head_dim, generator=g)
            layer.extend(k, k.clone())
    engine.cached_tokens = [1] * length


def touch_weights(engine: LocalEngine) -> None:
    """Read one byte of every page of every weight, so that none is faulted in during a timing.

    The weights are memory-mapped; pages idle for a while can leave memory (this VM runs DAMON
    with a pageout scheme: pages unused for about a minute are reclaimed), and an expert read back
    from disk in the middle of a decode step is not what the step costs.
    """
    for t in engine.model.weight_tensors():
        flat = t.reshape(-1)
        flat[:: max(1, 4096 // t.element_size())].float().sum()


def decode_rate(engine: LocalEngine, steps: int) -> float:
    """Tokens per second: one over the median step (the machine is shared; a mean would take its noise)."""
    touch_weights(engine)
    engine.decode_one(5)  # warm
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.decode_one(5)
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def ensure_checkpoint(path: Path, cfg: ModelConfig, format: str = "hf") -> Path:
    if not (path / "config.json").exists():
        print(f"generating {path} ...", file=sys.stderr)
        if os.getpriority(os.PRIO_PROCESS, 0) < 5:
            os.nice(5)
        write_random_checkpoint(path, cfg, format=format)
    return path


def bench_full(path: Path, contexts: list[int], decode_steps: int, prefill_tokens: int) -> dict:
    rss0 = peak_rss_gib()
    t = time.perf_counter()
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")
    load_s = time.perf_counter() - t
    cfg = engine.model.config
    ids = torch.randint(
        0, cfg.vocab_size, (prefill_tokens,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    t = time.perf_counter()
    touch_weights(engine)  # the first pass pages the memory-mapped weights in
    touch_s = time.perf_counter() - t
    t = time.perf_counter()
    engine.prefill(ids)
    prefill_tps = prefill_tokens / (time.perf_counter() - t)
    decode = {}
    for ctx in contexts:
        if ctx != prefill_tokens:  # a context of random keys and values of that length
            fill_cache(engine, ctx)
        tps = decode_rate(engine, decode_steps)
        kv_element = engine.model.embedding.element_size()  # the cache is kept in the weight dtype
        decode[ctx] = {"tokens_per_s": tps, "bytes_per_token": bytes_per_token(cfg, ctx, kv_element)}
        print(f"  decode at {ctx}: {tps:.2f} tok/s", file=sys.stderr)
    return {
        "checkpoint": str(path),
        "format": engine.checkpoint.format if engine.checkpoint else None,
        "layers": cfg.num_hidden_layers,
        "experts": cfg.num_experts,
        "vocab": cfg.vocab_size,
        "load_s": load_s,
        "page_in_s": touch_s,
        "peak_rss_gib": max(peak_rss_gib(), rss0),
        "prefill_tokens": prefill_tokens,
        "prefill_tokens_per_s": prefill_tps,
        "decode": decode,
    }


def bench_against_llama_cpp(
    path: Path, prompts: list[int], contexts: list[int], steps: int, threads: int, rounds: int = 2
) -> dict:
    """Ours and llama.cpp's prefill and decode rates on the same checkpoint, and ours / theirs.

    In ``rounds`` interleaved rounds (ours, then llama-bench, then ours again, ...), each figure the
    median over the rounds, so that a machine whose load drifts treats both engines alike."""
    import llama_cpp  # benchmarks/llama_cpp.py, beside this file

    binary = llama_cpp.build(CACHE)
    gguf = llama_cpp.convert(path, CACHE)
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")
    vocab = engine.model.config.vocab_size
    mine: dict = {"prefill": {n: [] for n in prompts}, "decode": {c: [] for c in contexts}}
    rounds_theirs = []
    for r in range(rounds):
        touch_weights(engine)
        for n in prompts:
            ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist()
            engine.reset()
            t = time.perf_counter()
            engine.prefill(ids)
            mine["prefill"][n].append(n / (time.perf_counter() - t))
            print(f"  round {r + 1}: ours prefill {n}: {mine['prefill'][n][-1]:.1f} tok/s", file=sys.stderr)
        for ctx in contexts:
            fill_cache(engine, ctx)
            mine["decode"][ctx].append(decode_rate(engine, steps))
            print(
                f"  round {r + 1}: ours decode at {ctx}: {mine['decode'][ctx][-1]:.2f} tok/s", file=sys.stderr
            )
        rounds_theirs.append(llama_cpp.bench(binary, gguf, threads=threads, prompts=prompts, depths=contexts))
        print(f"  round {r + 1}: llama.cpp {json.dumps({k: {n: round(v['tokens_per_s'], 2) for n, v in d.items()} for k, d in rounds_theirs[-1].items() if k != 'info'})}", file=sys.stderr)  # fmt: skip
    del engine
    gc.collect()
    ours = {kind: {n: statistics.median(v) for n, v in d.items()} for kind, d in mine.items()}
    theirs: dict = {"info": rounds_theirs[-1]["info"]}
    for kind in ("prefill", "decode"):
        theirs[kind] = {}
        for n in rounds_theirs[0][kind]:
            rates = [t[kind][n]["tokens_per_s"] for t in rounds_theirs if n in t[kind]]
            theirs[kind][n] = {"tokens_per_s": statistics.median(rates), "rounds": rates}
    ratio = {
        kind: {n: ours[kind][n] / theirs[kind][n]["tokens_per_s"] for n in ours[kind] if n in theirs[kind]}
        for kind in ("prefill", "decode")
    }
    layers = open_checkpoint(path).config.num_hidden_layers
    return {
        "checkpoint": str(path),
        "gguf": str(gguf),
        "layers": layers,
        "rounds": rounds,
        "ours": ours,
        "ours_rounds": mine,
        "llama_cpp": theirs,
        "ratio": ratio,
    }


def project_layers(small: dict, large: dict, layers: int) -> dict:
    """Each engine's rates on ``layers`` layers from two cuts (same vocabulary): a token's (or a
    prompt's) time is fixed (embedding, head) plus per layer, so two cuts give both parts."""
    a, b = small["layers"], large["layers"]
    out: dict = {"from_layers": [a, b], "layers": layers}
    for kind in ("prefill", "decode"):
        out[kind] = {}
        for n in large["ratio"][kind]:
            row = {}
            for engine in ("ours", "llama_cpp"):
                rates = [r[engine][kind][n] for r in (small, large)]
                t_small, t_large = (1 / (x if engine == "ours" else x["tokens_per_s"]) for x in rates)
                per_layer = (t_large - t_small) / (b - a)
                fixed = t_small - a * per_layer
                row[engine] = {
                    "per_layer_s": per_layer,
                    "fixed_s": fixed,
                    "tokens_per_s": 1 / (fixed + layers * per_layer),
                }
            row["ratio"] = row["ours"]["tokens_per_s"] / row["llama_cpp"]["tokens_per_s"]
            row["per_layer_ratio"] = row["llama_cpp"]["per_layer_s"] / row["ours"]["per_layer_s"]
            out[kind][n] = row
    return out


CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
"""The vector and matrix features the table reports (Linux's names in ``/proc/cpuinfo``)."""


def bench_layers_ours(path: Path, context: int, steps: int) -> float:
    """Seconds per decode step per layer, our engine."""
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")
    n = engine.model.config.num_hidden_layers
    engine.prefill([i % engine.model.config.vocab_size for i in range(context)])
    return 1.0 / decode_rate(engine, steps) / n


def bench_layers_transformers(path: Path, context: int, steps: int) -> float:
    """Seconds per decode step per layer, transformers (MXFP4 unpacked to bf16 at load, as on any CPU)."""
    from transformers import GptOssForCausalLM
    from transformers.cache_utils import DynamicCache

    model = GptOssForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model.eval()
    n = model.config.num_hidden_layers
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        out = model(torch.arange(context)[None], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        tok = torch.tensor([[5]])
        model(tok, past_key_values=cache, use_cache=True)  # warm
        t = time.perf_counter()
        for _ in range(steps):
            model(tok, past_key_values=cache, use_cache=True)
        dt = (time.perf_counter() - t) / steps
    del model
    gc.collect()
    return dt / n


REFERENCE_HARNESS = ROOT / "reference_gpt_oss.py"
PARITY_PROMPT = [3, 17, 250, 999, 5, 42, 7, 100]


def run_reference(python: str, checkpoint: Path, *options: str) -> dict:
    """Run ``reference_gpt_oss.py`` under ``python``; its JSON, or ``{"error": ...}``."""
    cmd = [python, str(REFERENCE_HARNESS), str(checkpoint), *options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@torch.inference_mode()
def max_logit_gap(path: Path, dtype: str, prompts: list[list[int]], theirs: list[torch.Tensor]) -> dict:
    """Our logits at every position of ``prompts`` against the reference's: max |delta| and scale."""
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype=dtype)
    per_position: list[float] = []
    scale = 0.0
    for ids, ref in zip(prompts, theirs, strict=True):
        ours = engine.model(torch.tensor(ids))
        per_position += (ours - ref).abs().amax(dim=-1).tolist()
        scale = max(scale, ref.abs().max().item())
    gap = max(per_position)
    median = sorted(per_position)[len(per_position) // 2]
    # the decode path (cache, one token) for the last position of the last prompt
    engine.prefill(prompts[-1][:-1])
    last = engine.decode_one(prompts[-1][-1])
    decode_gap = (last - theirs[-1][-1]).abs().max().item()
    return {
        "max_abs_delta": gap,
        "median_position_max_abs_delta": median,
        "positions_over_0.5": sum(d > 0.5 for d in per_position),
        "positions": len(per_position),
        "decode_max_abs_delta": decode_gap,
        "max_abs_logit": scale,
    }


def bench_layers_reference(
    python: str, cut: Path, tiny: Path, context: int, steps: int, threads: int
) -> dict:
    """Per-layer decode of the reference ``gpt_oss.torch`` on ``cut``; logit parity with ours.

    The reference and our engine run the same original-format checkpoint. Parity: fp32 on ``tiny``
    over prompts that cross the sliding window (the reference cast to float32; its weights are the
    same bf16 values ours read), and bf16 on ``cut`` for a short prompt (the reference's dtype:
    its bf16 rounding can flip an expert choice, which moves that position's logits by ~2, so the
    median position is reported beside the maximum). fp32 on ``cut`` itself would take ~10 GB.
    """
    out: dict = {"python": python}
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(3)
        prompts = [torch.randint(0, 1024, (n,), generator=g).tolist() for n in (5, 130, 300)]
        tiny_logits = Path(tmp) / "tiny.pt"
        r = run_reference(
            python,
            tiny,
            "--dtype",
            "fp32",
            "--steps",
            "0",
            "--threads",
            str(threads),
            "--logits-prompts",
            json.dumps(prompts),
            "--logits-out",
            str(tiny_logits),
        )
        if "error" in r:
            return out | {"error": r["error"]}
        theirs = torch.load(tiny_logits)["logits"]
        out["parity_fp32_tiny"] = {"prompt_lengths": [len(p) for p in prompts]} | max_logit_gap(
            tiny, "fp32", prompts, theirs
        )
        cut_logits = Path(tmp) / "cut.pt"
        r = run_reference(
            python,
            cut,
            "--context",
            str(context),
            "--steps",
            str(steps),
            "--threads",
            str(threads),
            "--logits-prompts",
            json.dumps([PARITY_PROMPT]),
            "--logits-out",
            str(cut_logits),
        )
        if "error" in r:
            return out | {"error": r["error"]}
        theirs = torch.load(cut_logits)["logits"]
        out["run"] = r
        out["parity_bf16_cut"] = {"prompt_length": len(PARITY_PROMPT)} | {
            f"ours_{dtype}": max_logit_gap(cut, dtype, [PARITY_PROMPT], theirs) for dtype in ("bf16", "fp32")
        }
    gc.collect()
    return out


def bench_prefix_reuse(path: Path, prefix: int, tail: int) -> dict:
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")
    g = torch.Generator().manual_seed(2)
    first = torch.randint(0, engine.model.config.vocab_size, (prefix,), generator=g).tolist()
    t = time.perf_counter()
    out = list(engine.generate(first, max_tokens=1))
    cold_s = time.perf_counter() - t
    second = first + out + torch.randint(0, engine.model.config.vocab_size, (tail,), generator=g).tolist()
    t = time.perf_counter()
    list(engine.generate(second, max_tokens=1))
    warm_s = time.perf_counter() - t
    s = engine.last_stats
    return {
        "prefix_tokens": prefix,
        "appended_tokens": tail,
        "cold_prefill_s": cold_s,
        "warm_prefill_s": warm_s,
        "reused_tokens": s.reused_tokens,
        "prefilled_tokens": s.prefilled_tokens,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=CACHE / "gpt-oss-20b-hf")
    p.add_argument("--contexts", default="128,2048,8192")
    p.add_argument("--decode-steps", type=int, default=10)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--layer-context", type=int, default=128)
    p.add_argument("--prefix", type=int, default=4096, help="prefix length of the prefix-reuse check")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-full", action="store_true", help="skip the full 20b run")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument(
        "--reference-python",
        default=os.environ.get("GPTOSS_REFERENCE_PYTHON", "/work/.venv-ref312/bin/python"),
        help="Python 3.12 with gpt-oss and torch (scripts/setup_reference.sh)",
    )
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument(
        "--reference-context",
        type=int,
        default=8,
        help="prompt length for the cache-less reference (each step reruns it; ~200 MB per position per layer)",
    )
    p.add_argument("--reference-steps", type=int, default=3)
    p.add_argument(
        "--llama-cpp", action="store_true", help="llama.cpp in the same run (builds it once, cached)"
    )
    p.add_argument(
        "--llama-cpp-layers",
        default="4",
        help="layers of the 20b cut both engines run; two counts (e.g. 2,4): both cuts, and each engine's "
        "time per token split into per-layer and fixed (head) parts, projected to 24 layers",
    )
    p.add_argument("--llama-cpp-prompts", default="512,2048")
    p.add_argument("--llama-cpp-rounds", type=int, default=2, help="interleaved rounds of the two engines")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "model.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels.threads = args.threads
    contexts = [int(c) for c in args.contexts.split(",")]

    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "kernels": kernels.describe(),
            "kernel_isa": kernels.isa(),
            "cpu_features": sorted(set(CPU_FEATURES) & kernels.cpu_features()),
        }
    }
    ceiling = bandwidth_ceiling()
    results["bandwidth_ceiling_gb_s"] = ceiling
    print(f"bandwidth ceiling: {ceiling:.1f} GB/s", file=sys.stderr)

    cut = ensure_checkpoint(
        CACHE / "gpt-oss-20b-2layers-v1024", replace(PRESETS["20b"].with_layers(2), vocab_size=1024)
    )
    if not args.skip_full:
        full = ensure_checkpoint(args.checkpoint, PRESETS["20b"])
        assert open_checkpoint(full).config.num_hidden_layers == 24
        r = bench_full(full, contexts, args.decode_steps, args.prefill_tokens)
        for d in r["decode"].values():
            d["fraction_of_ceiling"] = d["tokens_per_s"] * d["bytes_per_token"] / 1e9 / ceiling
        results["full_20b"] = r
        gc.collect()

    ours = bench_layers_ours(cut, args.layer_context, args.decode_steps)
    results["per_layer"] = {"context": args.layer_context, "ours_decode_s": ours}
    if not args.skip_transformers:
        theirs = bench_layers_transformers(cut, args.layer_context, args.decode_steps)
        results["per_layer"] |= {"transformers_decode_s": theirs, "speedup": theirs / ours}
    if args.skip_reference:
        print("reference gpt_oss.torch skipped: --skip-reference", file=sys.stderr)
    elif not os.access(args.reference_python, os.X_OK):
        reason = f"{args.reference_python} not found (run scripts/setup_reference.sh)"
        print(f"reference gpt_oss.torch skipped: {reason}", file=sys.stderr)
        results["per_layer"]["reference_skipped"] = reason
    else:
        cfg = replace(PRESETS["20b"].with_layers(2), vocab_size=1024)
        cut_original = ensure_checkpoint(CACHE / "gpt-oss-20b-2layers-v1024-original", cfg, "original")
        tiny = ensure_checkpoint(
            CACHE / "tiny-v1024-original", replace(PRESETS["tiny"], vocab_size=1024), "original"
        )
        ref = bench_layers_reference(
            args.reference_python,
            cut_original,
            tiny,
            args.reference_context,
            args.reference_steps,
            args.threads,
        )
        results["reference"] = ref
        if "error" in ref:
            print(f"reference gpt_oss.torch failed: {ref['error']}", file=sys.stderr)
        else:
            run = ref["run"]
            pl = results["per_layer"]
            pl["reference_context"] = args.reference_context
            if "decode_s_per_layer" in run:
                same = bench_layers_ours(cut_original, args.reference_context, args.decode_steps)
                pl["ours_decode_s_at_reference_context"] = same
                pl["reference_decode_s"] = run["decode_s_per_layer"]
                pl["speedup_vs_reference"] = run["decode_s_per_layer"] / same
            else:
                print(f"reference decode skipped: {run.get('skipped')}", file=sys.stderr)
            pl["reference_one_position_s"] = run["one_position_forward_s_per_layer"]
            pl["speedup_vs_reference_one_position"] = run["one_position_forward_s_per_layer"] / ours
    if args.llama_cpp:
        prompts = [int(n) for n in args.llama_cpp_prompts.split(",")]
        cuts = [int(n) for n in args.llama_cpp_layers.split(",")]
        runs = []
        for layers in cuts:
            peer = ensure_checkpoint(
                CACHE / f"gpt-oss-20b-{layers}layers", PRESETS["20b"].with_layers(layers)
            )
            runs.append(
                bench_against_llama_cpp(
                    peer, prompts, contexts, args.decode_steps, args.threads, args.llama_cpp_rounds
                )
            )
            gc.collect()
        results["llama_cpp"] = runs[-1]
        if len(runs) > 1:
            results["llama_cpp_cuts"] = runs
            results["llama_cpp_projected"] = project_layers(
                runs[0], runs[-1], PRESETS["20b"].num_hidden_layers
            )
    results["prefix_reuse"] = bench_prefix_reuse(cut, args.prefix, 64)
    results["peak_rss_gib"] = peak_rss_gib()
    # the machine is shared: take the ceiling as the best of a copy before and after the runs
    after = bandwidth_ceiling()
    results["bandwidth_ceiling_samples_gb_s"] = [ceiling, after]
    results["bandwidth_ceiling_gb_s"] = ceiling = max(ceiling, after)
    for d in results.get("full_20b", {}).get("decode", {}).values():
        d["fraction_of_ceiling"] = d["tokens_per_s"] * d["bytes_per_token"] / 1e9 / ceiling
    results["machine"]["load_average_end"] = os.getloadavg()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    samples = ", ".join(f"{x:.1f}" for x in r.get("bandwidth_ceiling_samples_gb_s", []))
    m = r["machine"]
    rows = [
        ("CPU", f"{m['cpu']}, {m['threads']} threads, load {m['load_average'][0]:.1f}"),
        ("CPU features", " ".join(m.get("cpu_features", [])) or "-"),
        ("kernels in use", f"{m.get('kernel_isa')}"),
        ("bandwidth ceiling (copy, r+w)", f"{r['bandwidth_ceiling_gb_s']:.1f} GB/s (best of {samples})"),
    ]
    if "full_20b" in r:
        f = r["full_20b"]
        rows += [
            (
                "20b load time (mmap) / paging every weight in",
                f"{f['load_s']:.1f} s / {f['page_in_s']:.1f} s",
            ),
            ("20b peak RSS", f"{f['peak_rss_gib']:.2f} GiB"),
            (f"20b prefill ({f['prefill_tokens']} tokens)", f"{f['prefill_tokens_per_s']:.2f} tok/s"),
        ]
        for ctx, d in f["decode"].items():
            rows.append(
                (
                    f"20b decode at {ctx}",
                    f"{d['tokens_per_s']:.2f} tok/s  ({d['bytes_per_token'] / 1e9:.2f} GB/token, "
                    f"{100 * d['fraction_of_ceiling']:.0f}% of ceiling)",
                )
            )
    pl = r["per_layer"]
    rows.append(("decode per layer, ours", f"{1e3 * pl['ours_decode_s']:.1f} ms"))
    if "transformers_decode_s" in pl:
        rows.append(("decode per layer, transformers", f"{1e3 * pl['transformers_decode_s']:.1f} ms"))
        rows.append(("speedup vs transformers", f"{pl['speedup']:.1f}x"))
    if "reference_one_position_s" in pl:
        ref, ctx = r["reference"], pl["reference_context"]
        if "reference_decode_s" in pl:
            rows.append(
                (
                    f"decode per layer at {ctx}, gpt_oss.torch",
                    f"{1e3 * pl['reference_decode_s']:.0f} ms (no KV cache: reruns all positions; "
                    f"ours at {ctx}: {1e3 * pl['ours_decode_s_at_reference_context']:.1f} ms, "
                    f"{pl['speedup_vs_reference']:.0f}x)",
                )
            )
        rows.append(
            (
                "gpt_oss.torch one-position forward per layer",
                f"{1e3 * pl['reference_one_position_s']:.0f} ms (its cost with a cache, at best; "
                f"ours at {pl['context']}: {pl['speedup_vs_reference_one_position']:.1f}x)",
            )
        )
        rows.append(("gpt_oss.torch load (2 layers, MXFP4 -> bf16)", f"{ref['run']['load_s']:.1f} s"))
        t, c = ref["parity_fp32_tiny"], ref["parity_bf16_cut"]
        rows.append(
            (
                "logits vs gpt_oss.torch, fp32 (tiny)",
                f"max |delta| {t['max_abs_delta']:.1e} (decode path {t['decode_max_abs_delta']:.1e}; "
                f"logits up to {t['max_abs_logit']:.1f})",
            )
        )
        for dtype in ("bf16", "fp32"):
            d = c[f"ours_{dtype}"]
            rows.append(
                (
                    f"logits, ours {dtype} vs gpt_oss.torch bf16 (cut)",
                    f"median position {d['median_position_max_abs_delta']:.2f}, max {d['max_abs_delta']:.2f} "
                    f"({d['positions_over_0.5']}/{d['positions']} positions > 0.5; decode path "
                    f"{d['decode_max_abs_delta']:.2f}); logits up to {d['max_abs_logit']:.1f}",
                )
            )
    if "llama_cpp" in r:
        lc = r["llama_cpp"]
        tag = f"{lc['layers']} layers, full vocab"
        for kind, unit in (("prefill", "tokens"), ("decode", "context")):
            for n, ratio in lc["ratio"][kind].items():
                ours, theirs = lc["ours"][kind][n], lc["llama_cpp"][kind][n]["tokens_per_s"]
                rows.append(
                    (
                        f"{kind} ({unit} {n}, {tag}) ours / llama.cpp",
                        f"{ours:.2f} / {theirs:.2f} tok/s = {ratio:.2f}x",
                    )
                )
    if "llama_cpp_projected" in r:
        pj = r["llama_cpp_projected"]
        tag = f"{pj['layers']} layers, projected from {pj['from_layers'][0]} and {pj['from_layers'][1]}"
        for kind, unit in (("prefill", "tokens"), ("decode", "context")):
            for n, row in pj[kind].items():
                o, t = row["ours"], row["llama_cpp"]
                rows.append(
                    (
                        f"{kind} ({unit} {n}, {tag}) ours / llama.cpp",
                        f"{o['tokens_per_s']:.2f} / {t['tokens_per_s']:.2f} tok/s = {row['ratio']:.2f}x "
                        f"(per layer {1e3 * o['per_layer_s']:.1f} / {1e3 * t['per_layer_s']:.1f} ms, "
                        f"fixed {1e3 * o['fixed_s']:.1f} / {1e3 * t['fixed_s']:.1f} ms)",
                    )
                )
    pr = r["prefix_reuse"]
    rows.append(
        (
            f"prefix reuse ({pr['prefix_tokens']} + {pr['appended_tokens']})",
            f"prefilled {pr['prefilled_tokens']}, reused {pr['reused_tokens']}; "
            f"{pr['cold_prefill_s']:.1f} s cold -> {pr['warm_prefill_s']:.2f} s",
        )
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
