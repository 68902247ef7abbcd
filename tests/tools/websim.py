"""A small web for the browser tests: real HTTP servers on 127.0.0.1 serving generated sites and
search endpoints that speak each provider's documented JSON (or HTML, for DuckDuckGo).

``Internet`` is an httpx transport standing in for the public network: requests to the fake
public addresses of ``PUBLIC`` are sent to the local site server instead (the browser's DNS seam
maps ``news.test`` and ``wiki.test`` to those addresses, so the SSRF guard stays on and URLs carry
no port). Everything else goes out through a real transport.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

PUBLIC = {"news.test": "93.184.216.34", "wiki.test": "93.184.216.35"}
DEAD = "93.184.216.36"
SECURE = "93.184.216.37"
"""The fake public address of the HTTPS test site (``secure.test``; ``impostor.test`` too)."""
"""A fake public address where nothing listens (``flaky.test`` resolves to it first)."""
"""Fake public addresses of the test sites (resolved by ``resolver``, routed by ``Internet``)."""
INTERNAL = {"intranet.test": "10.0.0.5", "metadata.test": "169.254.169.254", "evil.test": "127.0.0.1"}
API_KEYS = {"brave": "brave-test-key", "exa": "exa-test-key", "tavily": "tvly-test-key"}


def resolver(host: str, port: int) -> list[str]:
    """The DNS seam for tests: the fake public sites and a few internal names, else the system's."""
    from gptoss_agent.tools.fetch import system_resolver

    if host in PUBLIC:
        return [PUBLIC[host]]
    if host in ("secure.test", "impostor.test"):
        return [SECURE]
    if host == "flaky.test":
        return ["2606:2800:220:1::1", DEAD, PUBLIC["news.test"]]
    if host == "down.test":
        return ["2606:2800:220:1::1", DEAD]
    if host in INTERNAL:
        return [INTERNAL[host]]
    return system_resolver(host, port)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    host: str


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0
    """Seconds between 1 kB chunks of the body (a slow page)."""


Handler = Callable[[Request], Response]


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that give up early (timeouts, size caps) are part of the tests


class Server:
    """A threaded HTTP server on 127.0.0.1 calling ``handler`` for every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                    host=(self.headers.get("host") or "").split(":")[0],
                )
                outer.requests.append(request)
                response = outer.handler(request)
                if response.delay:
                    time.sleep(response.delay)
                try:
                    self.send_response(response.status)
                    for key, value in response.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(response.body)))
                    self.end_headers()
                    if response.trickle:
                        for i in range(0, len(response.body), 1024):
                            self.wfile.write(response.body[i : i + 1024])
                            self.wfile.flush()
                            time.sleep(response.trickle)
                    else:
                        self.wfile.write(response.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _serve

        self.httpd = _Quiet(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Internet(httpx.AsyncBaseTransport):
    """Routes requests for the fake public addresses (port 80) to the local site server."""

    def __init__(
        self, site_port: int, tls_port: int | None = None, verify: ssl.SSLContext | None = None
    ) -> None:
        self.site_port = site_port
        self.tls_port = tls_port
        from gptoss_agent.tools.fetch import shared_ssl_context

        # No keep-alive: each browser call runs its own event loop, and pooled connections die with it.
        limits = httpx.Limits(max_keepalive_connections=0)
        self.inner = httpx.AsyncHTTPTransport(verify=verify or shared_ssl_context(), limits=limits)
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        if request.url.host in PUBLIC.values() and request.url.port in (None, 80):
            request.url = request.url.copy_with(host="127.0.0.1", port=self.site_port)
        elif request.url.host == SECURE and self.tls_port and request.url.port in (None, 443):
            request.url = request.url.copy_with(host="127.0.0.1", port=self.tls_port)
        elif request.url.host in (DEAD, "2606:2800:220:1::1"):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass  # shared by every fetch of a test; the clients that use it must not close it


# -- the sites -------------------------------------------------------------------------------------


def html(status: int = 200, body: str = "", charset: str | None = "utf-8", **headers: str) -> Response:
    content_type = "text/html" + (f"; charset={charset}" if charset else "")
    encoded = body.encode(charset or "utf-8")
    return Response(status=status, body=encoded, headers={"Content-Type": content_type, **headers})


def _page(title: str, body: str, lang: str = "en") -> str:
    return (
        f"<!DOCTYPE html>\n<html lang='{lang}'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        "<style>body{font-family:serif} .ad{display:none}</style>"
        "<script>window.dataLayer=[];function track(){return '<p>tracking</p>';}</script>"
        '<script type=\'application/ld+json\'>{"@type":"NewsArticle"}</script></head>'
        f"<body>{body}<footer><p>© 2026 Harbor Media · <a href='/about'>About</a> · "
        "<a href='mailto:desk@news.test'>Contact</a></p></footer></body></html>"
    )


NEWS_HOME = _page(
    "Harbor Times — Coastal news",
    """<header><nav><a href="/">Home</a> | <a href="/science">Science</a> | <a href="/articles/tide-energy">Energy</a></nav></header>
<main><h1>Harbor Times</h1>
<div class="ad" style="display:none">Buy now!</div>
<article><h2><a href="/articles/tide-energy">Tidal turbines light up the bay</a></h2>
<p>Engineers in Brest and Zürich report record output from <b>tidal</b> arrays. <img src="/img/bay.jpg" alt="The bay at dawn"></p></article>
<h2>Tide table</h2>
<table><thead><tr><th>Day</th><th>High water</th><th>Low water</th></tr></thead>
<tbody><tr><td>Monday</td><td>06:12</td><td>12:30</td></tr><tr><td>Tuesday</td><td>06:58</td><td>13:15</td></tr></tbody></table>
<p>Background: <a href="http://wiki.test/wiki/Tidal_power">Tidal power on WikiTest</a>.</p>
</main>""",
)

_TURBINE_PARAGRAPHS = [
    "The array of twelve turbines sits forty metres below the surface, where the current runs at up to four metres per second.",
    "Each turbine has three blades and turns at a steady fourteen revolutions per minute, slow enough for fish to pass.",
    "Operators in Brest said the winter storms caused no damage; the maintenance vessel visited only twice.",
    "Residents of the harbour town — from the café owners to the fishermen — were consulted for two years before construction.",
    "Researchers from Zürich measured the sediment around the foundations and found it unchanged after eighteen months.",
    "The grid operator buys the power at a fixed price for fifteen years, which financed most of the construction.",
    "A Japanese consortium (東京電力の研究チーム) visited the site in March to study the mooring system.",
    "Critics point out that tidal energy remains more expensive than offshore wind per megawatt-hour.",
]


def _article() -> str:
    paragraphs = []
    for i in range(5):
        for j, text in enumerate(_TURBINE_PARAGRAPHS):
            paragraphs.append(f"<p>{escape(text)} (Part {i + 1}.{j + 1})</p>")
        paragraphs.append(
            f"<h3>Section {i + 2}</h3><p>See <a href='http://wiki.test/wiki/Tidal_power#History'>the history of tidal power</a>"
            f" and <a href='/articles/tide-energy?page={i + 2}'>page {i + 2}</a>.</p>"
        )
    return _page(
        "Tidal turbines light up the bay",
        "<main><h1>Tidal turbines light up the bay</h1><p class='byline'>By Anaïs Le Goff · 12 March 2026</p>"
        + "".join(paragraphs)
        + "<pre>output_mw = 12 * 1.5\nprint(output_mw)  # 18.0</pre></main>",
    )


WIKI_TIDAL = _page(
    "Tidal power - WikiTest",
    """<div id="content"><h1>Tidal power</h1>
<table class="infobox"><tr><th>Type</th><td>Renewable energy</td></tr><tr><th>First plant</th><td>La Rance (1966)</td></tr>
<tr><th>Capacity</th><td>240 MW</td></tr></table>
<p><b>Tidal power</b> or <b>tidal energy</b> is harnessed by converting energy from tides into useful forms of power,
mainly electricity, using various methods.<sup><a href="#cite-1">[1]</a></sup></p>
<h2 id="History">History</h2>
<p>Tide mills were used in Europe from the Middle Ages; the <a href="/wiki/Rance_Tidal_Power_Station">Rance Tidal Power Station</a>
in France opened in 1966. The largest today is <a href="/wiki/Sihwa_Lake">Sihwa Lake</a> (시화호) in South Korea.</p>
<h2>Generating methods</h2><ul><li>Tidal stream generators, which use a turbine in the current</li><li>Tidal barrages</li>
<li>Dynamic tidal power</li></ul>
<h2>References</h2><ol><li id="cite-1"><a href="https://example.org/tides.pdf">Tides and power (PDF)</a></li></ol>
<script>mw.loader.load('ext.cite');</script></div>""",
)


def big_page(target_bytes: int = 1_000_000, seed: int = 7) -> str:
    """A realistic ~1 MB page: sections of prose with links, tables and scripts, non-ASCII words."""
    rng = random.Random(seed)
    words = [
        "the",
        "tide",
        "turbine",
        "energy",
        "harbour",
        "current",
        "blade",
        "grid",
        "power",
        "station",
        "river",
        "estuary",
        "café",
        "naïve",
        "Zürich",
        "東京",
        "данные",
        "résumé",
        "α",
        "β",
        "γ",
        "coast",
        "storm",
        "sediment",
        "mooring",
        "vessel",
        "operator",
    ]
    parts = []
    size = 0
    i = 0
    while size < target_bytes:
        i += 1
        section = [f"<section><h2>Section {i}</h2>"]
        for k in range(4):
            sentence = " ".join(rng.choice(words) for _ in range(70))
            section.append(
                f"<p>{sentence} <a href='/huge/{i}/{k}'>more {i}.{k}</a>, "
                f"<a href='http://wiki.test/wiki/Item_{i}'>wiki {i}</a>.</p>"
            )
        rows = "".join(
            f"<tr><td>item {j}</td><td>{j * i}</td><td>{rng.random():.3f}</td></tr>" for j in range(6)
        )
        section.append(f"<table><tr><th>Item</th><th>Count</th><th>Share</th></tr>{rows}</table>")
        section.append(f"<script>var s{i} = {list(range(20))};</script></section>")
        chunk = "".join(section)
        parts.append(chunk)
        size += len(chunk.encode())
    return _page("A very long page", "<main>" + "".join(parts) + "</main>")


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\x00" * 64


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` in Helvetica (cross-reference offsets computed)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


class Sites:
    """The handler for news.test and wiki.test (chosen by the Host header)."""

    def __init__(self) -> None:
        self.huge = big_page()
        self.internal_port = 0
        """Port of a local 'internal' server that redirects may point at."""

    def __call__(self, request: Request) -> Response:
        host, path = request.host, request.path
        if host == "wiki.test":
            if path == "/wiki/Tidal_power":
                return html(body=WIKI_TIDAL)
            return html(404, _page("Not found", "<h1>Not found</h1><p>There is no such article.</p>"))
        routes: dict[str, Callable[[], Response]] = {
            "/": lambda: html(body=NEWS_HOME),
            "/articles/tide-energy": lambda: html(body=_article()),
            "/old-energy": lambda: Response(301, headers={"Location": "/articles/tide-energy"}),
            "/hop1": lambda: Response(302, headers={"Location": "http://news.test/hop2"}),
            "/hop2": lambda: Response(307, headers={"Location": "/"}),
            "/loop": lambda: Response(302, headers={"Location": "/loop"}),
            "/to-internal": lambda: Response(
                302, headers={"Location": f"http://127.0.0.1:{self.internal_port}/secret"}
            ),
            "/to-intranet": lambda: Response(302, headers={"Location": "http://intranet.test/admin"}),
            "/to-metadata": lambda: Response(
                302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
            ),
            "/huge": lambda: html(body=self.huge),
            "/slow": lambda: Response(200, b"<p>late</p>", {"Content-Type": "text/html"}, delay=3.0),
            "/trickle": lambda: Response(200, b"x" * 20_000, {"Content-Type": "text/plain"}, trickle=0.2),
            "/logo.png": lambda: Response(200, PNG, {"Content-Type": "image/png"}),
            "/blob": lambda: Response(200, b"\x00\x01\x02binary" * 50, {}),
            "/data.json": lambda: Response(
                200,
                b'{"station":"La Rance","capacity_mw":240,"opened":1966,"city":"Saint-Malo"}',
                {"Content-Type": "application/json"},
            ),
            "/notes.txt": lambda: Response(
                200,
                "Notes on tides: the café's clock showed 06:12.\nSecond line.".encode("latin-1"),
                {"Content-Type": "text/plain; charset=iso-8859-1"},
            ),
            "/legacy": lambda: Response(
                200,
                "<html><head><meta charset='windows-1251'><title>Приливы</title></head><body><p>Приливная электростанция</p></body></html>".encode(
                    "cp1251"
                ),
                {"Content-Type": "text/html"},
            ),
            "/undeclared": lambda: Response(
                200,
                (
                    "<html><body><p>"
                    + "Приливная электростанция вырабатывает энергию. " * 20
                    + "</p></body></html>"
                ).encode("cp1251"),
                {"Content-Type": "text/html"},
            ),
            "/report.pdf": lambda: Response(
                200,
                minimal_pdf("Tidal report 2026: output rose 12 percent"),
                {"Content-Type": "application/pdf"},
            ),
            "/big.txt": lambda: Response(200, b"line of text\n" * 200_000, {"Content-Type": "text/plain"}),
        }
        if path in routes:
            return routes[path]()
        return html(404, _page("Page not found", "<h1>404</h1><p>This page does not exist.</p>"))


# -- search providers --------------------------------------------------------------------------------

RESULTS = [
    (
        "Tidal turbines light up the bay — Harbor Times",
        "http://news.test/articles/tide-energy",
        "Engineers report record output from <b>tidal</b> arrays in the bay.",
    ),
    (
        "Tidal power - WikiTest",
        "http://wiki.test/wiki/Tidal_power",
        "<b>Tidal power</b> or tidal energy is harnessed by converting energy from tides.",
    ),
    ("Harbor Times — Coastal news", "http://news.test/", "Coastal news, tide tables and more."),
    ("Tide table", "http://news.test/#tides", "High and low water times for the week."),
]


def _json(data: Any, status: int = 200, **headers: str) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})


def _hits(query: str) -> list[tuple[str, str, str]]:
    return [] if query == "nothing at all" else RESULTS


class SearchApis:
    """DuckDuckGo HTML, SearXNG, Brave, Exa and Tavily on one server, under /ddg, /searxng, ..."""

    def __call__(self, request: Request) -> Response:
        provider, _, rest = request.path.strip("/").partition("/")
        query = ""
        form: dict[str, list[str]] = {}
        data: dict[str, Any] = {}
        if request.method == "POST" and request.headers.get("content-type", "").startswith(
            "application/json"
        ):
            data = json.loads(request.body)
            query = data.get("query", "")
        elif request.method == "POST":
            form = parse_qs(request.body.decode())
            query = form.get("q", [""])[0]
        else:
            query = request.query.get("q", [""])[0]
        if query == "slow":
            time.sleep(2.0)
        if query == "rate limit":
            if provider == "ddg":
                return html(202, "<html><body><div class='anomaly-modal'>Unusual traffic</div></body></html>")
            return _json({"error": "Too Many Requests"}, 429, **{"Retry-After": "30"})
        handler = getattr(self, f"_{provider}", None)
        if handler is None:
            return _json({"error": "not found"}, 404)
        return handler(request, rest, query, form or data)

    def _ddg(self, request: Request, rest: str, query: str, form: dict) -> Response:
        if request.method != "POST" or rest != "html" or "q" not in form:
            return html(400, "bad request")
        if not _hits(query):
            return html(body="<html><body><div class='no-results'>No results.</div></body></html>")
        blocks = [
            "<div class='result results_links results_links_deep result--ad'><div class='links_main'>"
            "<h2 class='result__title'><a class='result__a' href='https://duckduckgo.com/y.js?ad_domain=ads.test'>Sponsored</a></h2></div></div>"
        ]
        for title, url, snippet in _hits(query):
            wrapped = f"//duckduckgo.com/l/?uddg={quote(url, safe='')}&amp;rut=0f3a"
            blocks.append(
                "<div class='result results_links results_links_deep web-result '>"
                "<div class='links_main links_deep result__body'>"
                f"<h2 class='result__title'><a rel='nofollow' class='result__a' href='{wrapped}'>{escape(title)}</a></h2>"
                f"<div class='result__extras'><div class='result__extras__url'><a class='result__url' href='{wrapped}'>{escape(url)}</a></div></div>"
                f"<a class='result__snippet' href='{wrapped}'>{snippet}</a>"
                "<div class='clear'></div></div></div>"
            )
        return html(
            body="<html><head><title>DuckDuckGo</title></head><body><div id='links' class='results'>"
            + "".join(blocks)
            + "</div></body></html>"
        )

    def _searxng(self, request: Request, rest: str, query: str, _: dict) -> Response:
        if request.method != "GET" or rest != "search":
            return _json({"error": "bad request"}, 400)
        if request.query.get("format") != ["json"]:
            return html(403, "<h1>403 Forbidden</h1>")
        results = [
            {
                "url": url,
                "title": title,
                "content": snippet.replace("<b>", "").replace("</b>", ""),
                "engine": "bing",
                "parsed_url": list(urlsplit(url)),
                "template": "default.html",
                "engines": ["bing", "duckduckgo"],
                "positions": [i + 1],
                "score": 4.0 - i,
                "category": "general",
            }
            for i, (title, url, snippet) in enumerate(_hits(query))
        ]
        return _json(
            {
                "query": query,
                "number_of_results": 0,
                "results": results,
                "answers": [],
                "corrections": [],
                "infoboxes": [],
                "suggestions": [],
                "unresponsive_engines": [],
            }
        )

    def _brave(self, request: Request, rest: str, query: str, _: dict) -> Response:
        if request.method != "GET" or rest != "res/v1/web/search":
            return _json({"error": "bad request"}, 400)
        if request.headers.get("x-subscription-token") != API_KEYS["brave"]:
            return _json(
                {
                    "type": "ErrorResponse",
                    "error": {
                        "code": "SUBSCRIPTION_TOKEN_INVALID",
                        "status": 401,
                        "detail": "The provided subscription token is invalid.",
                    },
                },
                401,
            )
        count = int(request.query.get("count", ["20"])[0])
        results = [
            {
                "type": "search_result",
                "title": title,
                "url": url,
                "description": snippet,
                "is_source_local": False,
                "meta_url": {"scheme": "http", "netloc": urlsplit(url).netloc, "path": urlsplit(url).path},
            }
            for title, url, snippet in _hits(query)[:count]
        ]
        return _json(
            {
                "type": "search",
                "query": {"original": query, "more_results_available": False},
                "mixed": {"type": "mixed", "main": []},
                "web": {"type": "search", "results": results, "family_friendly": True},
            }
        )

    def _exa(self, request: Request, rest: str, query: str, data: dict) -> Response:
        if request.method != "POST" or rest != "search":
            return _json({"error": "bad request"}, 400)
        if request.headers.get("x-api-key") != API_KEYS["exa"]:
            return _json({"requestId": "r1", "error": "Invalid API key", "tag": "INVALID_API_KEY"}, 401)
        n = int(data.get("numResults", 10))
        results = [
            {
                "id": url,
                "url": url,
                "title": title,
                "score": 0.9 - i / 10,
                "publishedDate": "2026-03-12T00:00:00.000Z",
                "author": None,
                "text": snippet.replace("<b>", "").replace("</b>", ""),
            }
            for i, (title, url, snippet) in enumerate(_hits(query)[:n])
        ]
        return _json(
            {
                "requestId": "b5947044c4b78efa9552a7c89b306d95",
                "resolvedSearchType": "neural",
                "results": results,
                "costDollars": {"total": 0.005},
            }
        )

    def _tavily(self, request: Request, rest: str, query: str, data: dict) -> Response:
        if request.method != "POST" or rest != "search":
            return _json({"detail": {"error": "bad request"}}, 400)
        if request.headers.get("authorization") != f"Bearer {API_KEYS['tavily']}":
            return _json({"detail": {"error": "Unauthorized: missing or invalid API key."}}, 401)
        n = int(data.get("max_results", 5))
        results = [
            {
                "title": title,
                "url": url,
                "content": snippet.replace("<b>", "").replace("</b>", ""),
                "score": 0.8 - i / 10,
                "raw_content": None,
            }
            for i, (title, url, snippet) in enumerate(_hits(query)[:n])
        ]
        return _json(
            {
                "query": query,
                "follow_up_questions": None,
                "answer": None,
                "images": [],
                "results": results,
                "response_time": 1.09,
            }
        )


# -- fixtures (imported by the test modules) ------------------------------------------------------------


@dataclass
class Web:
    site: Server
    internal: Server
    search: Server

    def fetch_config(self, **overrides: Any):
        from gptoss_agent.tools.fetch import FetchConfig

        options: dict[str, Any] = {"resolver": resolver, "transport": Internet(self.site.port)}
        options.update(overrides)
        return FetchConfig(**options)

    def browser(self, backend: str = "duckduckgo", enc: Any = None, **options: Any):
        from gptoss_agent.tools import Browser
        from gptoss_agent.tools.search import get_backend

        search = get_backend(
            backend,
            base_url=f"{self.search.url}/{'ddg' if backend == 'duckduckgo' else backend}",
            api_key=API_KEYS.get(backend),
        )
        config = self.fetch_config(**options.pop("fetch", {}))
        return Browser(search=search, fetch_config=config, encoding=enc, **options)


@pytest.fixture(scope="module", name="web")
def web_fixture():
    sites = Sites()
    internal = Server(
        lambda request: Response(200, b"<h1>internal secret</h1>", {"Content-Type": "text/html"})
    )
    with Server(sites) as site, internal, Server(SearchApis()) as search:
        sites.internal_port = internal.port
        yield Web(site=site, internal=internal, search=search)
