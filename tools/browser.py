"""The ``browser`` tool: harmony's built-in namespace with ``search``, ``open`` and ``find``.

It behaves as the browser gpt-oss was trained with (openai/gpt-oss ``simple_browser``): every
result is a page pushed on a stack, and its index is the page's *cursor*. A page shows as

    [3] Title (https://example.com/page)
    **viewing lines [0 - 41] of 212**

    L0: # Title
    L1: text with a link 【0†anchor】 and another site's link 【1†anchor†other.org】

in a window of about ``view_tokens`` tokens, lines being the page text wrapped at 80 columns.
``open`` follows a link id on a cursor's page, opens a URL, or (without ``id``) scrolls to
``loc``; ``find`` lists the exact, case-insensitive matches of a pattern as a new page whose
links jump to each match. ``Browser.resolve_citations`` turns the model's ``【3†L10-L15】``
citations into links for the final answer.

Memory stays bounded in long sessions: the page stack holds at most ``max_pages`` pages and
the page cache ``max_cached_pages`` (both least recently used first out). Cursors keep counting
up, so a cursor the model saw earlier never names another page; an evicted one gets a message
saying to open the page again. ``reset()`` (``Agent.reset()`` calls it) forgets everything.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, unquote

from .base import FunctionSpec, NamespaceSpec, ToolError, ToolOutput, call_in_thread, run_coroutine
from .fetch import Document, FetchConfig, Resolver, fetch
from .page import PageTooComplex, domain_of, html_to_text_bounded, sanitize
from .search import SearchBackend, SearchResult, get_backend

__all__ = ["Browser", "Citation", "Page", "wrap_lines"]

DESCRIPTION = (
    "Tool for browsing.\n"
    "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
    "Cite information from the tool using the following format:\n"
    "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
    "Do not quote more than 10 words directly from the tool output.\n"
    "sources=web (default: web)"
)
"""The namespace description gpt-oss was trained with (openai-harmony's ``ToolNamespaceConfig.browser()``)."""

FUNCTIONS = (
    FunctionSpec(
        name="search",
        description="Searches for information related to `query` and displays `topn` results.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "topn": {"type": "number", "default": 10},
                "source": {"type": "string"},
            },
            "required": ["query"],
        },
    ),
    FunctionSpec(
        name="open",
        description=(
            "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing `num_lines` lines.\n"
            "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
            "If `cursor` is not provided, the most recent page is implied.\n"
            "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
            "If `loc` is not provided, the viewport will be positioned at the beginning of the document or centered on the most relevant passage, if available.\n"
            "Use this function without `id` to scroll to a new location of an opened page."
        ),
        parameters={
            "type": "object",
            "properties": {
                "id": {"type": ["number", "string"], "default": -1},
                "cursor": {"type": "number", "default": -1},
                "loc": {"type": "number", "default": -1},
                "num_lines": {"type": "number", "default": -1},
                "view_source": {"type": "boolean", "default": False},
                "source": {"type": "string"},
            },
        },
    ),
    FunctionSpec(
        name="find",
        description="Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
        parameters={
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "cursor": {"type": "number", "default": -1}},
            "required": ["pattern"],
        },
    ),
)

WRAP_WIDTH = 80
FIND_CONTEXT_LINES = 4
MAX_FIND_RESULTS = 50

_WRAP = re.compile(rf"(.{{1,{WRAP_WIDTH}}})(?:\s+|$)|(.{{{WRAP_WIDTH}}})")
_PARTIAL_LINK_START = re.compile(r"^[^【】]*】")
_PARTIAL_LINK_END = re.compile(r"【\d*(?:†(?P<content>[^†】]*)(?:†[^†】]*)?)?$")
_LINK = re.compile(r"【\d+†(?P<content>[^†】]+)(?:†[^†】]+)?】")
_CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<content>[^†】]*)(?:†[^】]*)?】")
_LINE_RANGE = re.compile(r"^\s*L(\d+)(?:\s*-\s*L?(\d+))?\s*$")


def wrap_lines(text: str, width: int = WRAP_WIDTH) -> list[str]:
    """Split text into display lines: its own lines, wrapped at ``width`` on whitespace."""
    pattern = _WRAP if width == WRAP_WIDTH else re.compile(rf"(.{{1,{width}}})(?:\s+|$)|(.{{{width}}})")
    lines: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
        else:
            lines.extend(a or b for a, b in pattern.findall(line.rstrip()))
    return lines


def strip_links(line: str) -> str:
    """A display line with its ``【id†text(†domain)】`` links reduced to their text."""
    line = _PARTIAL_LINK_START.sub("", line)
    line = _PARTIAL_LINK_END.sub(lambda m: m.group("content") or "", line)
    return _LINK.sub(lambda m: m.group("content"), line)


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page on the browser's stack."""

    url: str
    """Empty for search results pages."""
    title: str
    lines: tuple[str, ...]
    links: tuple[str, ...] = ()
    """``links[i]`` is the URL behind ``【i†...】``."""
    kind: Literal["web", "search", "find"] = "web"
    match_lines: tuple[int, ...] = ()
    """For find results: the line of ``target`` that link ``i`` jumps to."""
    target: Page | None = field(default=None, repr=False)
    """For find results: the page searched."""

    @property
    def source_url(self) -> str:
        """The URL a citation of this page points to (the searched page, for find results)."""
        return self.target.url if self.target is not None else self.url


@dataclass(frozen=True, kw_only=True)
class Citation:
    """A citation ``【cursor†L10-L15】`` in the model's text, resolved against the page stack."""

    start: int
    end: int
    """The citation's span in the text."""
    cursor: int
    first_line: int | None
    last_line: int | None
    url: str | None
    """None when the cursor is not on the stack or the page has no URL (search results)."""
    title: str | None
    quote: str
    """The cited lines as the model saw them (without line numbers); "" if not resolvable."""


class _ModelError(ToolError):
    """A mistake in the model's call: the message goes back to it."""


class Browser:
    """harmony's built-in ``browser`` tool.

    Args:
        search: A backend name (``duckduckgo``, ``searxng``, ``brave``, ``exa``, ``tavily``), an
            object with ``search(query, n)`` (and optionally ``async asearch``), or None for
            ``$GPTOSS_SEARCH`` (default ``duckduckgo``).
        allow_private_urls: Open loopback, private and link-local addresses too (refused by
            default, also behind redirects and DNS names).
        view_tokens: The size of a page window, in o200k tokens.
        max_search_results: The most results one search shows, whatever ``topn`` asks.
        fetch_config: Timeouts, size cap, redirect limit, TLS trust and the network seams.
        resolver: The DNS seam, ``resolver(host, port) -> addresses`` (overrides ``fetch_config``'s).
        encoding: The tokenizer for window sizes; None loads ``o200k_harmony`` on first use.
        max_pages: The most pages the stack holds; the least recently used goes first.
        max_cached_pages: The most fetched pages kept for reopening without a fetch (LRU).
    """

    def __init__(
        self,
        search: str | SearchBackend | None = None,
        *,
        allow_private_urls: bool = False,
        view_tokens: int = 1024,
        max_search_results: int = 20,
        fetch_config: FetchConfig | None = None,
        resolver: Resolver | None = None,
        encoding: Any = None,
        max_pages: int = 100,
        max_cached_pages: int = 32,
    ) -> None:
        if max_pages < 1 or max_cached_pages < 0:
            raise ValueError("max_pages must be at least 1 and max_cached_pages at least 0")
        self.backend: SearchBackend = (
            get_backend(search) if search is None or isinstance(search, str) else search
        )
        config = fetch_config or FetchConfig()
        self.fetch_config = replace(
            config,
            allow_private_urls=allow_private_urls or config.allow_private_urls,
            resolver=resolver or config.resolver,
        )
        self.view_tokens = view_tokens
        self.max_search_results = max_search_results
        self._encoding = encoding
        self.max_pages = max_pages
        self.max_cached_pages = max_cached_pages
        self._stack: OrderedDict[int, Page] = OrderedDict()  # cursor -> page, least recently used first
        self._next_cursor = 0
        self._cache: OrderedDict[str, Page] = OrderedDict()  # least recently used first

    # -- the Tool protocol ---------------------------------------------------------------------
    @property
    def spec(self) -> NamespaceSpec:
        """``namespace browser`` exactly as gpt-oss was trained on it."""
        return NamespaceSpec(name="browser", description=DESCRIPTION, functions=FUNCTIONS, builtin=True)

    def call(self, function: str, body: str) -> ToolOutput:
        """Run ``browser.<function>`` with the model's JSON ``body`` (blocking)."""
        return run_coroutine(self.acall(function, body))

    async def acall(self, function: str, body: str) -> ToolOutput:
        """Run ``browser.<function>`` with the model's JSON ``body``."""
        started = time.perf_counter()
        author = f"browser.{function}"
        try:
            args = _parse_arguments(body)
            if function == "search":
                text = await self.search(
                    _string(args, "query", required=True), topn=_integer(args, "topn", args.get("top_n", 10))
                )
            elif function == "open":
                text = await self.open(
                    _link_id(args.get("id", -1)),
                    cursor=_integer(args, "cursor", -1),
                    loc=_integer(args, "loc", -1),
                    num_lines=_integer(args, "num_lines", -1),
                    view_source=bool(args.get("view_source", False)),
                )
            elif function == "find":
                text = await self.find(
                    _string(args, "pattern", required=True), cursor=_integer(args, "cursor", -1)
                )
            else:
                raise _ModelError(
                    f"Unknown function `browser.{function}`; the browser has search, open and find."
                )
        except ToolError as e:
            return ToolOutput(
                author=author, content=str(e), is_error=True, duration=time.perf_counter() - started
            )
        cursor = self._next_cursor - 1
        page = self._stack[cursor]
        metadata = {"cursor": cursor, "url": page.source_url, "title": page.title}
        return ToolOutput(
            author=author, content=text, duration=time.perf_counter() - started, metadata=metadata
        )

    # -- the three functions -------------------------------------------------------------------
    async def search(self, query: str, *, topn: int = 10) -> str:
        """Search, push the results page and return its display."""
        if not query.strip():
            raise _ModelError("`query` is empty; say what to search for.")
        n = max(1, min(topn if topn > 0 else 10, self.max_search_results))
        asearch = getattr(self.backend, "asearch", None)
        if asearch is not None:
            results: list[SearchResult] = await asearch(query, n)
        else:
            results = await call_in_thread(self.backend.search, query, n)
        if not results:
            raise _ModelError(f"No search results for `{query}`. Try other words.")
        return self._push(_results_page(query, results[:n]), loc=0)

    async def open(
        self,
        id: int | str = -1,
        *,
        cursor: int = -1,
        loc: int = -1,
        num_lines: int = -1,
        view_source: bool = False,
    ) -> str:
        """Open link ``id`` of the page at ``cursor``, a URL, or (``id=-1``) scroll that page to ``loc``."""
        if isinstance(id, str):
            page = await self._load(_normalize_url(id), view_source=view_source, refresh=True)
        else:
            current = self._page(cursor)
            if id < 0:
                page = (
                    await self._load(current.url, view_source=True)
                    if view_source and current.url
                    else current
                )
            else:
                if id >= len(current.links):
                    raise _ModelError(f"Invalid link id `{id}`." + _valid_ids(current))
                if current.kind == "find" and current.target is not None:
                    page = current.target
                    if loc < 0:
                        loc = current.match_lines[id]
                        loc = loc - FIND_CONTEXT_LINES if loc > FIND_CONTEXT_LINES else loc
                else:
                    page = await self._load(current.links[id], view_source=view_source)
        return self._push(page, loc=max(loc, 0), num_lines=num_lines)

    async def find(self, pattern: str, *, cursor: int = -1) -> str:
        """Find ``pattern`` (case-insensitive) in the page at ``cursor``; push the results page."""
        page = self._page(cursor)
        if page.kind != "web":
            raise _ModelError("Cannot run `find` on search results page or find results page")
        if not pattern:
            raise _ModelError("`pattern` is empty.")
        return self._push(_find_page(page, pattern), loc=0)

    # -- citations -----------------------------------------------------------------------------
    def citations(self, text: str) -> list[Citation]:
        """Every ``【cursor†L..】`` citation in ``text``, resolved against this browser's pages."""
        found = []
        for match in _CITATION.finditer(text):
            cursor = int(match.group("cursor"))
            lines = _LINE_RANGE.match(match.group("content"))
            first = int(lines.group(1)) if lines else None
            last = int(lines.group(2) or lines.group(1)) if lines else None
            page = self._stack.get(cursor)
            quote_text = ""
            if page is not None and first is not None and last is not None:
                quote_text = "\n".join(page.lines[first : last + 1])
            found.append(
                Citation(
                    start=match.start(),
                    end=match.end(),
                    cursor=cursor,
                    first_line=first,
                    last_line=last,
                    url=(page.source_url or None) if page is not None else None,
                    title=page.title if page is not None else None,
                    quote=quote_text,
                )
            )
        return found

    def resolve_citations(self, text: str) -> str:
        """``text`` with each resolvable citation replaced by a Markdown link ``([domain](url))``;
        citations of unknown cursors stay as written."""
        out, last = [], 0
        for citation in self.citations(text):
            out.append(text[last : citation.start])
            if citation.url:
                space = "" if citation.start == 0 or text[citation.start - 1].isspace() else " "
                out.append(f"{space}([{domain_of(citation.url) or citation.url}]({citation.url}))")
            else:
                out.append(text[citation.start : citation.end])
            last = citation.end
        out.append(text[last:])
        return "".join(out)

    # -- state -----------------------------------------------------------------------------------
    @property
    def pages(self) -> tuple[Page, ...]:
        """The pages on the stack in cursor order (a page's index is its cursor until the stack
        first drops one; ``cursors`` gives them)."""
        return tuple(self._stack[c] for c in self.cursors)

    @property
    def cursors(self) -> tuple[int, ...]:
        """The cursors of the pages on the stack, in order."""
        return tuple(sorted(self._stack))

    def reset(self) -> None:
        """Forget every page and the cache (a new conversation): cursors start at 0 again."""
        self._stack.clear()
        self._cache.clear()
        self._next_cursor = 0

    # -- internals -------------------------------------------------------------------------------
    def _page(self, cursor: int) -> Page:
        if not self._stack:
            raise _ModelError("No pages to access! Use `search` or open a URL first.")
        if cursor == -1:
            cursor = self._next_cursor - 1
        if not 0 <= cursor < self._next_cursor:
            raise _ModelError(
                f"Cursor `{cursor}` is out of range. Available cursor indices: [0 - {self._next_cursor - 1}]."
            )
        page = self._stack.get(cursor)
        if page is None:
            raise _ModelError(
                f"Cursor `{cursor}` is no longer available (the browser keeps the {self.max_pages} most "
                "recently used pages); open the page again."
            )
        self._stack.move_to_end(cursor)
        return page

    async def _load(self, url: str, *, view_source: bool = False, refresh: bool = False) -> Page:
        key = f"view-source:{url}" if view_source else url
        if not refresh and (cached := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return cached
        document = await fetch(url, self.fetch_config)
        page = await _document_page(document, view_source=view_source, config=self.fetch_config)
        self._remember(key, page)
        self._remember(f"view-source:{document.url}" if view_source else document.url, page)
        return page

    def _remember(self, key: str, page: Page) -> None:
        self._cache[key] = page
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cached_pages:
            self._cache.popitem(last=False)

    def _push(self, page: Page, *, loc: int, num_lines: int = -1) -> str:
        total = len(page.lines)
        if loc >= total:
            raise _ModelError(
                f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {total - 1}."
            )
        cursor = self._next_cursor
        self._next_cursor += 1
        self._stack[cursor] = page
        while len(self._stack) > self.max_pages:
            self._stack.popitem(last=False)  # the least recently used page (never the new one)
        end = self._window_end(page.lines, loc, num_lines)
        header = f"[{cursor}] {page.title}"
        if page.url:
            header += f" ({_truncate(unquote(page.url))})"
        body = "\n".join(f"L{i}: {page.lines[i]}" for i in range(loc, end))
        return f"{header}\n**viewing lines [{loc} - {end - 1}] of {total - 1}**\n\n{body}"

    def _window_end(self, lines: tuple[str, ...], loc: int, num_lines: int) -> int:
        """The end of the window from ``loc``: ``num_lines`` lines, else about ``view_tokens`` tokens."""
        if num_lines > 0:
            return min(loc + num_lines, len(lines))
        encoding = self._tokenizer()
        budget = (self.view_tokens + 1) * _max_token_chars(encoding)
        numbered, size = [], 0
        for i in range(loc, len(lines)):
            numbered.append(f"L{i}: {lines[i]}")
            size += len(numbered[-1]) + 1
            if size > budget:
                break
        text = "\n".join(numbered)
        if len(text) <= self.view_tokens:  # never more tokens than characters: all of it fits
            return loc + len(numbered)
        tokens = encoding.encode(text, disallowed_special=())
        if len(tokens) <= self.view_tokens:
            return loc + len(numbered)
        shown = encoding.decode_bytes(tokens[: self.view_tokens])
        return min(loc + shown.count(b"\n") + 1, len(lines))

    def _tokenizer(self) -> Any:
        if self._encoding is None:
            from gptoss_agent.model import load_tokenizer

            self._encoding = load_tokenizer()
        return self._encoding


@functools.lru_cache(maxsize=4)
def _max_token_chars_cached(encoding: Any) -> int:
    return max(len(token) for token in encoding.token_byte_values())


def _max_token_chars(encoding: Any) -> int:
    try:
        return _max_token_chars_cached(encoding)
    except (AttributeError, TypeError):
        return 128


def _results_page(query: str, results: list[SearchResult]) -> Page:
    items = []
    for i, result in enumerate(results):
        title = sanitize(result.title) or domain_of(result.url)
        snippet = sanitize(result.snippet)
        items.append(f"  * 【{i}†{title}†{domain_of(result.url)}】" + (f" {snippet}" if snippet else ""))
    text = "# Search Results\n\n" + "\n".join(items)
    return Page(
        url="",
        title=sanitize(query),
        lines=tuple(wrap_lines(text)),
        links=tuple(r.url for r in results),
        kind="search",
    )


def _find_page(page: Page, pattern: str) -> Page:
    needle = pattern.lower()
    lines = [strip_links(line) for line in page.lines]
    chunks: list[str] = []
    matches: list[int] = []
    i = 0
    while i < len(lines) and len(matches) < MAX_FIND_RESULTS:
        if needle not in lines[i].lower():
            i += 1
            continue
        snippet = "\n".join(lines[i : i + FIND_CONTEXT_LINES])
        chunks.append(f"# 【{len(matches)}†match at L{i}】\n{snippet}")
        matches.append(i)
        i += FIND_CONTEXT_LINES
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(
        url=f"{page.url}/find?pattern={quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        lines=tuple(wrap_lines(text)),
        links=tuple(page.url for _ in matches),
        kind="find",
        match_lines=tuple(matches),
        target=page,
    )


async def _document_page(document: Document, *, view_source: bool, config: FetchConfig) -> Page:
    if document.kind == "html" and not view_source:
        try:  # in a worker process, within a time limit: a hostile page cannot keep a core busy
            converted = await html_to_text_bounded(
                document.text, document.url, timeout=config.parse_timeout, max_depth=config.max_depth
            )
        except PageTooComplex as e:
            raise _ModelError(
                f"`{document.url}` is too complex to show: {e}. Its source is readable with `view_source`."
            ) from None
        title, text, links = converted.title, converted.text, tuple(converted.links)
    else:
        name = unquote(document.url.rstrip("/").rsplit("/", 1)[-1]) or domain_of(document.url)
        title, text, links = name, document.text.replace("【", "〖").replace("】", "〗"), ()
    if document.truncated:
        text += f"\n\n[The page was cut here: only its first {_size(document)} were downloaded.]"
    url = f"view-source:{document.url}" if view_source else document.url
    return Page(url=url, title=title, lines=tuple(wrap_lines(text)), links=links)


def _size(document: Document) -> str:
    size = len(document.text.encode())
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size // 1000} kB"


def _truncate(text: str, limit: int = 1024) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid_ids(page: Page) -> str:
    return (
        f" Valid link ids on this page are 0 to {len(page.links) - 1}."
        if page.links
        else " This page has no links."
    )


def _normalize_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise _ModelError("`id` is an empty string; give a URL or a link id.")
    if "://" not in url:
        url = "https://" + url.removeprefix("//")
    return url


def _parse_arguments(body: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        args = json.loads(body)
    except json.JSONDecodeError as e:
        raise _ModelError(
            f"The arguments are not valid JSON ({e.msg} at position {e.pos}): {_truncate(body, 200)}"
        ) from None
    if not isinstance(args, dict):
        raise _ModelError('The arguments must be a JSON object, for example {"query": "..."}.')
    return args


def _string(args: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = args.get(name)
    if value is None:
        if required:
            raise _ModelError(f"`{name}` is required.")
        return ""
    if not isinstance(value, str):
        raise _ModelError(f"`{name}` must be a string, not {type(value).__name__}.")
    return value


def _integer(args: dict[str, Any], name: str, default: Any) -> int:
    value = args.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _ModelError(f"`{name}` must be a number, not {type(value).__name__}.")
    try:
        number = float(value)
    except ValueError:
        raise _ModelError(f"`{name}` must be a number, not `{value}`.") from None
    if not number.is_integer():
        raise _ModelError(f"`{name}` must be a whole number, not {value}.")
    return int(number)


def _link_id(value: Any) -> int | str:
    if isinstance(value, bool) or value is None:
        raise _ModelError("`id` must be a link id (a number) or a URL (a string).")
    if isinstance(value, int | float):
        if not float(value).is_integer():
            raise _ModelError(f"`id` must be a whole number, not {value}.")
        return int(value)
    if isinstance(value, str):
        return int(value) if value.strip().lstrip("-").isdigit() else value
    raise _ModelError("`id` must be a link id (a number) or a URL (a string).")
