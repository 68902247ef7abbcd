"""Time the reference ``gpt_oss.torch`` implementation (PyPI ``gpt-oss``) on a checkpoint, on the CPU.

    python benchmarks/reference_gpt_oss.py CHECKPOINT [--context 8] [--steps 3] [--threads N]
        [--dtype bf16|fp32] [--logits-prompts JSON --logits-out FILE]

Runs under the Python 3.12 virtualenv of ``scripts/setup_reference.sh`` and imports only torch,
gpt_oss and the standard library (not gptoss_agent); ``benchmarks/model.py`` calls it through a
subprocess. Prints one JSON object on stdout.

What the reference does, and so what is timed: ``gpt_oss.torch.model.TokenGenerator`` loads an
original-format checkpoint with every MXFP4 expert unpacked to bf16 (``weights.Checkpoint``), and
keeps no KV cache: each generated token runs ``Transformer.forward`` over the whole sequence so far
(prompt plus generated tokens), with a full causal mask, and keeps the last position's logits. Its
MoE gathers each position's top-k experts' weight matrices (``mlp1_weight[expert_indices]``), so
one forward over T positions allocates T * k expert matrices: about 200 MB per position per layer
at the 20b shapes. The harness therefore refuses contexts whose gather would exceed
``--max-transient-gib`` and says so in its JSON instead of running the machine out of memory.

Figures, all in seconds:

* ``load_s``: ``TokenGenerator(checkpoint, device=cpu)`` (reads and unpacks every expert);
* ``generate_step_s``: the generator's own steps, from a prompt of ``context`` tokens: the first
  step (over ``context`` positions) warms up and is not counted, then ``steps`` more, each over one
  position more than the last; ``decode_s_per_layer`` is their mean over the layer count;
* ``one_position_forward_s_per_layer``: ``Transformer.forward`` on a single token (best of a few),
  per layer: what a step would cost the reference's layer code if it had a cache (a lower bound).

``--dtype fp32`` casts the loaded model to float32 (``Module.float()``: the weights are the same
bf16 values) for a parity check; ``--logits-prompts`` then saves each prompt's logits at every
position (float32) with ``torch.save`` into ``--logits-out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import sys
import time

import torch
from gpt_oss.torch.model import TokenGenerator


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gather_bytes(config: object, positions: int, element_size: int) -> int:
    """Bytes the reference's MoE gathers for one forward over ``positions`` tokens (one layer)."""
    h = config.hidden_size  # type: ignore[attr-defined]
    i = config.intermediate_size  # type: ignore[attr-defined]
    k = config.experts_per_token  # type: ignore[attr-defined]
    return positions * k * (2 * i * h + h * i + 2 * i + h) * element_size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--context", type=int, default=8, help="prompt length before the timed steps")
    p.add_argument("--steps", type=int, default=3, help="timed generator steps (0: none)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--max-transient-gib", type=float, default=4.0)
    p.add_argument("--logits-prompts", help="JSON list of token-id lists")
    p.add_argument("--logits-out", help="file for the logits of --logits-prompts (torch.save)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device("cpu")
    t = time.perf_counter()
    generator = TokenGenerator(args.checkpoint, device=device)
    load_s = time.perf_counter() - t
    model = generator.model
    if args.dtype == "fp32":
        with torch.inference_mode():  # its parameters are inference tensors (loaded in that mode)
            model.float()
    element_size = 4 if args.dtype == "fp32" else 2
    with open(os.path.join(args.checkpoint, "config.json")) as f:
        config = argparse.Namespace(**json.load(f))
    layers = len(model.block)
    out: dict = {
        "implementation": "gpt_oss.torch",
        "gpt_oss": importlib.metadata.version("gpt-oss"),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "dtype": args.dtype,
        "threads": args.threads,
        "layers": layers,
        "kv_cache": False,
        "load_s": load_s,
        "context": args.context,
    }
    limit = args.max_transient_gib * 2**30

    with torch.inference_mode():
        one = torch.as_tensor([5], dtype=torch.int32, device=device)
        model(one)  # warm
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            model(one)
            best = min(best, time.perf_counter() - t)
        out["one_position_forward_s_per_layer"] = best / layers

    longest = args.context + args.steps
    need = gather_bytes(config, longest, element_size)
    out["gather_gib_at_longest_step"] = need / 2**30
    if args.steps > 0 and need > limit:
        out["skipped"] = (
            f"a step over {longest} positions gathers {need / 2**30:.1f} GiB of expert weights per layer "
            f"(> --max-transient-gib {args.max_transient_gib})"
        )
    elif args.steps > 0:
        prompt = [i % config.vocab_size for i in range(args.context)]
        times = []
        t = time.perf_counter()
        for _ in generator.generate(prompt, stop_tokens=[], temperature=0.0, max_tokens=args.steps + 1):
            now = time.perf_counter()
            times.append(now - t)
            t = now
        out["generate_step_s"] = times[1:]
        out["decode_s"] = sum(times[1:]) / args.steps
        out["decode_s_per_layer"] = out["decode_s"] / layers

    if args.logits_prompts:
        prompts = json.loads(args.logits_prompts)
        logits = []
        with torch.inference_mode():
            for ids in prompts:
                if gather_bytes(config, len(ids), element_size) > limit:
                    raise SystemExit(f"prompt of {len(ids)} tokens exceeds --max-transient-gib")
                x = torch.as_tensor(ids, dtype=torch.int32, device=device)
                logits.append(model(x).float())
        torch.save({"prompts": prompts, "logits": logits}, args.logits_out)
        out["logits_out"] = args.logits_out

    out["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
