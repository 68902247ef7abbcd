"""The whole loop driven by the demo model, which makes its own choices: it decides to call the
tool, writes the code or the arguments, reads the result and answers. Real components throughout:
the shipped checkpoint (unpacked by ``load_engine("demo")``), the bubblewrap sandbox, real
``FunctionTool`` objects, the real ``Browser`` over a site served by a local HTTP server, and the
``gptoss-agent`` command as a user runs it. Greedy decoding.

The shipped checkpoint is undertrained (see the README's demo model section): it does arithmetic
through python exactly in the phrasings it was trained on (the README's command among them), and
picks the tool, writes harmony the parser accepts and answers elsewhere, without copying names
exactly yet. So the arithmetic tests assert the exact answer; the others assert the choices and the
path through the real components; ``benchmarks/demo_accuracy.py`` measures the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from gptoss_agent.agent.loop import Agent
from gptoss_agent.model.demo import functions as demo_functions
from gptoss_agent.model.engine import Sampling

pytestmark = pytest.mark.bwrap  # the demo model ships in the package: a missing ARCHIVE fails loudly

GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="module")
def engine():
    from gptoss_agent.model.local import load_engine

    return load_engine("demo")


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory):
    """vLLM serving the same weights (its CPU backend has no MXFP4 path without AMX: the bf16 copy)."""
    from gptoss_agent.model.demo.pack import demo_checkpoint, export_bf16
    from gptoss_agent.model.remote import RemoteEngine
    from vllm_server import vllm_server

    out = tmp_path_factory.mktemp("demo-vllm")
    model = export_bf16(demo_checkpoint(), out / "bf16")
    extra = ("--skip-tokenizer-init", "--max-model-len", "4096", "--max-num-seqs", "2")
    with vllm_server(model, "gpt-oss-demo", out / "server.log", *extra) as (url, _), RemoteEngine(url) as engine:
        yield engine


@pytest.fixture(params=["local", pytest.param("vllm", marks=pytest.mark.vllm)])
def any_engine(request):
    """The shipped checkpoint in-process, and the same weights through vLLM."""
    return request.getfixturevalue("engine" if request.param == "local" else "vllm_engine")


@pytest.fixture(scope="module")
def sandbox():
    from gptoss_agent.sandbox import open_sandbox

    with open_sandbox("bubblewrap") as session:
        yield session


def test_python_arithmetic_through_the_sandbox(any_engine, sandbox, enc):
    from gptoss_agent.model.demo.data import python_value
    from gptoss_agent.tools import Python

    agent = Agent(any_engine, tools=[Python(sandbox)], sampling=GREEDY, enc=enc, max_steps=4, max_tokens=400)
    result = agent.run("What is 123456 * 789? Use python.")
    assert [c.recipient for c in result.tool_calls] == ["python"]  # the model chose the tool
    call = result.tool_calls[0]
    assert not call.is_error and call.arguments == "123456 * 789"  # the operands copied from the question
    assert call.output == python_value(call.arguments) == "97406784"  # the sandbox ran the model's own code
    assert result.stop_reason == "answer" and result.answer == "The answer is 97406784."  # copied back


def test_a_function_never_seen_in_training(engine, enc):
    name = next(n for n in demo_functions._names("tide level") if demo_functions._split_of_name(n) == "heldout")
    calls: list[dict[str, Any]] = []

    def tide(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"tide_level": 3.42}

    from gptoss_agent.tools.function import FunctionTool

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city, e.g. Paris."}},
        "required": ["city"],
    }
    weather = FunctionTool.from_schema(
        "get_weather", "Returns the current weather.", schema, lambda **kw: {"weather": "sunny"}
    )
    agent = Agent(
        engine,
        tools=[FunctionTool.from_schema(name, "Look up the tide level.", schema, tide), weather],
        reasoning_effort="low",
        sampling=GREEDY,
        enc=enc,
        max_steps=4,
    )
    result = agent.run("Any idea what the tide level is in Lisbon?")
    assert result.tool_calls and all(c.recipient.startswith("functions.") for c in result.tool_calls)
    assert result.stop_reason == "answer" and result.answer


class _Site:
    """The browsing corpus on a real HTTP server on 127.0.0.1, addressed by host name."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = pages.get(f"https://{self.headers['Host']}{self.path}")
                self.send_response(200 if body else 404)
                data = (body or "not found").encode()
                self.send_header("Content-Type", "text/html; charset=utf-8" if body else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def transport(self) -> httpx.AsyncBaseTransport:
        """The network as the browser sees it: every ``https://*.test`` request reaches this server."""
        inner = httpx.AsyncHTTPTransport()
        port = self.port

        class ToSite(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
                return await inner.handle_async_request(request)

        return ToSite()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site() -> Iterator[tuple[Any, _Site]]:
    import random

    from gptoss_agent.model.demo.browse import Corpus

    corpus = Corpus(split="heldout")
    rng = random.Random(20)
    target = corpus.entity(rng, kind="Lighthouse")
    corpus.entity(rng, kind="Museum", base=target.name.split()[0])
    corpus.entity(rng, kind="Lighthouse")
    server = _Site({url: corpus.html(e) for url, e in corpus.entities.items()})
    try:
        yield corpus, server
    finally:
        server.close()


def test_browser_search_open_and_cite(engine, enc, site):
    from gptoss_agent.model.demo.browse import CorpusSearch
    from gptoss_agent.tools import Browser
    from gptoss_agent.tools.fetch import FetchConfig

    corpus, server = site
    target = next(iter(corpus.entities.values()))
    config = FetchConfig(transport=server.transport(), resolver=lambda host, port: ["93.184.216.60"])
    browser = Browser(CorpusSearch(corpus), fetch_config=config)
    agent = Agent(engine, tools=[browser], sampling=GREEDY, enc=enc, max_steps=5)
    result = agent.run(f"When was the {target.name} completed? Search the web.")
    assert [c.recipient for c in result.tool_calls][:2] == ["browser.search", "browser.open"]
    results, opened = result.tool_calls[0].output, result.tool_calls[1].output
    assert "# Search Results" in results and target.name in results
    page_url = opened.split("\n", 1)[0].rsplit("(", 1)[1].rstrip(")")
    assert page_url in corpus.entities  # fetched from the local site, over HTTP
    assert result.stop_reason == "answer" and "【1†L" in result.answer  # it cites the page it opened


SCRIPT = Path(sys.executable).parent / "gptoss-agent"


def test_the_readme_command(tmp_path):
    """``gptoss-agent --model demo "What is 123456 * 789? Use python."`` on a machine with no weights."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "gptoss_agent.agent"]
    env = {**os.environ, "GPTOSS_CACHE_DIR": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [*command, "--model", "demo", "--sandbox", "bubblewrap", "--temperature", "0", "--json",
         "What is 123456 * 789? Use python."],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [c["recipient"] for c in data["tool_calls"]] == ["python"]
    call = data["tool_calls"][0]
    assert not call["is_error"] and call["output"].strip()  # the sandbox ran the model's code
    assert data["stop_reason"] == "answer" and "97406784" in data["answer"]  # 123456 * 789, exactly
    assert (tmp_path / "cache" / "demo").is_dir()  # unpacked on first use
