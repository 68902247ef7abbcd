"""``python -m gptoss_agent.model.demo train|pack|path|eval ...``"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime


def _log(path: str | None) -> Callable[[str], None]:
    f = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def log(line: str) -> None:
        stamped = f"{datetime.now(UTC):%H:%M:%S} {line}"
        print(stamped, file=f or sys.stdout, flush=True)

    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gptoss_agent.model.demo", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) the demo model into OUT")
    t.add_argument("out")
    t.add_argument("--minutes", type=float, default=60.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--weights", default="", help="batch shares, e.g. python=2,functions=1,browser=1")
    t.add_argument("--skills", default="python", help="comma-separated: python,functions,browser; training aids: copy (repeat numbers and names), args (fill a function call, made-up values)")
    t.add_argument("--first", default="", help="SKILLS:FRACTION, e.g. copy,python:0.4: those skills alone first")
    t.add_argument("--digit-weight", type=float, default=3.0, help="loss weight of digit targets")
    t.add_argument("--lookup-weight", type=float, default=8.0,
                   help="loss weight of the first token of a copied number or name")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-tokens", type=int, default=3072)
    t.add_argument("--qat-from", type=float, default=0.85)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--model", default="", help="ModelConfig overrides as JSON, e.g. '{\"hidden_size\": 384}'")
    t.add_argument("--log", help="append the log to this file instead of stdout")
    k = sub.add_parser("pack", help="export a training state as the shipped checkpoint archive")
    k.add_argument("state", help="OUT/state.pt of a training run")
    k.add_argument("archive", nargs="?", help="default: the package's demo-checkpoint.tar.xz")
    k.add_argument("--dir", help="also write the unpacked checkpoint directory here")
    sub.add_parser("path", help="unpack the shipped checkpoint (once) and print its directory")
    b = sub.add_parser("bf16", help="write a checkpoint again with plain bf16 experts (the same weights, for vLLM on the CPU)")
    b.add_argument("out", help="directory to write")
    b.add_argument("--checkpoint", help="a demo checkpoint directory (default: the shipped one)")
    e = sub.add_parser("eval", help="accuracy on the held-out split through the real Agent and tools")
    e.add_argument("checkpoint", nargs="?", help="a checkpoint directory (default: the shipped one)")
    e.add_argument("--n", type=int, default=100, help="cases per skill")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--split", choices=("heldout", "train"), default="heldout",
                   help="train: phrasings and names trained on, new numbers (what was learnt, not generalisation)")
    e.add_argument("--skills", default="python,functions,browser")
    e.add_argument("--sandbox", default="auto")
    e.add_argument("--url", help="evaluate a vLLM server serving the same weights instead")
    e.add_argument("--log", help="append failures and progress to this file")
    e.add_argument("--json", help="write every case's result to this file")
    args = p.parse_args(argv)
    if args.command == "train":
        from gptoss_agent.model.demo.train import TrainConfig, train

        skills = tuple(s.strip() for s in args.skills.split(",") if s.strip())
        weights = {s: 1.0 for s in skills}
        for part in filter(None, args.weights.split(",")):
            k, _, v = part.partition("=")
            weights[k.strip()] = float(v)
        first, _, fraction = args.first.partition(":")
        cfg = TrainConfig(
            minutes=args.minutes, seed=args.seed, lr=args.lr, batch_tokens=args.batch_tokens,
            skills=skills, weights=weights, qat_from=args.qat_from, threads=args.threads,
            first_skills=tuple(s for s in first.split(",") if s), first_fraction=float(fraction or 0),
            digit_weight=args.digit_weight,
            lookup_weight=args.lookup_weight,
            max_steps=args.max_steps, model=json.loads(args.model) if args.model else {},
        )  # fmt: skip
        train(args.out, cfg, log=_log(args.log))
        return 0
    if args.command == "pack":
        from gptoss_agent.model.demo.pack import ARCHIVE, export, pack

        out = pack(args.state, args.archive or ARCHIVE)
        if args.dir:
            export(args.state, args.dir)
        print(f"{out}: {out.stat().st_size / 2**20:.2f} MiB")
        return 0
    if args.command == "path":
        from gptoss_agent.model.demo.pack import demo_checkpoint

        try:
            print(demo_checkpoint())
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "bf16":
        from gptoss_agent.model.demo.pack import demo_checkpoint, export_bf16

        print(export_bf16(args.checkpoint or demo_checkpoint(), args.out))
        return 0
    if args.command == "eval":
        from dataclasses import asdict

        from gptoss_agent.model.demo.evaluate import evaluate, format_table

        engine = None
        if args.url:
            from gptoss_agent.model.local import load_engine

            engine = load_engine(args.url)
        skills = tuple(s.strip() for s in args.skills.split(",") if s.strip())
        results = evaluate(args.checkpoint, n=args.n, seed=args.seed, skills=skills, sandbox=args.sandbox,
                           engine=engine, log=_log(args.log), split=args.split)  # fmt: skip
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(r) for r in results], f, default=str, indent=1)
        print(format_table(results))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
