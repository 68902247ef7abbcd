"""One policy for text that comes from outside: web pages, tool results, the model, the user.

Python strings may hold what no file or terminal accepts: unpaired surrogates (``"\\ud800"``
from a JSON escape, or the ``surrogateescape`` form of a bad byte in ``sys.argv``) cannot be
written as UTF-8, and control characters (``ESC [ 2 J``, OSC 8 links) act on a terminal instead
of showing. The rules, applied where text enters and again by every writer:

- ``clean(text)``: a surrogate pair becomes the character it encodes, an unpaired surrogate
  becomes U+FFFD. The result always encodes as UTF-8.
- Bytes are decoded with ``errors="replace"``: each invalid sequence becomes U+FFFD (the
  browser's ``decode_text`` picks the charset; the harmony parser decodes the model's tokens).
- ``clean_json(value)``: ``clean`` applied to every string (keys too) of a JSON-ready value.
- ``json_text(value)``: one JSON document that always encodes as UTF-8 and carries no raw
  control character (JSON escapes C0 itself; DEL and C1 become ``\\u0080``-style escapes), so
  ``--jsonl`` printed to a terminal cannot act on it either.
- ``for_terminal(text)``: ``clean``, then C0 and C1 controls, DEL and ESC shown as visible escapes
  (``\\x1b``, ``\\x9b``, ``\\r``); ``\\n`` and ``\\t`` stay, ``\\r\\n`` becomes ``\\n``.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["clean", "clean_json", "for_terminal", "json_text"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {0x0D: "\\r", 0x08: "\\b", 0x0B: "\\v", 0x0C: "\\f", 0x07: "\\a", 0x00: "\\0"}
_TERMINAL = {
    code: _NAMED.get(code, f"\\x{code:02x}")
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))
    if code not in (0x09, 0x0A)
}
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_JSON_CONTROLS = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}


def clean(text: str) -> str:
    """``text`` with surrogate pairs joined and unpaired surrogates replaced by U+FFFD."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean_json(value: Any) -> Any:
    """A JSON-ready value (dicts, lists, tuples, strings, numbers) with every string ``clean``."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clean_json(v) for v in value)
    return value


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON (non-ASCII kept readable), every string ``clean``, DEL and C1 escaped."""
    return json.dumps(clean_json(value), ensure_ascii=False, indent=indent).translate(_JSON_CONTROLS)


def for_terminal(text: str) -> str:
    """Untrusted text made safe to print: ``clean``, and every control character but newline
    and tab written as a visible escape, so nothing it holds can act on the terminal."""
    text = clean(text)
    if _CONTROL.search(text) is None:
        return text
    return text.replace("\r\n", "\n").translate(_TERMINAL)
