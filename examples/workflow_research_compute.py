"""A two-step workflow: research with the browser, then compute with Python, in one session.

    python examples/workflow_research_compute.py --model /path/to/gpt-oss-20b/original --transcript flow.jsonl
    python examples/workflow_research_compute.py --demo   # no model, no internet: scripted, local web

Step 1 searches and reads pages; step 2 runs code in the sandbox on what step 1 found and must
answer in a JSON Schema. Both steps are turns of one agent session, so step 2 sees step 1's
pages and answer. With ``--transcript FILE`` every message is written as it happens; run the
same command again after a crash and finished steps are taken from the file (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gptoss_agent.agent import Agent, ScriptedEngine, Workflow
from gptoss_agent.agent.render import Renderer
from gptoss_agent.tools import Browser, Python
from gptoss_agent.tools.search import SearchResult
from rich.console import Console

SUMMARY = {
    "type": "object",
    "properties": {
        "stations": {"type": "array", "items": {"type": "string"}},
        "total_mw": {"type": "number"},
        "mean_mw": {"type": "number"},
    },
    "required": ["stations", "total_mw", "mean_mw"],
}


def build(agent: Agent) -> Workflow:
    flow = Workflow(agent)
    flow.step(
        "research",
        "Find the installed capacity (MW) of the three largest tidal power stations. Cite sources.",
    )
    flow.step(
        "compute",
        "Use python to compute the total and the mean capacity of those stations.",
        schema=SUMMARY,
        description="Capacities of the stations found, in MW.",
    )
    return flow


# -- demo mode: a local web page, a search backend that finds it, and a scripted model --------

PAGE = b"""<html><head><title>Tidal power stations</title></head><body><h1>Largest tidal power stations</h1>
<ul><li>Sihwa Lake (South Korea): 254 MW</li><li>La Rance (France): 240 MW</li>
<li>MeyGen (Scotland): 59 MW</li></ul></body></html>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


class LocalSearch:
    """A search backend (``search(query, n)``) whose only result is the local page."""

    def __init__(self, url: str) -> None:
        self.url = url

    def search(self, query: str, n: int) -> list[SearchResult]:
        return [SearchResult(title="Tidal power stations", url=self.url, snippet="The largest stations.")]


def _call(recipient: str, body: str, channel: str, think: str = "") -> str:
    head = f"<|channel|>analysis<|message|>{think}<|end|><|start|>assistant" if think else ""
    return f"{head} to={recipient}<|channel|>{channel}<|message|>{body}<|call|>"


DEMO = [
    _call(
        "browser.search", '{"query": "largest tidal power stations capacity"}', "analysis", "Search first."
    ),
    _call("browser.open", '{"id": 0}', "analysis"),
    "<|channel|>final<|message|>Sihwa Lake 254 MW, La Rance 240 MW, MeyGen 59 MW 【1†L2-L4】.<|return|>",
    _call("python", "caps = [254, 240, 59]\nprint(sum(caps), sum(caps) / len(caps))", "analysis", "Compute."),
    '<|channel|>final<|message|>{"stations": ["Sihwa Lake", "La Rance", "MeyGen"], '
    '"total_mw": 553, "mean_mw": 184.33}<|return|>',
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint directory or server URL (default: $GPTOSS_MODEL)")
    p.add_argument("--demo", action="store_true", help="scripted model, local web page")
    p.add_argument("--transcript", type=Path, help="JSONL transcript; an existing one is resumed")
    p.add_argument("--sandbox", default="auto", help="auto, docker or bubblewrap")
    args = p.parse_args(argv)

    server = None
    if args.demo:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        browser = Browser(
            LocalSearch(f"http://127.0.0.1:{server.server_address[1]}/tidal"), allow_private_urls=True
        )
        engine = ScriptedEngine(DEMO)
    else:
        from gptoss_agent.model import load_engine

        browser = Browser()
        engine = load_engine(args.model or os.environ["GPTOSS_MODEL"], progress=True)
    from gptoss_agent.sandbox import open_sandbox

    python = Python(open_sandbox(args.sandbox, timeout=60))
    tools = [browser, python]
    if args.transcript is not None and args.transcript.exists():
        agent = Agent.from_transcript(args.transcript, engine, tools, reasoning_effort="medium")
    else:
        agent = Agent(engine, tools, reasoning_effort="medium", transcript=args.transcript)
    render = Renderer(Console(), resolve_citations=browser.resolve_citations)
    try:
        result = build(agent).run(on_event=lambda step, event: render(event))
    finally:
        agent.close()
        python.session.close()
        if server is not None:
            server.shutdown()
    print(json.dumps(result["compute"].data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
