"""HTML to browser text: links, layout, invisible parts, non-ASCII, broken markup."""

from __future__ import annotations

from gptoss_agent.tools.page import domain_of, html_to_text, sanitize
from websim import big_page

URL = "https://example.com/dir/index.html"


def test_links_are_numbered_resolved_and_deduplicated():
    page = html_to_text(
        """<title> Links  </title><body>
        <a href="a.html">Relative</a> <a href="/root#part">Rooted</a> <a href="https://other.org/x">Away</a>
        <a href="a.html">Relative again</a> <a href="#top">Anchor only</a> <a href="mailto:a@b.c">Mail</a>
        <a href="javascript:void(0)">Script</a> <a href="//cdn.example.net/lib">Protocol-relative</a>
        <a href="/empty"></a> <a href="/pic"><img src="p.png" alt="A picture"></a> <a href="/t">Dagger † and 【brackets】</a>
        </body>""",
        URL,
    )
    assert page.title == "Links"
    assert page.links == [
        "https://example.com/dir/a.html",
        "https://example.com/root",
        "https://other.org/x",
        "https://cdn.example.net/lib",
        "https://example.com/pic",
        "https://example.com/t",
    ]
    assert page.text == (
        "【0†Relative】 【1†Rooted】 【2†Away†other.org】 【0†Relative again】 Anchor only Mail Script "
        "【3†Protocol-relative†cdn.example.net】 【4†A picture】 【5†Dagger ‡ and 〖brackets〗】"
    )


def test_base_href_is_honoured():
    page = html_to_text(
        '<head><base href="https://docs.example.com/v2/"></head><a href="guide">Guide</a>', URL
    )
    assert page.links == ["https://docs.example.com/v2/guide"]
    assert page.text == "【0†Guide†docs.example.com】"


def test_layout_headings_lists_tables_pre_and_breaks():
    page = html_to_text(
        """<h1>Title</h1><p>First <b>bold</b>
        paragraph.<br>Same paragraph, new line.</p><h3>Sub</h3>
        <ul><li>one</li><li>two <i>items</i></li></ul><ol><li>first</li></ol>
        <table><caption>Prices</caption><tr><th>Item</th><th>€</th></tr><tr><td>Tea</td><td>2,50</td></tr></table>
        <pre>def f(x):
    return x  # keep indentation</pre><div>div one</div><div>div two</div><span>inline</span> tail""",
        URL,
    )
    assert page.text.split("\n") == [
        "# Title",
        "",
        "First bold paragraph.",
        "Same paragraph, new line.",
        "",
        "### Sub",
        "",
        "* one",
        "* two items",
        "",
        "* first",
        "",
        "Prices",
        "Item | €",
        "Tea | 2,50",
        "",
        "def f(x):",
        "    return x  # keep indentation",
        "",
        "div one",
        "div two",
        "inline tail",
    ]


def test_invisible_parts_are_dropped():
    page = html_to_text(
        """<html><head><title>T</title><style>p{}</style><script>document.write('<p>no</p>')</script></head>
        <body><noscript>Enable JS</noscript><template><p>tpl</p></template><svg><text>vector</text></svg>
        <p hidden>hidden</p><p aria-hidden="true">aria</p><div style="display: none">none</div>
        <select><option>opt</option></select><iframe src="x"></iframe><p>Visible <!-- comment --> text</p>
        <img src="tracker.gif"><img src="c.png" alt="Chart of tides"></body></html>""",
        URL,
    )
    assert page.text == "Visible text\n\n[Image: Chart of tides]"


def test_non_ascii_and_broken_markup():
    page = html_to_text(
        "<p>Zürich — 東京 — данные — 😀 — naïve café<p>unclosed <b>bold <i>both</b> italic? &amp; &lt;tag&gt; &nbsp;x",
        URL,
    )
    assert (
        page.text == "Zürich — 東京 — данные — 😀 — naïve café\n\nunclosed bold both italic? & <tag> x"
    )  # NBSP collapses like any space
    assert html_to_text("", URL).text == ""
    assert html_to_text("plain words", "").text == "plain words"
    assert html_to_text("<p>x</p>", URL).title == "example.com"  # no <title>: the domain


def test_huge_page_converts_fully():
    html = big_page()
    page = html_to_text(html, "http://news.test/huge")
    assert len(html) > 900_000
    assert page.text.count("## Section ") == html.count("<h2>Section ")
    assert "var s1" not in page.text and "Item | Count | Share" in page.text


def test_helpers():
    assert domain_of("https://user@Example.com:8443/path") == "Example.com:8443"
    assert domain_of("example.com/x") == "example.com"
    assert sanitize("  a \n b 【c】 † ") == "a b 〖c〗 ‡"
