"""The text policy: what becomes of text that is not valid Unicode or would act on a terminal."""

from __future__ import annotations

import json

import pytest
from gptoss_agent.tools.text import clean, clean_json, for_terminal


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("plain ascii", "plain ascii"),
        ("café 東京 😀", "café 東京 😀"),
        ("a\ud800b", "a\ufffdb"),  # unpaired high
        ("a\udfffb", "a\ufffdb"),  # unpaired low
        ("\udcff", "\ufffd"),  # a bad byte of sys.argv (surrogateescape)
        ("\ud83d\ude00", "😀"),  # a pair, as a JSON escape leaves it in a str literal
        ("\ude00\ud83d", "\ufffd\ufffd"),  # the wrong order pairs nothing
    ],
)
def test_clean(text, cleaned):
    assert clean(text) == cleaned
    clean(text).encode("utf-8")


def test_clean_json_reaches_every_string():
    value = {"k\ud800": ["\udfff", ("x\ud800",), {"n": 1, "f": 1.5, "none": None, "ok": True}]}
    cleaned = clean_json(value)
    assert cleaned == {"k\ufffd": ["\ufffd", ("x\ufffd",), {"n": 1, "f": 1.5, "none": None, "ok": True}]}
    json.dumps(cleaned, ensure_ascii=False).encode("utf-8")


def test_for_terminal_shows_every_control_but_newline_and_tab():
    controls = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)]))
    shown = for_terminal(controls)
    assert "\t" in shown and "\n" in shown
    assert [c for c in shown if c not in "\t\n" and (c < " " or "\x7f" <= c < "\xa0")] == []
    assert for_terminal("\x1b]0;title\x07\x1b[2J\x9b31m\r\n\rx") == "\\x1b]0;title\\a\\x1b[2J\\x9b31m\n\\rx"
    assert for_terminal("ordinary text, café\tand tabs\n") == "ordinary text, café\tand tabs\n"
    assert for_terminal("\ud800") == "\ufffd"
