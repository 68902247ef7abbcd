"""The browser's golden session checked against an independent statement of the format.

``golden/browser_session.txt`` is written by the code under test (``UPDATE_GOLDEN=1``) and
``test_browser.py`` holds the live output to it; this file holds the golden to the format of
gpt-oss's reference browser (openai/gpt-oss, ``gpt_oss/tools/simple_browser/simple_browser_tool.py``),
restated here as facts, so a regenerated golden cannot drift from what the model was trained on:

- every display starts ``[{cursor}] {title}``, then `` ({url})`` when the page has one;
- then ``**viewing lines [{first} - {last}] of {total - 1}**`` and an empty line;
- then the lines, each ``L{n}: `` with n counting up from ``first``; page text wrapped at 80 columns;
- links are ``【{id}†{text}】`` or ``【{id}†{text}†{domain}】``; find hits are ``# 【{i}†match at L{n}】``;
  no hit is ``No `find` results for pattern: `{pattern}```;
- the window is 1024 tokens by default; the model cites ``【{cursor}†L{start}(-L{end})?】``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gptoss_agent.tools import Browser

GOLDEN = Path(__file__).parent / "golden" / "browser_session.txt"

HEADER = re.compile(r"^=== browser\.(search|open|find) (\{.*\}) \((cursor=(\d+)|error)\)$")
TITLE = re.compile(r"^\[(\d+)\] (.+?)(?: \((\S[^()]*)\))?$")
SCROLLBAR = re.compile(r"^\*\*viewing lines \[(\d+) - (\d+)\] of (\d+)\*\*$")
NUMBERED = re.compile(r"^L(\d+): (.*)$")
LINK = re.compile(r"【\d+†[^†】]+(?:†[^†】]+)?】")
FIND_HIT = re.compile(r"^# 【\d+†match at L\d+】$")
WRAP_WIDTH = 80
VIEW_TOKENS = 1024
CITATION_FORM = "`【{cursor}†L{line_start}(-L{line_end})?】`"


def _displays() -> list[tuple[str, dict, int | None, list[str]]]:
    """(function, arguments, cursor or None for an error, lines) of each call in the golden."""
    out: list[tuple[str, dict, int | None, list[str]]] = []
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        head = HEADER.match(line)
        if head:
            cursor = int(head.group(4)) if head.group(4) is not None else None
            out.append((head.group(1), json.loads(head.group(2)), cursor, []))
        else:
            assert out, "the golden starts with a call header"
            out[-1][3].append(line)
    return out


def test_the_golden_covers_every_function_and_an_error():
    calls = _displays()
    assert {f for f, _, _, _ in calls} == {"search", "open", "find"}
    assert any(cursor is None for _, _, cursor, _ in calls)
    assert len(calls) >= 8


def test_every_display_has_the_reference_header_scrollbar_and_numbering():
    cursors = []
    for function, args, cursor, lines in _displays():
        if cursor is None:
            continue
        while lines and lines[-1] == "":
            lines.pop()
        title = TITLE.match(lines[0])
        assert title and int(title.group(1)) == cursor, lines[0]
        if function != "search":
            assert title.group(3), f"{lines[0]!r}: a page display names its URL in parentheses"
        bar = SCROLLBAR.match(lines[1])
        assert bar and lines[2] == "", lines[:3]
        first, last, total = (int(g) for g in bar.groups())
        # from the asked line; a find hit's link opens at its match (as the reference does)
        if "loc" in args:
            assert first == args["loc"]
        assert first <= last <= total
        body = lines[3:]
        assert len(body) == last - first + 1
        for offset, line in enumerate(body):
            numbered = NUMBERED.match(line)
            assert numbered and int(numbered.group(1)) == first + offset, line
            assert len(numbered.group(2)) <= WRAP_WIDTH, line
        cursors.append(cursor)
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)  # each display a new cursor


def test_links_and_find_results_have_the_reference_forms():
    links = 0
    for function, args, cursor, lines in _displays():
        if cursor is None:
            continue
        for line in lines[3:]:
            text = NUMBERED.match(line).group(2) if NUMBERED.match(line) else ""
            if function == "find" and "【" in text:
                assert FIND_HIT.match(text), text
                continue
            spans = re.findall(r"【[^】]*】", text)
            for span in spans:
                assert LINK.fullmatch(span), span
            links += len(spans)
        if function == "find" and not any("†match at L" in line for line in lines):
            assert lines[3] == f"L0: No `find` results for pattern: `{args['pattern']}`"
    assert links >= 5


def test_window_size_and_citation_form_are_the_references():
    browser = Browser(search="duckduckgo")
    assert browser.view_tokens == VIEW_TOKENS
    assert CITATION_FORM in browser.spec.description
