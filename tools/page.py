"""HTML to the readable text the browser shows, with links numbered in the gpt-oss format.

Parsing is lexbor's (through ``selectolax``: a fast, standards-following HTML5 parser that copes
with broken markup, any encoding already decoded, and megabyte pages in milliseconds). On the
parsed tree this module only decides layout: scripts, styles and other invisible parts go; each
link becomes ``【id†text】`` (``【id†text†domain】`` when it leaves the page's site), images with
alt text become ``[Image: alt]``, headings ``# ...``, list items ``* ...``, table rows
``cell | cell``, and block elements start new lines.

Hostile pages are bounded three ways. Size: the fetch cuts a body at its byte cap. Depth: lexbor
takes time quadratic in the nesting depth (5 MB of ``<div>`` would take tens of minutes), so
``limit_depth`` first drops the tags nested deeper than ``MAX_DEPTH`` (512, the depth at which
Chromium's parser stops nesting too), keeping their text. Time: ``html_to_text_bounded`` runs the
conversion in a separate worker process (this file run as a script: no package imports), which
is killed when it passes its time limit or when the awaiting call is cancelled, so nothing keeps
a core busy after the tool call has returned; the worker also sets its own CPU limit per page.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

__all__ = [
    "MAX_DEPTH",
    "PageText",
    "PageTooComplex",
    "domain_of",
    "html_to_text",
    "html_to_text_bounded",
    "limit_depth",
    "sanitize",
]

MAX_DEPTH = 512
"""Tags nested deeper than this are dropped before parsing (their text stays)."""

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


# -- bounds: depth before parsing, time in a worker process ------------------------------------

_TAG = re.compile(r"<!--|<(/?)([A-Za-z][A-Za-z0-9:-]*)[^<>]*>")
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "keygen", "basefont", "bgsound", "frame",
})  # fmt: skip
_OPTIONAL_END = frozenset({
    "p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot", "option", "optgroup",
    "colgroup", "rb", "rt", "rtc", "rp",
})  # fmt: skip
"""Elements the parser closes by itself when a sibling starts: they do not nest by repetition."""
_RAW_TEXT = {
    name: re.compile(f"</{name}", re.IGNORECASE)
    for name in (
        "script",
        "style",
        "textarea",
        "title",
        "xmp",
        "iframe",
        "noembed",
        "noframes",
        "noscript",
        "plaintext",
    )
}
"""Elements whose content is text up to their end tag (found by these patterns)."""


def limit_depth(html: str, max_depth: int = MAX_DEPTH) -> str:
    """``html`` without the start and end tags nested deeper than ``max_depth`` (text kept).

    A linear scan that counts elements which nest (not void elements, nor those whose end tag
    is optional); raw-text elements (``script``, ``style`` ...) are skipped whole.
    """
    if html.count("<") <= max_depth:
        return html
    out: list[str] = []
    depth = 0
    kept = pos = 0
    for match in _TAG.finditer(html):
        if match.start() < pos:
            continue  # inside a raw-text element skipped below
        closing, name = match.group(1), match.group(2)
        if name is None:  # a comment: skip to its end (found once, so the scan stays linear)
            end = html.find("-->", match.end())
            if end < 0:
                break
            pos = end + 3
            continue
        name = name.lower()
        if name in _VOID or name in _OPTIONAL_END:
            continue
        if closing:
            if depth > max_depth:
                out.append(html[kept : match.start()])
                kept = match.end()
            depth = max(depth - 1, 0)
            continue
        if name in _RAW_TEXT:
            if name == "plaintext":
                break
            raw_end = _RAW_TEXT[name].search(html, match.end())
            pos = len(html) if raw_end is None else raw_end.start()
            continue
        depth += 1  # "<div/>" opens a div too: HTML ignores the slash on ordinary elements
        if depth > max_depth:
            out.append(html[kept : match.start()])
            kept = match.end()
    if not out:
        return html
    out.append(html[kept:])
    return "".join(out)


class PageTooComplex(Exception):
    """The page could not be turned into text within its limits (the worker was stopped)."""


class _Worker:
    """A process that turns pages into text: requests and answers are length-prefixed JSON.

    ``-P`` keeps this file's folder (and the current one) off the worker's ``sys.path``, so no
    module of ours or the user's shadows the standard library there.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._ready = False  # the worker says so once it has imported (not counted in a page's time)

    def convert(self, html: str, url: str, max_depth: int, timeout: float) -> PageText:
        """The page's text, or ``PageTooComplex`` when ``timeout`` passes or the worker dies."""
        assert self.process.stdin is not None
        request = json.dumps({"html": html, "url": url, "max_depth": max_depth, "cpu": timeout}).encode()
        try:
            if not self._ready:
                self._read(1, time.monotonic() + _START_TIMEOUT)
                self._ready = True
            deadline = time.monotonic() + timeout
            self.process.stdin.write(len(request).to_bytes(8, "big") + request)
            self.process.stdin.flush()
            size = int.from_bytes(self._read(8, deadline), "big")
            answer = json.loads(self._read(size, deadline))
        except TimeoutError:
            self.close()
            if not self._ready:
                raise RuntimeError(f"the HTML worker did not start within {_START_TIMEOUT:g} s") from None
            raise PageTooComplex(f"turning it into text took longer than {timeout:g} s") from None
        except (OSError, EOFError, ValueError):  # a broken pipe or EOF: the worker died or was stopped
            self.close()
            status = self.process.returncode
            if status is not None and status > 0:  # it could not even start: not the page's fault
                raise RuntimeError(
                    f"the HTML worker ({sys.executable} -P {os.path.abspath(__file__)} --worker) "
                    f"exited with status {status}"
                ) from None
            raise PageTooComplex(f"the HTML worker was stopped (status {status})") from None
        if "error" in answer:  # a bug in the conversion: it propagates, the worker stays
            raise RuntimeError(f"converting the page to text failed: {answer['error']}")
        return PageText(**answer)

    def _read(self, size: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        poller = select.poll()  # not select(): a busy server's descriptors may be past FD_SETSIZE
        poller.register(fd, select.POLLIN)
        chunks: list[bytes] = []
        while size > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError
            chunk = os.read(fd, min(size, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def stop(self) -> None:
        """Kill the worker (safe from any thread: a thread reading its answer sees EOF)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """Stop the worker and close its pipes (only where nobody is reading them)."""
        self.stop()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


_START_TIMEOUT = 60.0
"""Seconds a new worker may take to start (imports on a loaded machine); not a page's time."""
_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()
_MAX_IDLE = 2
_ATEXIT = False


def _checkout() -> _Worker:
    global _ATEXIT
    with _IDLE_LOCK:
        while _IDLE:
            worker = _IDLE.pop()
            if worker.alive:
                return worker
        if not _ATEXIT:
            atexit.register(close_workers)
            _ATEXIT = True
    return _Worker()


def _checkin(worker: _Worker) -> None:
    with _IDLE_LOCK:
        if worker.alive and len(_IDLE) < _MAX_IDLE:
            _IDLE.append(worker)
            return
    worker.close()


def close_workers() -> None:
    """Stop the idle page workers (they also exit when this process does)."""
    with _IDLE_LOCK:
        workers, _IDLE[:] = list(_IDLE), []
    for worker in workers:
        worker.close()


def worker_pids() -> list[int]:
    """Process ids of the idle page workers (for tests and diagnostics)."""
    with _IDLE_LOCK:
        return [w.process.pid for w in _IDLE if w.alive]


async def html_to_text_bounded(
    html: str, url: str = "", *, timeout: float = 10.0, max_depth: int = MAX_DEPTH
) -> PageText:
    """``html_to_text`` of ``limit_depth(html)`` in a worker process, within ``timeout`` seconds.

    Raises ``PageTooComplex`` past the limit. Cancelling the awaiting task stops the worker too.
    Where no process can be started (no ``sys.executable``), it converts in a thread, with the
    depth limit but without the time limit.
    """
    from gptoss_agent.tools.base import call_in_thread
    from gptoss_agent.tools.text import clean

    try:
        worker = _checkout()
    except OSError:
        return await call_in_thread(lambda: html_to_text(limit_depth(html, max_depth), url))
    try:
        page = await call_in_thread(worker.convert, clean(html), url, max_depth, timeout)
    except BaseException:
        worker.stop()  # a cancelled call: the thread waiting on it returns at once
        raise
    _checkin(worker)
    return page


def _serve() -> None:
    """The worker's loop: read a request, answer it, until stdin closes (the parent is gone)."""
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the agent, which stops us
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(b"R")  # ready: imports done
    stdout.flush()
    while header := stdin.read(8):
        request = json.loads(stdin.read(int.from_bytes(header, "big")))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent = usage.ru_utime + usage.ru_stime
        # the kernel stops this process if the parent cannot (SIGXCPU)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (int(spent + request["cpu"]) + 2, hard))
        try:
            html = limit_depth(request["html"], request["max_depth"])
            answer: dict[str, Any] = asdict(html_to_text(html, request["url"]))
        except Exception as e:  # a bug: the parent raises it
            answer = {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(answer).encode()
        stdout.write(len(data).to_bytes(8, "big") + data)
        stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _serve()
