"""Search backends against local servers speaking each provider's documented wire format."""

from __future__ import annotations

import asyncio
import json

import pytest
from gptoss_agent.tools.search import (
    BraveSearch,
    DuckDuckGoSearch,
    ExaSearch,
    SearchBackend,
    SearchError,
    SearchResult,
    SearXNGSearch,
    TavilySearch,
    get_backend,
)
from websim import API_KEYS, RESULTS, Response, Server, web_fixture  # noqa: F401  (the `web` fixture)

EXPECTED = [
    SearchResult(title, url, snippet.replace("<b>", "").replace("</b>", ""))
    for title, url, snippet in RESULTS
]
PREFIX = {"duckduckgo": "ddg", "searxng": "searxng", "brave": "brave", "exa": "exa", "tavily": "tavily"}


def backend(web, name: str, **options):
    options.setdefault("base_url", f"{web.search.url}/{PREFIX[name]}")
    options.setdefault("api_key", API_KEYS.get(name))
    return get_backend(name, **options)


@pytest.mark.parametrize("name", list(PREFIX))
def test_each_backend_parses_its_provider_format(web, name):
    engine = backend(web, name)
    assert isinstance(engine, SearchBackend)
    assert engine.search("tidal energy", 10) == EXPECTED
    assert asyncio.run(engine.asearch("tidal energy", 2)) == EXPECTED[:2]
    assert engine.search("nothing at all", 5) == []


def test_requests_follow_the_documented_formats(web):
    requests = web.search.requests
    backend(web, "duckduckgo").search("tidal energy", 3)
    ddg = requests[-1]
    assert (ddg.method, ddg.path) == ("POST", "/ddg/html/")
    assert (
        ddg.headers["content-type"] == "application/x-www-form-urlencoded" and b"q=tidal+energy" in ddg.body
    )

    backend(web, "searxng").search("tidal energy", 3)
    assert (requests[-1].method, requests[-1].path) == ("GET", "/searxng/search")
    assert requests[-1].query == {"q": ["tidal energy"], "format": ["json"], "pageno": ["1"]}

    backend(web, "brave").search("tidal energy", 3)
    brave = requests[-1]
    assert (brave.method, brave.path, brave.query) == (
        "GET",
        "/brave/res/v1/web/search",
        {"q": ["tidal energy"], "count": ["3"]},
    )
    assert (
        brave.headers["x-subscription-token"] == API_KEYS["brave"]
        and brave.headers["accept"] == "application/json"
    )

    backend(web, "exa").search("tidal energy", 3)
    exa = requests[-1]
    assert (exa.method, exa.path, exa.headers["x-api-key"]) == ("POST", "/exa/search", API_KEYS["exa"])
    assert json.loads(exa.body) == {
        "query": "tidal energy",
        "numResults": 3,
        "contents": {"text": {"maxCharacters": 500}},
    }

    backend(web, "tavily").search("tidal energy", 30)
    tavily = requests[-1]
    assert (tavily.method, tavily.path, tavily.headers["authorization"]) == (
        "POST",
        "/tavily/search",
        "Bearer tvly-test-key",
    )
    assert json.loads(tavily.body) == {"query": "tidal energy", "max_results": 20, "search_depth": "basic"}


@pytest.mark.parametrize(
    ("name", "env"), [("brave", "BRAVE_API_KEY"), ("exa", "EXA_API_KEY"), ("tavily", "TAVILY_API_KEY")]
)
def test_missing_and_wrong_keys(web, monkeypatch, name, env):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(SearchError, match=f"needs an API key and none is set \\(environment variable {env}"):
        backend(web, name, api_key=None).search("tidal energy", 3)
    monkeypatch.setenv(env, API_KEYS[name])
    assert backend(web, name, api_key=None).search("tidal energy", 1) == EXPECTED[:1]
    with pytest.raises(SearchError, match=f"refused the request \\(HTTP 401\\): check the API key in {env}"):
        backend(web, name, api_key="wrong").search("tidal energy", 3)


@pytest.mark.parametrize("name", ["searxng", "brave", "exa", "tavily"])
def test_rate_limits_say_when_to_retry(web, name):
    with pytest.raises(SearchError, match=r"rate limiting requests \(HTTP 429\)\. Retry after 30 s\."):
        backend(web, name).search("rate limit", 3)


def test_duckduckgo_anomaly_page_is_a_rate_limit(web):
    with pytest.raises(SearchError, match=r"DuckDuckGo is rate limiting requests \(HTTP 202"):
        backend(web, "duckduckgo").search("rate limit", 3)


def test_timeouts_and_unreachable_services(web):
    with pytest.raises(SearchError, match=r"The Brave search service did not answer within 0.3 s"):
        backend(web, "brave", timeout=0.3).search("slow", 3)
    with pytest.raises(SearchError, match=r"The Tavily search service did not answer within 0.3 s"):
        asyncio.run(backend(web, "tavily", timeout=0.3).asearch("slow", 3))
    with Server(lambda r: Response()) as closed:
        url = closed.url
    with pytest.raises(SearchError, match="The Exa search service could not be reached: ConnectError"):
        backend(web, "exa", base_url=url).search("tidal energy", 3)


def test_searxng_needs_its_url_and_the_json_format(web, monkeypatch):
    monkeypatch.delenv("SEARXNG_URL", raising=False)
    with pytest.raises(SearchError, match="set SEARXNG_URL"):
        get_backend("searxng").search("tidal energy", 3)
    monkeypatch.setenv("SEARXNG_URL", f"{web.search.url}/searxng/")
    assert get_backend("searxng").search("tidal energy", 2) == EXPECTED[:2]
    with (
        Server(
            lambda r: Response(403, b"<h1>403 Forbidden</h1>", {"Content-Type": "text/html"})
        ) as forbidden,
        pytest.raises(SearchError, match=r"enable `json` under `search\.formats`"),
    ):
        SearXNGSearch(base_url=forbidden.url).search("tidal energy", 3)


def test_unexpected_answers_are_reported(web):
    odd = Server(lambda r: Response(200, b"<html>not json</html>", {"Content-Type": "text/html"}))
    with odd, pytest.raises(SearchError, match="answered in an unexpected format"):
        BraveSearch(base_url=odd.url, api_key="k").search("x", 3)
    broken = Server(lambda r: Response(500, b"upstream exploded", {}))
    with broken, pytest.raises(SearchError, match=r"failed \(HTTP 500\): upstream exploded"):
        ExaSearch(base_url=broken.url, api_key="k").search("x", 3)


def test_get_backend_names_and_default(monkeypatch):
    monkeypatch.delenv("GPTOSS_SEARCH", raising=False)
    assert isinstance(get_backend(), DuckDuckGoSearch)
    monkeypatch.setenv("GPTOSS_SEARCH", "tavily")
    assert isinstance(get_backend(), TavilySearch)
    assert isinstance(get_backend("Brave"), BraveSearch) and isinstance(get_backend("ddg"), DuckDuckGoSearch)
    with pytest.raises(
        ValueError, match="Unknown search backend 'bing'; choose one of brave, ddg, duckduckgo"
    ):
        get_backend("bing")
