"""MCP client overhead: ``MCPServer`` (a background event loop per server, argument validation,
result conversion) against the SDK's own ``ClientSession`` on the same stdio server.

    python benchmarks/mcp_client.py [--calls 300]

Server: ``tests/tools/mcp_test_server.py`` over stdio (the official SDK's ``MCPServer``).

Measured:
- ``connect``: start the server process and list its tools (``MCPServer.connect()`` against
  ``stdio_client`` + ``ClientSession.initialize()`` + ``list_tools()``).
- ``call``: one ``add`` call, sequentially: the SDK's ``session.call_tool`` awaited on its own
  loop (the floor), ``MCPServer.call`` from a plain thread (what a sync caller pays: the hop to the
  server's loop and back, validation, text), and ``Toolbox.dispatch`` (what the agent pays).

Writes a table to stdout and benchmarks/results/mcp_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = str(ROOT / "tests" / "tools" / "mcp_test_server.py")
RESULTS = ROOT / "benchmarks" / "results" / "mcp_client.json"


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 3),
        "n": len(ms),
    }


async def sdk(calls: int) -> tuple[float, list[float]]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    t0 = time.perf_counter()
    params = StdioServerParameters(command=sys.executable, args=[SERVER])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        connect = time.perf_counter() - t0
        samples = []
        for i in range(calls):
            t = time.perf_counter()
            result = await session.call_tool("add", {"a": i, "b": 1})
            samples.append(time.perf_counter() - t)
            assert not result.is_error
    return connect, samples


def ours(calls: int) -> tuple[float, list[float], list[float]]:
    from gptoss_agent.tools import MCPServer, Toolbox

    t0 = time.perf_counter()
    server = MCPServer.stdio(sys.executable, [SERVER]).connect()
    connect = time.perf_counter() - t0
    direct, boxed = [], []
    with server:
        box = Toolbox([server])
        for i in range(calls):
            t = time.perf_counter()
            out = server.call("add", json.dumps({"a": i, "b": 1}))
            direct.append(time.perf_counter() - t)
            assert out.content == str(i + 1)
        for i in range(calls):
            t = time.perf_counter()
            out = box.dispatch("test_server.add", json.dumps({"a": i, "b": 1}))
            boxed.append(time.perf_counter() - t)
            assert out.content == str(i + 1)
    return connect, direct, boxed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    sdk_connect, sdk_calls = asyncio.run(sdk(args.calls))
    our_connect, our_calls, box_calls = ours(args.calls)
    rows = {
        "connect_sdk": {"seconds": round(sdk_connect, 3)},
        "connect_ours": {"seconds": round(our_connect, 3)},
        "call_sdk_session": summary(sdk_calls),
        "call_mcpserver": summary(our_calls),
        "call_toolbox_dispatch": summary(box_calls),
    }
    for name, row in rows.items():
        print(f"{name:24s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
