"""The browser's memory stays bounded in long sessions: LRU page stack and page cache, reset."""

from __future__ import annotations

import json

import pytest
from gptoss_agent.agent import Agent, ScriptedEngine
from gptoss_agent.tools import Browser
from gptoss_agent.tools.search import SearchResult, StaticSearch
from websim import web_fixture  # noqa: F401  (the `web` fixture)

DATE = "2026-01-02"
PAGES = ["http://news.test/", "http://news.test/articles/tide-energy", "http://wiki.test/wiki/Tidal_power"]


def _search(n: int = 3) -> StaticSearch:
    return StaticSearch(
        {"tides": [SearchResult(f"Result {i}", url, "snippet") for i, url in enumerate(PAGES[:n])]}
    )


def test_the_page_stack_keeps_the_most_recently_used_pages(enc):
    browser = Browser(search=_search(), encoding=enc, max_pages=3)
    for _ in range(3):
        browser.call("search", '{"query": "tides"}')  # cursors 0, 1, 2
    assert browser.call("find", '{"pattern": "x", "cursor": 0}').is_error  # (a results page) but used
    out = browser.call("search", '{"query": "tides"}')  # cursor 3: evicts 1, the least recently used
    assert out.content.startswith("[3] ") and out.metadata["cursor"] == 3
    assert browser.cursors == (0, 2, 3) and len(browser.pages) == 3
    gone = browser.call("open", json.dumps({"cursor": 1, "id": -1}))
    assert (
        gone.is_error
        and "Cursor `1` is no longer available" in gone.content
        and "open the page again" in gone.content
    )
    bad = browser.call("open", json.dumps({"cursor": 9, "id": -1}))
    assert bad.is_error and "out of range" in bad.content
    for _ in range(50):
        browser.call("search", '{"query": "tides"}')
    assert len(browser.pages) == 3 and browser.cursors[-1] == 53  # cursors never repeat
    browser.reset()
    assert browser.pages == () and browser.call("search", '{"query": "tides"}').metadata["cursor"] == 0


def test_the_page_cache_is_bounded_least_recently_used_first(web, enc):
    browser = Browser(search=_search(), fetch_config=web.fetch_config(), encoding=enc, max_cached_pages=2)
    browser.call("search", '{"query": "tides"}')  # cursor 0: links 0, 1, 2 are the three pages

    def fetches() -> int:
        return len(web.site.requests)

    for i in range(3):
        assert not browser.call("open", json.dumps({"cursor": 0, "id": i})).is_error
    n = fetches()
    assert not browser.call("open", json.dumps({"cursor": 0, "id": 2})).is_error
    assert fetches() == n  # the newest is cached
    assert not browser.call("open", json.dumps({"cursor": 0, "id": 0})).is_error
    assert fetches() == n + 1  # the oldest was dropped: fetched again
    assert len(browser._cache) <= 2


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="max_pages"):
        Browser(search=_search(), max_pages=0)


def test_agent_reset_also_resets_the_tools(enc):
    browser = Browser(search=_search(), encoding=enc)
    search = (
        "<|channel|>analysis<|message|>Search.<|end|><|start|>assistant<|channel|>analysis to=browser.search"
        ' <|constrain|>json<|message|>{"query": "tides"}<|call|>'
    )
    engine = ScriptedEngine([search, "<|channel|>final<|message|>Found.<|return|>"], enc=enc)
    agent = Agent(engine, [browser], enc=enc, date=DATE)
    assert agent.run("Tides?").answer == "Found."
    assert len(browser.pages) == 1
    agent.reset()
    assert agent.messages == [] and browser.pages == ()
