"""``python -m gptoss_agent.model.demo train|pack|path|eval ...``"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime


def _log(path: str | None):  # type: ignore[no-untyped-def]
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
    t.add_argument("--skills", default="python", help="comma-separated: python,functions,browser")
    t.add_argument("--weights", default="", help="batch shares, e.g. python=2,functions=1,browser=1")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-tokens", type=int, default=3072)
    t.add_argument("--qat-from", type=float, default=0.85)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--model", default="", help="ModelConfig overrides as JSON, e.g. '{\"hidden_size\": 384}'")
    t.add_argument("--log", help="append the log to this file instead of stdout")
    args = p.parse_args(argv)
    if args.command == "train":
        from gptoss_agent.model.demo.train import TrainConfig, train

        skills = tuple(s.strip() for s in args.skills.split(",") if s.strip())
        weights = {s: 1.0 for s in skills}
        for part in filter(None, args.weights.split(",")):
            k, _, v = part.partition("=")
            weights[k.strip()] = float(v)
        cfg = TrainConfig(
            minutes=args.minutes, seed=args.seed, lr=args.lr, batch_tokens=args.batch_tokens,
            skills=skills, weights=weights, qat_from=args.qat_from, threads=args.threads,
            max_steps=args.max_steps, model=json.loads(args.model) if args.model else {},
        )  # fmt: skip
        train(args.out, cfg, log=_log(args.log))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
