"""Search backends for the browser: one small interface, several providers, all over httpx.

``SearchBackend.search(query, n) -> list[SearchResult]`` is the seam. The providers here speak
each service's documented wire format; the base URL of each is a constructor argument, so tests
point them at local servers. Failures the model should know about (a missing key, a rate limit,
a timeout, an unreachable service) raise ``SearchError`` with a message written for it.

| name | service | key (environment) |
|---|---|---|
| ``duckduckgo`` | DuckDuckGo's HTML endpoint (``html.duckduckgo.com/html/``) | none |
| ``searxng`` | a SearXNG instance's JSON API (``SEARXNG_URL``) | none |
| ``brave`` | Brave Search API, ``GET /res/v1/web/search`` | ``BRAVE_API_KEY`` |
| ``exa`` | Exa, ``POST /search`` | ``EXA_API_KEY`` |
| ``tavily`` | Tavily, ``POST /search`` | ``TAVILY_API_KEY`` |

``get_backend(None)`` reads the name from ``GPTOSS_SEARCH`` (default ``duckduckgo``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

import httpx

from .base import ToolError
from .fetch import shared_ssl_context
from .page import limit_depth
from .text import clean

__all__ = [
    "BACKENDS",
    "BraveSearch",
    "DuckDuckGoSearch",
    "ExaSearch",
    "HttpSearchBackend",
    "SearXNGSearch",
    "SearchBackend",
    "SearchError",
    "SearchResult",
    "StaticSearch",
    "TavilySearch",
    "get_backend",
]

_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")
_USER_AGENT = "Mozilla/5.0 (compatible; gptoss-agent/0.1)"


@dataclass(frozen=True)
class SearchResult:
    """One search hit."""

    title: str
    url: str
    snippet: str = ""


class SearchError(ToolError):
    """The search failed in a way the model should read (key missing, rate limit, timeout...)."""


@runtime_checkable
class SearchBackend(Protocol):
    """Anything with ``search(query, n)`` returning at most ``n`` results, best first."""

    def search(self, query: str, n: int) -> list[SearchResult]: ...


def _clean(text: Any) -> str:
    if not isinstance(text, str):
        return ""
    return clean(_SPACES.sub(" ", _TAGS.sub("", text)).strip())  # JSON may hold lone surrogates


class HttpSearchBackend:
    """A search service reached over HTTP: subclasses build one request and parse one response.

    ``search`` (sync) and ``asearch`` (async) share both halves; only the send differs.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    base_url_env: ClassVar[str | None] = None
    key_env: ClassVar[str | None] = None
    key_help: ClassVar[str] = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self._transport = transport
        self._async_transport = async_transport

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url()!r})"

    # -- the two halves a provider writes --------------------------------------------------
    def build_request(self, client: httpx.Client | httpx.AsyncClient, query: str, n: int) -> httpx.Request:
        raise NotImplementedError

    def parse(self, response: httpx.Response) -> list[SearchResult]:
        raise NotImplementedError

    # -- shared plumbing ---------------------------------------------------------------------
    def _base_url(self) -> str:
        base = (
            self.base_url
            or (os.environ.get(self.base_url_env) if self.base_url_env else None)
            or self.default_base_url
        )
        if not base:
            raise SearchError(f"The {self.label} search backend has no address: set {self.base_url_env}.")
        return base.rstrip("/")

    def _key(self) -> str:
        key = self.api_key or (os.environ.get(self.key_env) if self.key_env else None)
        if not key:
            raise SearchError(
                f"Search is unavailable: the {self.label} backend needs an API key and none is set "
                f"(environment variable {self.key_env}{self.key_help})."
            )
        return key

    def search(self, query: str, n: int = 10) -> list[SearchResult]:
        """Search synchronously; at most ``n`` results."""
        with httpx.Client(
            timeout=self.timeout, transport=self._transport, trust_env=False, verify=shared_ssl_context()
        ) as client:
            request = self.build_request(client, query, n)
            try:
                response = client.send(request)
            except httpx.HTTPError as e:
                raise self._transport_error(e) from None
            return self._results(response, n)

    async def asearch(self, query: str, n: int = 10) -> list[SearchResult]:
        """Search asynchronously; at most ``n`` results."""
        async with httpx.AsyncClient(
            timeout=self.timeout,
            transport=self._async_transport,
            trust_env=False,
            verify=shared_ssl_context(),
        ) as client:
            request = self.build_request(client, query, n)
            try:
                response = await client.send(request)
            except httpx.HTTPError as e:
                raise self._transport_error(e) from None
            return self._results(response, n)

    def _transport_error(self, error: httpx.HTTPError) -> SearchError:
        if isinstance(error, httpx.TimeoutException):
            return SearchError(
                f"The {self.label} search service did not answer within {self.timeout:g} s; try again."
            )
        return SearchError(
            f"The {self.label} search service could not be reached: {type(error).__name__}: {error}."
        )

    def _results(self, response: httpx.Response, n: int) -> list[SearchResult]:
        self._check(response)
        try:
            results = self.parse(response)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SearchError(
                f"The {self.label} search service answered in an unexpected format ({type(e).__name__}: {e})."
            ) from None
        unique: dict[str, SearchResult] = {}
        for result in results:
            if result.url and result.url not in unique:
                unique[result.url] = result
        return list(unique.values())[: max(n, 0)]

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 429:
            retry = response.headers.get("retry-after")
            when = f" Retry after {retry} s." if retry else " Wait a moment before searching again."
            raise SearchError(f"The {self.label} search service is rate limiting requests (HTTP 429).{when}")
        if status in (401, 403):
            raise SearchError(
                f"The {self.label} search service refused the request (HTTP {status}): "
                f"check the API key{f' in {self.key_env}' if self.key_env else ''}. {_clean(response.text)[:200]}".rstrip()
            )
        if status >= 400:
            raise SearchError(
                f"The {self.label} search service failed (HTTP {status}): {_clean(response.text)[:200]}".rstrip()
            )


class DuckDuckGoSearch(HttpSearchBackend):
    """DuckDuckGo's no-JavaScript HTML results page (no key, no account)."""

    name = "duckduckgo"
    label = "DuckDuckGo"
    default_base_url = "https://html.duckduckgo.com"

    def build_request(self, client, query, n):
        return client.build_request(
            "POST",
            f"{self._base_url()}/html/",
            data={"q": query, "b": ""},
            headers={"User-Agent": _USER_AGENT},
        )

    def _check(self, response):
        if response.status_code == 202:  # DuckDuckGo's answer to too many requests: an anomaly page
            raise SearchError(
                "DuckDuckGo is rate limiting requests (HTTP 202 anomaly page). Wait a minute and retry."
            )
        super()._check(response)

    def parse(self, response):
        from selectolax.lexbor import LexborHTMLParser

        tree = LexborHTMLParser(limit_depth(response.text))  # lexbor is quadratic in nesting depth
        results = []
        for node in tree.css("div.result"):
            classes = node.attributes.get("class") or ""
            if "result--ad" in classes:
                continue
            link = node.css_first("a.result__a")
            if link is None:
                continue
            url = _ddg_target(link.attributes.get("href") or "")
            snippet = node.css_first(".result__snippet")
            results.append(
                SearchResult(
                    title=_clean(link.text()),
                    url=url,
                    snippet=_clean(snippet.text()) if snippet is not None else "",
                )
            )
        return results


def _ddg_target(href: str) -> str:
    """DuckDuckGo wraps result links as ``//duckduckgo.com/l/?uddg=<url>``; unwrap them."""
    parts = urlsplit(href)
    if parts.path.startswith("/l/") and (target := parse_qs(parts.query).get("uddg")):
        return target[0]
    return href if href.startswith(("http://", "https://")) else ""


class SearXNGSearch(HttpSearchBackend):
    """A SearXNG instance's JSON API (``format=json`` must be enabled in its ``settings.yml``)."""

    name = "searxng"
    label = "SearXNG"
    base_url_env = "SEARXNG_URL"

    def build_request(self, client, query, n):
        return client.build_request(
            "GET",
            f"{self._base_url()}/search",
            params={"q": query, "format": "json", "pageno": 1},
            headers={"Accept": "application/json"},
        )

    def _check(self, response):
        if response.status_code == 403:
            raise SearchError(
                "SearXNG refused the JSON API (HTTP 403): enable `json` under `search.formats` in its settings.yml."
            )
        super()._check(response)

    def parse(self, response):
        data = response.json()
        return [
            SearchResult(
                title=_clean(r.get("title")), url=r.get("url") or "", snippet=_clean(r.get("content"))
            )
            for r in data.get("results", [])
        ]


class BraveSearch(HttpSearchBackend):
    """Brave Search API: ``GET /res/v1/web/search`` with ``X-Subscription-Token``."""

    name = "brave"
    label = "Brave"
    default_base_url = "https://api.search.brave.com"
    key_env = "BRAVE_API_KEY"
    key_help = "; get one at https://brave.com/search/api/"

    def build_request(self, client, query, n):
        return client.build_request(
            "GET",
            f"{self._base_url()}/res/v1/web/search",
            params={"q": query, "count": max(1, min(n, 20))},
            headers={"Accept": "application/json", "X-Subscription-Token": self._key()},
        )

    def parse(self, response):
        web = response.json().get("web") or {}
        return [
            SearchResult(
                title=_clean(r.get("title")), url=r.get("url") or "", snippet=_clean(r.get("description"))
            )
            for r in web.get("results", [])
        ]


class ExaSearch(HttpSearchBackend):
    """Exa: ``POST /search`` with ``x-api-key``, asking for a short text extract per result."""

    name = "exa"
    label = "Exa"
    default_base_url = "https://api.exa.ai"
    key_env = "EXA_API_KEY"
    key_help = "; get one at https://dashboard.exa.ai"

    def build_request(self, client, query, n):
        body = {
            "query": query,
            "numResults": max(1, min(n, 100)),
            "contents": {"text": {"maxCharacters": 500}},
        }
        return client.build_request(
            "POST",
            f"{self._base_url()}/search",
            json=body,
            headers={"x-api-key": self._key(), "Accept": "application/json"},
        )

    def parse(self, response):
        results = []
        for r in response.json().get("results", []):
            highlights = r.get("highlights") or []
            snippet = highlights[0] if highlights else r.get("summary") or r.get("text") or ""
            results.append(
                SearchResult(
                    title=_clean(r.get("title")) or r.get("url", ""),
                    url=r.get("url") or "",
                    snippet=_clean(snippet),
                )
            )
        return results


class TavilySearch(HttpSearchBackend):
    """Tavily: ``POST /search`` with a bearer key."""

    name = "tavily"
    label = "Tavily"
    default_base_url = "https://api.tavily.com"
    key_env = "TAVILY_API_KEY"
    key_help = "; get one at https://app.tavily.com"

    def build_request(self, client, query, n):
        body = {"query": query, "max_results": max(1, min(n, 20)), "search_depth": "basic"}
        return client.build_request(
            "POST",
            f"{self._base_url()}/search",
            json=body,
            headers={"Authorization": f"Bearer {self._key()}"},
        )

    def parse(self, response):
        return [
            SearchResult(
                title=_clean(r.get("title")), url=r.get("url") or "", snippet=_clean(r.get("content"))
            )
            for r in response.json().get("results", [])
        ]


class StaticSearch:
    """A scripted backend for tests and offline demos: fixed results, per query or for all."""

    name = "static"

    def __init__(self, results: list[SearchResult] | dict[str, list[SearchResult]]) -> None:
        self.results = results
        self.queries: list[str] = []

    def search(self, query: str, n: int = 10) -> list[SearchResult]:
        """The scripted results for ``query`` (at most ``n``)."""
        self.queries.append(query)
        results = self.results.get(query, []) if isinstance(self.results, dict) else self.results
        return list(results)[: max(n, 0)]


BACKENDS: dict[str, type[HttpSearchBackend]] = {
    "duckduckgo": DuckDuckGoSearch,
    "ddg": DuckDuckGoSearch,
    "searxng": SearXNGSearch,
    "brave": BraveSearch,
    "exa": ExaSearch,
    "tavily": TavilySearch,
}
"""Backend names accepted by ``get_backend`` and ``Browser(search=...)``."""


def get_backend(name: str | None = None, **options: Any) -> HttpSearchBackend:
    """The backend called ``name`` (else ``$GPTOSS_SEARCH``, else ``duckduckgo``).

    ``options`` go to its constructor: ``api_key``, ``base_url``, ``timeout``.
    """
    chosen = (name or os.environ.get("GPTOSS_SEARCH") or "duckduckgo").strip().lower()
    try:
        cls = BACKENDS[chosen]
    except KeyError:
        raise ValueError(
            f"Unknown search backend {chosen!r}; choose one of {', '.join(sorted(BACKENDS))}."
        ) from None
    return cls(**options)
