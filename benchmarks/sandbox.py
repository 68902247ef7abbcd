"""Sandbox latency: cold start and warm ``run("1+1")`` per backend, next to the bare peers.

    python benchmarks/sandbox.py [--runs 200] [--cold 5]

Peers measured in the same run: ``docker run --rm IMAGE python3 -c 1`` (a fresh container per
call, what the reference implementation does) and a plain local ``python3 -c 1``. Targets: warm p50
under 50 ms on Docker and under 20 ms on bubblewrap; cold start under 1.5 s on Docker.
Writes a table to stdout and benchmarks/results/sandbox.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from gptoss_agent.sandbox import open_sandbox
from gptoss_agent.sandbox.bubblewrap import bubblewrap_available
from gptoss_agent.sandbox.docker import docker_available
from gptoss_agent.sandbox.image import DEFAULT_IMAGE

RESULTS = Path(__file__).parent / "results" / "sandbox.json"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(pct(ms, 0.5), 2),
        "p95_ms": round(pct(ms, 0.95), 2),
        "mean_ms": round(statistics.mean(ms), 2),
        "n": len(ms),
    }


def bench_backend(backend: str, runs: int, colds: int) -> dict[str, object]:
    cold: list[float] = []
    for _ in range(colds):
        started = time.perf_counter()
        with open_sandbox(backend) as session:
            assert session.run("1+1").value == "2"
            cold.append(time.perf_counter() - started)
    warm: list[float] = []
    with open_sandbox(backend) as session:
        for _ in range(5):
            session.run("1+1")
        for _ in range(runs):
            started = time.perf_counter()
            ex = session.run("1+1")
            warm.append(time.perf_counter() - started)
            assert ex.value == "2"
    return {"cold_start": summary(cold), "warm_run": summary(warm)}


def bench_command(cmd: list[str], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200, help="warm calls per backend")
    parser.add_argument("--cold", type=int, default=5, help="cold starts per backend")
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    rows: list[tuple[str, str, dict[str, float]]] = []
    if docker_available():
        docker = bench_backend("docker", args.runs, args.cold)
        results["docker"] = docker
        rows += [
            ("docker session", "cold start", docker["cold_start"]),
            ("docker session", 'warm run("1+1")', docker["warm_run"]),
        ]  # type: ignore[list-item]
        peer = bench_command(
            ["docker", "run", "--rm", "--network=none", DEFAULT_IMAGE, "python3", "-c", "1"], args.cold
        )
        results["docker_run_rm"] = peer
        rows.append(("docker run --rm IMAGE python3 -c 1", "per call", peer))
    if bubblewrap_available():
        bwrap = bench_backend("bubblewrap", args.runs, args.cold)
        results["bubblewrap"] = bwrap
        rows += [
            ("bubblewrap session", "cold start", bwrap["cold_start"]),
            ("bubblewrap session", 'warm run("1+1")', bwrap["warm_run"]),
        ]  # type: ignore[list-item]
    local = bench_command(["python3", "-c", "1"], max(args.cold, 20))
    results["local_python_c"] = local
    rows.append(("local python3 -c 1", "per call", local))

    print(f"{'what':38} {'measure':18} {'p50 ms':>9} {'p95 ms':>9} {'n':>5}")
    for name, measure, stats in rows:
        print(f"{name:38} {measure:18} {stats['p50_ms']:9.2f} {stats['p95_ms']:9.2f} {stats['n']:5}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
