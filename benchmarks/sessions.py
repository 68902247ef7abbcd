"""Concurrent sessions on one LocalEngine: batched decode against one session at a time, on the CPU.

    python benchmarks/sessions.py [--layers 2] [--vocab 201088] [--sessions 1,2,4,8] [--tokens 24]
        [--prompt 64] [--threads N] [--checkpoint DIR]

Measures, on a gpt-oss-20b-shaped MXFP4 checkpoint cut to ``--layers`` layers (bf16, the CPU's
real mode):

* for N sessions, N threads each decoding ``--tokens`` greedy tokens on its own session of one
  engine at the same time (their steps run as batches), against the same sessions decoding one
  after another: aggregate tokens/s, per-session tokens/s, and the mean batch size;
* the same with the vocabulary cut to 1024 (``--layer-vocab``), which isolates the layers (the
  head of the full vocabulary reads 1.1 GB a step, more than two 20b layers, and batching it is
  free); from both, the projected aggregate of the whole 24-layer model (``24 / layers`` times
  the layers' step plus the head's);
* the byte bound: how many distinct experts a batch step of N sessions chose (counted from the
  routers' choices during the run), hence the bytes a step must read against N single steps,
  and the speed-up that reading alone allows (``bound``): a batch cannot beat the ratio of the
  bytes it saves;
* sliding-window snapshots: the bytes a session's snapshots hold after a turn of a long
  generation, per anchor and per layer, scaled to the 20b's 12 sliding layers.

Missing checkpoints are generated first (``nice``d) under ``$GPTOSS_BENCH_CACHE`` (default
``/work/.cache-bench``). Writes ``benchmarks/results/sessions.json`` and prints a table. The
machine this runs on may be shared: rates are medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
from gptoss_agent.model import Sampling
from gptoss_agent.model.config import PRESETS, ModelConfig
from gptoss_agent.model.local import LocalEngine, Session
from gptoss_agent.model.random_checkpoint import write_random_checkpoint
from gptoss_agent.model.transformer import SMALL_BATCH, MLPBlock, linear

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GPTOSS_BENCH_CACHE", "/work/.cache-bench"))
GREEDY = Sampling(temperature=0.0)


def ensure_checkpoint(path: Path, cfg: ModelConfig) -> Path:
    if not (path / "config.json").exists():
        print(f"generating {path} ...", file=sys.stderr)
        if os.getpriority(os.PRIO_PROCESS, 0) < 5:
            os.nice(5)
        write_random_checkpoint(path, cfg, format="hf")
    return path


def touch_weights(engine: LocalEngine) -> None:
    """Page every weight in (the weights are memory-mapped; see benchmarks/model.py)."""
    for t in engine.model.weight_tensors():
        flat = t.reshape(-1)
        flat[:: max(1, 4096 // t.element_size())].float().sum()


def prompts(engine: LocalEngine, n: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    vocab = engine.model.config.vocab_size
    return [torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(n)]


def decode(session: Session, prompt: list[int], tokens: int) -> list[tuple[float, float]]:
    """(wall, process CPU) times at which the tokens of one greedy generation arrived; the prompt
    is already cached (its last token re-runs)."""
    times = []
    for _ in session.generate(prompt, sampling=GREEDY, max_tokens=tokens):
        times.append((time.perf_counter(), time.process_time()))
    assert len(times) == tokens, len(times)
    return times


class ExpertCounter:
    """Distinct experts per batched MoE call (2..SMALL_BATCH rows), from the block's own router.

    The C decode layers (``kernels.decode_layer``) route inside C, so the counter runs the layers'
    Python path (``GPTOSS_KERNELS_FUSED=0``), which chooses the same experts bit for bit: count in a
    run of its own, not in a timed one."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, distinct experts)
        self._forward = MLPBlock.forward
        self._fused = os.environ.get("GPTOSS_KERNELS_FUSED")

    def __enter__(self) -> ExpertCounter:
        counter, forward = self, self._forward
        os.environ["GPTOSS_KERNELS_FUSED"] = "0"

        def counted(block: MLPBlock, x: torch.Tensor) -> torch.Tensor:
            if 1 < x.shape[0] <= SMALL_BATCH:
                logits = linear(block.norm(x), block.gate_weight, block.gate_bias)
                chosen = torch.topk(logits, k=block.top_k, dim=-1).indices
                counter.calls.append((x.shape[0], int(chosen.unique().numel())))
            return forward(block, x)

        MLPBlock.forward = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        MLPBlock.forward = self._forward  # type: ignore[method-assign]
        if self._fused is None:
            os.environ.pop("GPTOSS_KERNELS_FUSED", None)
        else:
            os.environ["GPTOSS_KERNELS_FUSED"] = self._fused

    def mean_distinct(self, rows: int) -> float | None:
        seen = [d for r, d in self.calls if r == rows]
        return statistics.mean(seen) if seen else None


def step_bytes(engine: LocalEngine) -> dict[str, int]:
    """Bytes one decode step reads: per layer the dense weights and one expert, and the head."""
    model = engine.model
    mlp = model.mlp[0]
    expert = sum(
        t[0].numel() * t[0].element_size() for w in (mlp.mlp1, mlp.mlp2) for t in (w.blocks, w.scales)
    )
    attn = model.attn[0]
    layer = sum(t.numel() * t.element_size() for t in (attn.qkv_weight, attn.out_weight, mlp.gate_weight))
    head = model.unembedding.numel() * model.unembedding.element_size()
    return {"expert": expert, "dense_per_layer": layer, "head": head, "top_k": mlp.top_k}


def byte_bound(b: dict[str, int], n: int, distinct: float, layers: int) -> float:
    """Speed-up of one batch step of n sessions over n single steps if only bytes counted."""
    single = layers * (b["dense_per_layer"] + b["top_k"] * b["expert"]) + b["head"]
    batch = layers * (b["dense_per_layer"] + distinct * b["expert"]) + b["head"]
    return n * single / batch


def run_sessions(engine: LocalEngine, n: int, tokens: int, prompt_len: int) -> dict:
    """Steady-state rates: tokens that arrived while every session was decoding, over that time,
    in wall seconds and in CPU seconds of this process (the machine may be shared: CPU time is
    what the work cost, whatever else ran)."""
    sessions = [engine.session() for _ in range(n)]
    ps = prompts(engine, n, prompt_len)
    for s, p in zip(sessions, ps, strict=True):
        s.prefill(p[:-1])
    alone, alone_cpu = [], []  # one at a time: a session decodes by itself (two, back to back)
    def rewind(s: Session, p: list[int]) -> None:  # back to the prompt, for the next run
        s.cache.truncate(len(p) - 1)
        del s.cached_tokens[len(p) - 1 :]

    for s, p in list(zip(sessions, ps, strict=True))[:2]:
        t = decode(s, p, tokens)
        alone.append((len(t) - 1) / (t[-1][0] - t[0][0]))
        alone_cpu.append((len(t) - 1) / (t[-1][1] - t[0][1]))
        rewind(s, p)

    def together(count: int) -> list[list[tuple[float, float]]]:
        arrivals: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        barrier = threading.Barrier(n)

        def work(i: int) -> None:
            barrier.wait()
            arrivals[i] = decode(sessions[i], ps[i], count)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return arrivals

    batches0, rows0 = engine._batcher.batches, engine._batcher.rows
    arrivals = together(tokens)
    mean_batch = (engine._batcher.rows - rows0) / max(1, engine._batcher.batches - batches0)
    with ExpertCounter() as counter:  # the same steps again, untimed, to count the routers' choices
        for s, p in zip(sessions, ps, strict=True):
            rewind(s, p)
        together(min(tokens, 8))
    # the window in which all n decoded together (their one-token prefills are serialised)
    first = max((a[0] for a in arrivals), key=lambda x: x[0])
    last = min((a[-1] for a in arrivals), key=lambda x: x[0])
    inside = [sum(first[0] < x[0] <= last[0] for x in a) for a in arrivals]
    span, cpu = last[0] - first[0], last[1] - first[1]
    return {
        "sessions": n,
        "one_at_a_time_tokens_per_s": statistics.median(alone),
        "concurrent_tokens_per_s": sum(inside) / span,
        "per_session_tokens_per_s": statistics.median(inside) / span,
        "one_at_a_time_tokens_per_cpu_s": statistics.median(alone_cpu),
        "concurrent_tokens_per_cpu_s": sum(inside) / cpu,
        "mean_batch": mean_batch,
        "distinct_experts_per_layer": counter.mean_distinct(n) if n > 1 else float(engine.model.mlp[0].top_k),
    }


def bench(path: Path, counts: list[int], tokens: int, prompt_len: int, repeats: int) -> tuple[dict, dict]:
    """Rates per session count, and the bytes a step reads (``step_bytes``)."""
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16", batch_wait=0.05)
    touch_weights(engine)
    decode(engine.session(), prompts(engine, 1, prompt_len)[0], 4)  # warm
    out = {}
    for n in counts:
        runs = [run_sessions(engine, n, tokens, prompt_len) for _ in range(repeats)]
        keys = [k for k in runs[0] if k != "sessions"]
        seen = {k: [r[k] for r in runs if r[k] is not None] for k in keys}
        out[n] = {"sessions": n} | {k: statistics.median(v) if v else None for k, v in seen.items()}
        r = out[n]
        print(
            f"  {n} sessions: {r['concurrent_tokens_per_s']:.2f} tok/s together, "
            f"{r['one_at_a_time_tokens_per_s']:.2f} one at a time; per CPU second "
            f"{r['concurrent_tokens_per_cpu_s']:.2f} / {r['one_at_a_time_tokens_per_cpu_s']:.2f} "
            f"(mean batch {r['mean_batch']:.1f}, distinct experts a layer {r['distinct_experts_per_layer']})",
            file=sys.stderr,
        )
    return out, step_bytes(engine)


def bench_snapshots(path: Path, history: int) -> dict:
    """A turn's prompt, a long generation (played as a prompt here), then a new turn that drops it."""
    engine = LocalEngine.from_checkpoint(path, device="cpu", dtype="bf16")
    cfg = engine.model.config
    s = engine.session()
    g = torch.Generator().manual_seed(3)
    first = torch.randint(0, cfg.vocab_size, (400,), generator=g).tolist()
    middle = torch.randint(0, cfg.vocab_size, (history,), generator=g).tolist()
    out = list(s.generate(first, sampling=GREEDY, max_tokens=2))
    list(s.generate(first + out + middle, sampling=GREEDY, max_tokens=2))
    sliding = [layer for layer in s.cache.layers if layer.window is not None]
    held = s.cache.snapshot_bytes() // len(sliding)
    nxt = first + torch.randint(0, cfg.vocab_size, (140,), generator=g).tolist()
    t = time.perf_counter()
    list(s.generate(nxt, sampling=GREEDY, max_tokens=1))
    new_turn = time.perf_counter() - t
    row = 2 * cfg.num_key_value_heads * cfg.head_dim * s.cache.layers[0]._k.element_size()
    rows_per_anchor = cfg.sliding_window - 1 + sliding[0].after
    return {
        "history_tokens": len(first) + len(out) + history,
        "anchors": len(s.cache.anchors),
        "snapshot_bytes_per_sliding_layer": held,
        "snapshot_bytes_20b": 12 * held,
        "bytes_per_anchor_20b_at_most": 12 * rows_per_anchor * row,
        "reused_on_the_new_turn": s.last_stats.reused_tokens,
        "prefilled_on_the_new_turn": s.last_stats.prefilled_tokens,
        "new_turn_seconds": new_turn,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="20b", help="model shape (tiny: a quick check of the script)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--sessions", default="1,2,4,8")
    p.add_argument("--tokens", type=int, default=24, help="decode tokens per session")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layer-vocab", type=int, default=1024, help="vocabulary of the layers-only run")
    p.add_argument("--history", type=int, default=2100, help="tokens of the dropped middle (snapshots)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "sessions.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(x) for x in args.sessions.split(",")]
    full_cfg = PRESETS[args.preset].with_layers(args.layers)
    cut_cfg = replace(full_cfg, vocab_size=args.layer_vocab)
    full = ensure_checkpoint(CACHE / f"{args.preset}-{args.layers}l", full_cfg)
    cut = ensure_checkpoint(CACHE / f"{args.preset}-{args.layers}l-v{args.layer_vocab}", cut_cfg)
    print(f"layers only (vocabulary {args.layer_vocab}):", file=sys.stderr)
    layers, _ = bench(cut, counts, args.tokens, args.prompt, args.repeats)
    print(f"{args.layers} layers + the full head:", file=sys.stderr)
    whole, nbytes = bench(full, counts, args.tokens, args.prompt, args.repeats)
    # projected 24 layers: per step, (24 / layers) x the layers' time + the head's time
    projected = {}
    scale = PRESETS["20b"].num_hidden_layers / args.layers
    keys = [k for k in layers[counts[0]] if "tokens_per" in k and "per_session" not in k]
    for n in counts:
        lay = {k: n / layers[n][k] for k in keys}  # seconds per step (of n tokens)
        head = {k: max(0.0, n / whole[n][k] - lay[k]) for k in keys}
        projected[n] = {k + "_24_layers": n / (scale * lay[k] + head[k]) for k in keys}
        distinct = layers[n]["distinct_experts_per_layer"]
        projected[n]["byte_bound_24_layers"] = (
            byte_bound(nbytes, n, distinct, PRESETS["20b"].num_hidden_layers)
            if distinct is not None
            else None
        )
    snapshots = bench_snapshots(full, args.history)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        "checkpoint": str(full),
        "layers": args.layers,
        "tokens_per_session": args.tokens,
        "layers_only": layers,
        "with_head": whole,
        "step_bytes": nbytes,
        "projected_20b": projected,
        "snapshots": snapshots,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("projected 24 layers, together over one at a time, against the byte bound:")
    for n in counts:
        pr = projected[n]
        gain = pr["concurrent_tokens_per_s_24_layers"] / pr["one_at_a_time_tokens_per_s_24_layers"]
        bound = pr["byte_bound_24_layers"]
        print(
            f"{n:>8} {gain:.2f}x of a byte bound of "
            + (f"{bound:.2f}x ({gain / bound:.0%})" if bound else "-")
        )
    print(
        f"{'sessions':>8} {'layers only':>22} {'+ full head':>22} {'projected 24 layers':>22}   (together / one at a time)"
    )
    for unit in ("s", "cpu_s"):
        print(f"tokens per {'second' if unit == 's' else 'CPU second'}:")
        c, o = f"concurrent_tokens_per_{unit}", f"one_at_a_time_tokens_per_{unit}"
        for n in counts:
            a, b, pr = layers[n], whole[n], projected[n]
            print(
                f"{n:>8} {a[c]:>10.2f} / {a[o]:<10.2f} {b[c]:>10.2f} / {b[o]:<10.2f} "
                f"{pr[c + '_24_layers']:>10.2f} / {pr[o + '_24_layers']:<10.2f}"
            )
    print(json.dumps(snapshots, indent=2))


if __name__ == "__main__":
    main()
