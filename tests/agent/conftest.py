"""Fixtures of the agent tests: a small web (a site and a SearXNG-style search server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

ARTICLE = """<html><head><title>Tidal power</title></head><body>
<h1>Tidal power</h1>
<p>The Sihwa Lake station in South Korea is the largest tidal power station, with 254 MW.</p>
<p>La Rance in France opened in 1966 and has 240 MW.</p>
</body></html>"""


class _Web:
    """One server: ``/tidal`` (an article), ``/search?q=...&format=json`` (SearXNG's JSON API)."""

    def __init__(self) -> None:
        web = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                web.requests.append(parts.path)
                if parts.path == "/search":
                    query = parse_qs(parts.query).get("q", [""])[0]
                    body = json.dumps(
                        {
                            "query": query,
                            "results": [
                                {
                                    "title": "Tidal power",
                                    "url": f"{web.url}/tidal",
                                    "content": "Largest stations.",
                                },
                                {"title": "Elsewhere", "url": f"{web.url}/other", "content": "Unrelated."},
                            ],
                        }
                    ).encode()
                    kind = "application/json"
                elif parts.path == "/tidal":
                    body, kind = ARTICLE.encode(), "text/html; charset=utf-8"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web() -> Iterator[_Web]:
    server = _Web()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random gpt-oss checkpoint of the ``tiny`` preset in Hugging Face format (MXFP4 experts)."""
    from gptoss_agent.model.config import PRESETS
    from gptoss_agent.model.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", PRESETS["tiny"], format="hf")


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from gptoss_agent.model.local import LocalEngine

    return LocalEngine.from_checkpoint(tiny_checkpoint, device="cpu", dtype="fp32")
