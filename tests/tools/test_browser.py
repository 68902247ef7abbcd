"""The browser tool end to end against local servers: spec, a golden session, windows, errors, citations."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from gptoss_agent.tools import Browser, Tool
from gptoss_agent.tools.browser import wrap_lines
from gptoss_agent.tools.search import SearchResult, StaticSearch
from websim import web_fixture  # noqa: F401  (the `web` fixture)

GOLDEN = Path(__file__).parent / "golden"


def test_spec_renders_exactly_as_openai_harmony_browser():
    harmony = pytest.importorskip("openai_harmony")
    reference = harmony.ToolNamespaceConfig.browser()
    spec = Browser(search="duckduckgo").spec
    assert spec.builtin and spec.name == reference.name
    assert spec.description == reference.description
    assert [f.name for f in spec.functions] == [t.name for t in reference.tools]
    for ours, theirs in zip(spec.functions, reference.tools, strict=True):
        assert ours.description == theirs.description
        assert json.dumps(ours.parameters) == json.dumps(theirs.parameters)  # key order matters when rendered


def test_system_message_with_the_browser_is_token_identical_to_openai_harmony(enc):
    harmony = pytest.importorskip("openai_harmony")
    from gptoss_agent.agent import harmony as codec
    from gptoss_agent.agent import messages as m

    spec = Browser(search=StaticSearch([])).spec
    namespace = m.ToolNamespaceConfig(
        name=spec.name,
        description=spec.description,
        tools=[m.ToolDescription(f.name, f.description, f.parameters) for f in spec.functions],
    )
    system = m.SystemContent.new().with_conversation_start_date("2026-11-27").with_tools(namespace)
    ours = codec.render_conversation([m.Message.from_role_and_content(m.Role.SYSTEM, system)], enc)
    reference = harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    their_system = harmony.SystemContent.new().with_conversation_start_date("2026-11-27").with_browser_tool()
    theirs = reference.render_conversation(
        harmony.Conversation.from_messages(
            [harmony.Message.from_role_and_content(harmony.Role.SYSTEM, their_system)]
        )
    )
    assert ours == theirs and "namespace browser {" in enc.decode(ours)


def test_browser_is_a_tool():
    assert isinstance(Browser(search="duckduckgo"), Tool)


def _session(browser: Browser) -> list[tuple[str, dict]]:
    """search -> open a result -> follow a link -> find -> open a match -> scroll."""
    steps: list[tuple[str, dict]] = [
        ("search", {"query": "tidal energy", "topn": 3}),
        ("open", {"id": 0}),
        ("find", {"pattern": "Turbines"}),
        ("open", {"id": 2}),
        ("open", {"loc": 120, "num_lines": 12}),
        ("open", {"cursor": 1, "id": 0}),  # the article's first link: the wiki page
        ("open", {"id": 1}),  # a relative link on the wiki page: not on the server
        ("open", {"cursor": 5, "loc": 20}),
        ("find", {"pattern": "nothing like this"}),
        ("open", {"id": "http://news.test/"}),
    ]
    return steps


def test_golden_session(web, enc):
    browser = web.browser(enc=enc)
    transcript = []
    for function, args in _session(browser):
        output = browser.call(function, json.dumps(args))
        status = "error" if output.is_error else f"cursor={output.metadata['cursor']}"
        transcript.append(
            f"=== browser.{function} {json.dumps(args, ensure_ascii=False)} ({status})\n{output.content}\n"
        )
    actual = "\n".join(transcript)
    path = GOLDEN / "browser_session.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    for number, (got, want) in enumerate(zip(actual.splitlines(), expected.splitlines(), strict=False), 1):
        assert got == want, f"line {number} of {path.name} differs"
    assert len(actual.splitlines()) == len(expected.splitlines())


def test_window_is_sized_in_tokens(web, enc):
    for view_tokens in (1024, 256):
        browser = web.browser(enc=enc, view_tokens=view_tokens)
        text = browser.call("open", json.dumps({"id": "http://news.test/huge"})).content
        body = text.split("\n\n", 1)[1]
        lines = body.split("\n")
        tokens = len(enc.encode(body, disallowed_special=()))
        last_line = len(enc.encode(lines[-1], disallowed_special=()))
        assert view_tokens <= tokens + 1 and tokens - last_line <= view_tokens, (view_tokens, tokens)
        assert f"**viewing lines [0 - {len(lines) - 1}] of " in text


def test_topn_is_honoured_and_capped(web, enc):
    browser = web.browser(enc=enc, max_search_results=3)
    one = browser.call("search", '{"query": "tidal energy", "topn": 1}')
    assert one.content.count("  * 【") == 1 and browser.pages[-1].links == (
        "http://news.test/articles/tide-energy",
    )
    capped = browser.call("search", '{"query": "tidal energy", "topn": 50}')
    assert capped.content.count("  * 【") == 3


def test_every_backend_drives_the_browser(web, enc):
    for name in ("searxng", "brave", "exa", "tavily"):
        browser = web.browser(name, enc=enc)
        assert (
            "【1†Tidal power - WikiTest†wiki.test】"
            in browser.call("search", '{"query": "tidal energy"}').content
        )
        assert (
            "[1] Tidal power - WikiTest (http://wiki.test/wiki/Tidal_power)"
            in browser.call("open", '{"id": 1}').content
        )


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ([("open", "{}")], "No pages to access! Use `search` or open a URL first."),
        (
            [("search", "{query: 1}")],
            "The arguments are not valid JSON (Expecting property name enclosed in double quotes at position 1)",
        ),
        ([("search", "[1]")], "The arguments must be a JSON object"),
        ([("search", "{}")], "`query` is required."),
        (
            [("search", '{"query": "nothing at all"}')],
            "No search results for `nothing at all`. Try other words.",
        ),
        ([("browse", "{}")], "Unknown function `browser.browse`; the browser has search, open and find."),
        (
            [("search", '{"query": "tidal energy"}'), ("open", '{"id": 9}')],
            "Invalid link id `9`. Valid link ids on this page are 0 to 3.",
        ),
        (
            [("search", '{"query": "tidal energy"}'), ("open", '{"cursor": 4}')],
            "Cursor `4` is out of range. Available cursor indices: [0 - 0].",
        ),
        (
            [("search", '{"query": "tidal energy"}'), ("open", '{"loc": 99}')],
            "Invalid location parameter: `99`. Cannot exceed page maximum of 8.",
        ),
        (
            [("search", '{"query": "tidal energy"}'), ("open", '{"loc": 1.5}')],
            "`loc` must be a whole number, not 1.5.",
        ),
        (
            [("search", '{"query": "tidal energy"}'), ("find", '{"pattern": "x"}')],
            "Cannot run `find` on search results page or find results page",
        ),
        (
            [("open", '{"id": "http://news.test/missing"}')],
            "HTTP 404 Not Found for `http://news.test/missing`.",
        ),
        (
            [("open", '{"id": "http://news.test/logo.png"}')],
            "`http://news.test/logo.png` is a binary file (image/png)",
        ),
        ([("open", '{"id": "http://news.test/to-internal"}')], "Refused to open `http://127.0.0.1:"),
        (
            [("open", '{"id": "http://intranet.test/"}')],
            "Refused to open `http://intranet.test/`: it points to `10.0.0.5`",
        ),
    ],
)
def test_mistakes_come_back_to_the_model(web, enc, calls, message):
    browser = web.browser(enc=enc)
    for function, body in calls[:-1]:
        assert not browser.call(function, body).is_error
    depth = len(browser.pages)
    output = browser.call(*calls[-1])
    assert output.is_error and output.content.startswith(message), output.content
    assert output.author == f"browser.{calls[-1][0]}"
    assert len(browser.pages) == depth  # a failed call pushes nothing


def test_a_plain_sync_backend_drives_the_browser(web, enc):
    results = [SearchResult("Tide table", "http://news.test/", "High water at 06:12")]
    backend = StaticSearch({"tides": results})
    browser = Browser(search=backend, fetch_config=web.fetch_config(), encoding=enc)
    page = browser.call("search", '{"query": "tides"}').content
    assert page.endswith("L2:   * 【0†Tide table†news.test】 High water at 06:12") and backend.queries == [
        "tides"
    ]
    assert "Harbor Times" in browser.call("open", '{"id": 0}').content


def test_missing_key_is_a_message_not_a_crash(monkeypatch, enc):
    monkeypatch.delenv("BRAVE_API_KEY", raising=False)
    output = Browser(search="brave", encoding=enc).call("search", '{"query": "tides"}')
    assert (
        output.is_error
        and "Brave backend needs an API key" in output.content
        and "BRAVE_API_KEY" in output.content
    )


def test_private_urls_are_refused_by_default_and_allowed_on_request(web, enc):
    url = f"{web.internal.url}/"
    refused = Browser(search="duckduckgo", encoding=enc).call("open", json.dumps({"id": url}))
    assert refused.is_error and "only opens public web addresses" in refused.content
    allowed = Browser(search="duckduckgo", encoding=enc, allow_private_urls=True).call(
        "open", json.dumps({"id": url})
    )
    assert not allowed.is_error and "L0: # internal secret" in allowed.content


def test_page_kinds_and_view_source(web, enc):
    browser = web.browser(enc=enc)
    pdf = browser.call("open", '{"id": "http://news.test/report.pdf"}').content
    assert pdf.startswith("[0] report.pdf (http://news.test/report.pdf)") and "Tidal report 2026" in pdf
    data = browser.call("open", '{"id": "http://news.test/data.json"}').content
    assert 'L2:   "capacity_mw": 240,' in data
    source = browser.call("open", '{"id": 0, "cursor": -1, "view_source": true}')
    assert source.is_error  # JSON pages have no links
    source = browser.call("open", '{"view_source": true}').content
    assert source.startswith("[2] data.json (view-source:http://news.test/data.json)")
    html = browser.call("open", '{"id": "http://news.test/", "view_source": true}').content
    assert html.startswith("[3] news.test (view-source:http://news.test/)") and "L0: <!DOCTYPE html>" in html
    bare = browser.call("open", '{"id": "news.test/"}')  # no scheme: https is assumed
    assert bare.is_error and "`https://news.test/`" in bare.content
    cut = web.browser(enc=enc, fetch={"max_bytes": 50_000}).call("open", '{"id": "http://news.test/big.txt"}')
    assert cut.metadata["cursor"] == 0 and "of 3848**" in cut.content
    last = web.browser(enc=enc, fetch={"max_bytes": 50_000})
    last.call("open", '{"id": "http://news.test/big.txt"}')
    tail = last.call("open", '{"loc": 3846}').content
    assert tail.endswith("L3848: [The page was cut here: only its first 50 kB were downloaded.]")


def test_huge_page_find_and_scroll(web, enc):
    browser = web.browser(enc=enc)
    opened = browser.call("open", '{"id": "http://news.test/huge"}')
    total = len(browser.pages[-1].lines)
    assert total > 5000 and f"of {total - 1}**" in opened.content
    found = browser.call("find", '{"pattern": "Section 250"}').content
    assert "# 【0†match at L" in found
    jump = browser.call("open", '{"id": 0}').content
    assert "## Section 250" in jump
    end = browser.call("open", json.dumps({"cursor": 0, "loc": total - 3})).content
    assert f"**viewing lines [{total - 3} - {total - 1}] of {total - 1}**" in end


def test_citations_resolve_to_urls(web, enc):
    browser = web.browser(enc=enc)
    browser.call("search", '{"query": "tidal energy"}')
    browser.call("open", '{"id": 1}')
    browser.call("find", '{"pattern": "rance"}')
    text = "La Rance opened in 1966【1†L8-L9】 and tides are old【2†L0】; unknown【7†L1】, search【0†L2】."
    resolved = browser.resolve_citations(text)
    assert resolved == (
        "La Rance opened in 1966 ([wiki.test](http://wiki.test/wiki/Tidal_power)) and tides are old"
        " ([wiki.test](http://wiki.test/wiki/Tidal_power)); unknown【7†L1】, search【0†L2】."
    )
    first = browser.citations(text)[0]
    assert (first.cursor, first.first_line, first.last_line, first.title) == (
        1,
        8,
        9,
        "Tidal power - WikiTest",
    )
    assert first.quote == "\n".join(browser.pages[1].lines[8:10]) and first.quote


def test_toolbox_routes_and_validates_browser_calls(web, enc):
    from gptoss_agent.tools import Toolbox

    toolbox = Toolbox([web.browser(enc=enc)])
    assert (
        toolbox.dispatch("browser.search", '{"query": "tidal energy", "top_n": 2}').content.count("  * 【")
        == 2
    )
    assert toolbox.dispatch("browser.open", '{"id": "1"}').content.startswith("[1] Tidal power - WikiTest")
    invalid = toolbox.dispatch("browser.find", "{}")
    assert invalid.is_error and "'pattern' is a required property" in invalid.content


def test_call_from_inside_an_event_loop(web, enc):
    browser = web.browser(enc=enc)

    async def main():
        first = await browser.acall("search", '{"query": "tidal energy"}')
        second = browser.call("open", '{"id": 2}')  # sync call while this loop runs
        return first, second

    first, second = asyncio.run(main())
    assert not first.is_error and second.content.startswith(
        "[1] Harbor Times — Coastal news (http://news.test/)"
    )


def test_wrap_lines():
    assert wrap_lines("short\n\nlines") == ["short", "", "lines"]
    long = " ".join(["word"] * 40)
    assert all(len(line) <= 80 for line in wrap_lines(long)) and " ".join(wrap_lines(long)) == long
    assert wrap_lines("x" * 170) == ["x" * 80, "x" * 80, "x" * 10]
