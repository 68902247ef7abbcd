"""HTML to the readable text the browser shows, with links numbered in the gpt-oss format.

Parsing is lexbor's (through ``selectolax``: a fast, standards-following HTML5 parser that copes
with broken markup, any encoding already decoded, and megabyte pages in milliseconds). On the
parsed tree this module only decides layout: scripts, styles and other invisible parts go; each
link becomes ``【id†text】`` (``【id†text†domain】`` when it leaves the page's site), images with
alt text become ``[Image: alt]``, headings ``# ...``, list items ``* ...``, table rows
``cell | cell``, and block elements start new lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

__all__ = ["PageText", "domain_of", "html_to_text", "sanitize"]

_BR = "\ue000"  # line break
_PARA = "\ue001"  # paragraph break (blank line)
_CELL = "\ue002"  # table cell separator
_PRE_SPACE = "\ue003"  # a space inside <pre> that must survive whitespace collapsing
_PRE_BREAK = "\ue004"  # a line break inside <pre> (blank lines kept)

_INVISIBLE = (
    "script, style, noscript, template, svg, math, iframe, object, embed, canvas, head, "
    "select, [hidden], [aria-hidden=true], [style*='display:none'], [style*='display: none']"
)
_PARAGRAPHS = (
    "p, table, ul, ol, dl, blockquote, figure, figcaption, article, section, header, footer, "
    "nav, aside, main, form, fieldset, details, address, hr"
)
_LINES = "div, tr, dt, dd, caption, summary, label, option, legend"
_BR_RUN = re.compile(f"{_BR}{{2,}}")
_PARA_RUN = re.compile(f"{_PARA}+")
_CELL_END = re.compile(f"{_CELL}+\n")
_SPECIAL = {"【": "〖", "】": "〗", "\u200b": "", "\ufeff": "", "\u00ad": ""}


def _replace_special(text: str) -> str:
    for char, replacement in _SPECIAL.items():
        if char in text:
            text = text.replace(char, replacement)
    return text


@dataclass(frozen=True, kw_only=True)
class PageText:
    """A page turned into text: its title, the text, and link id -> absolute URL."""

    title: str
    text: str
    links: list[str] = field(default_factory=list)
    """``links[i]`` is the URL of ``【i†...】``."""


def domain_of(url: str) -> str:
    """The ``host[:port]`` of a URL ("" if it has none)."""
    try:
        return urlsplit(url if "//" in url else "//" + url).netloc.rsplit("@", 1)[-1]
    except ValueError:
        return ""


def sanitize(text: str) -> str:
    """Collapse whitespace and replace the characters the link format reserves (【】†)."""
    return " ".join(_replace_special(text).split()).replace("†", "‡")


def html_to_text(html: str, url: str = "") -> PageText:
    """Convert an HTML document to browser text; relative links resolve against ``url``."""
    tree = LexborHTMLParser(_replace_special(html))
    title_node = tree.css_first("title")
    title = sanitize(title_node.text()) if title_node is not None else ""
    base = url
    if (base_node := tree.css_first("base[href]")) is not None:
        base = urljoin(url, base_node.attributes.get("href") or "")

    root = tree.body or tree.root
    if root is None:
        return PageText(title=title or domain_of(url), text="")
    for node in root.css(_INVISIBLE):
        node.decompose()
    links = _replace_links(root, base, domain_of(url))
    for node in root.css("img"):
        alt = sanitize(node.attributes.get("alt") or node.attributes.get("title") or "")
        node.replace_with(f"[Image: {alt}]" if alt else "")
    for node in root.css("pre"):
        code = node.text(deep=True).replace("\r\n", "\n").strip("\n")
        code = code.replace("\t", "    ").replace(" ", _PRE_SPACE).replace("\n", _PRE_BREAK)
        node.replace_with(_PARA + code + _PARA)
    for node in root.css("br"):
        node.replace_with(_BR)
    for node in root.css("h1, h2, h3, h4, h5, h6"):
        node.insert_before(_PARA + "#" * int((node.tag or "h1")[1]) + " ")
        node.insert_after(_PARA)
    for node in root.css("li"):
        node.insert_before(_BR + "* ")
        node.insert_after(_BR)
    for node in root.css("td, th"):
        node.insert_after(_CELL)
    for node in root.css(_PARAGRAPHS):
        node.insert_before(_PARA)
        node.insert_after(_PARA)
    for node in root.css(_LINES):
        node.insert_before(_BR)
        node.insert_after(_BR)
    return PageText(title=title or domain_of(url), text=_layout(root.text(deep=True)), links=links)


def _replace_links(root: LexborNode, base: str, site: str) -> list[str]:
    links: list[str] = []
    ids: dict[str, int] = {}
    seen: dict[str, tuple[str, str]] = {}
    origin = base.split("/", 3)[:3]
    origin_url = "/".join(origin) if len(origin) == 3 and origin[0] in ("http:", "https:") else ""
    base_domain = domain_of(base)
    for node in root.css("a[href]"):
        href = (node.attributes.get("href") or "").strip()
        text = sanitize(node.text(deep=True))
        if not text:
            alt = next((img.attributes.get("alt") for img in node.css("img[alt]")), None)
            text = sanitize(alt or "")
        if (
            not text
            or href.lower().startswith(("javascript:", "mailto:", "tel:", "data:"))
            or href.startswith("#")
        ):
            node.replace_with(text)
            continue
        if (resolved := seen.get(href)) is None:
            resolved = seen[href] = _resolve(base, origin_url, base_domain, href)
        target, domain = resolved
        if not domain or not target.lower().startswith(("http://", "https://")):
            node.replace_with(text)
            continue
        if (link_id := ids.get(target)) is None:
            link_id = ids[target] = len(links)
            links.append(target)
        suffix = "" if domain == site else f"†{domain}"
        node.replace_with(f"【{link_id}†{text}{suffix}】")
    return links


def _resolve(base: str, origin: str, base_domain: str, href: str) -> tuple[str, str]:
    """``(absolute URL without fragment, its domain)``; plain absolute and root-relative links
    skip ``urljoin`` (the common case on big pages), anything unusual goes through it."""
    href = href.split("#", 1)[0]
    if "/." not in href and "\\" not in href and not any(c.isspace() for c in href):
        if href.startswith(("http://", "https://")) and "?" not in (netloc := href.split("/", 3)[2]):
            return href, netloc.rsplit("@", 1)[-1]
        if origin and href.startswith("/") and not href.startswith("//"):
            return origin + href, base_domain
    target = urljoin(base, href)
    return target, domain_of(target)


def _layout(raw: str) -> str:
    """Collapse whitespace, then turn the break and cell marks into newlines and `` | ``.

    Plain string operations and patterns that start with a mark keep this linear and fast.
    """
    text = " ".join(raw.split())  # every whitespace run (NBSP too) becomes one space
    for mark in (_BR, _PARA, _CELL):
        text = text.replace(" " + mark, mark).replace(mark + " ", mark)
    text = _BR_RUN.sub(_BR, text)
    text = text.replace(_BR + _PARA, _PARA).replace(_PARA + _BR, _PARA)
    text = _PARA_RUN.sub("\n\n", text).replace(_BR, "\n")
    text = _CELL_END.sub("\n", text + "\n").strip("\n" + _CELL)
    return text.replace(_CELL, " | ").replace(_PRE_SPACE, " ").replace(_PRE_BREAK, "\n")
