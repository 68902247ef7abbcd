"""Hostile pages against the real browser: real HTTP servers on 127.0.0.1 serving compression
bombs, pathological HTML, broken charsets; and the address checks' embedded-IPv4 forms."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from gptoss_agent.tools import Browser, Toolbox
from gptoss_agent.tools.fetch import BlockedURL, FetchConfig, FetchError, check_url, fetch, is_public_address
from gptoss_agent.tools.page import MAX_DEPTH, html_to_text, limit_depth
from websim import Request, Response, Server, big_page

ZEROS = 64 * 2**20


def _gzip_stream(size: int) -> bytes:
    """gzip of ``size`` zero bytes, compressed a MiB at a time (never held whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(2**20)
    out = [packer.compress(block) for _ in range(size // 2**20)]
    return b"".join(out) + packer.flush()


@pytest.fixture(scope="module")
def bombs():
    inner = _gzip_stream(ZEROS)  # 64 MiB of zeros in ~64 kB
    twice = gzip.compress(inner, 9)
    return {"/bomb2": (twice, "gzip, gzip"), "/bomb3": (gzip.compress(twice, 9), "gzip,gzip, gzip")}


@pytest.fixture(scope="module")
def site(bombs):
    page = "<html><body><p>" + "Tidal power, gently compressed. " * 2000 + "</p></body></html>"
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # "deflate" as some servers send it
    raw_deflate = packer.compress(page.encode()) + packer.flush()

    def handler(request: Request) -> Response:
        html = {"Content-Type": "text/html; charset=utf-8"}
        if request.path in bombs:
            body, encoding = bombs[request.path]
            return Response(200, body, {**html, "Content-Encoding": encoding})
        if request.path == "/gzip":
            return Response(200, gzip.compress(page.encode()), {**html, "Content-Encoding": "gzip"})
        if request.path == "/gzip2":
            body = gzip.compress(gzip.compress(page.encode()))
            return Response(200, body, {**html, "Content-Encoding": "gzip, gzip"})
        if request.path == "/deflate":
            return Response(200, zlib.compress(page.encode()), {**html, "Content-Encoding": "deflate"})
        if request.path == "/raw-deflate":
            return Response(200, raw_deflate, {**html, "Content-Encoding": "deflate"})
        if request.path == "/members":  # two gzip members back to back, then padding
            body = gzip.compress(page[:1000].encode()) + gzip.compress(page[1000:].encode()) + b"\0" * 8
            return Response(200, body, {**html, "Content-Encoding": "gzip"})
        if request.path.startswith("/nested/"):  # /nested/LEVELS
            levels = int(request.path.rsplit("/", 1)[1])
            body = "<html><body>" + "<div>" * levels + "deep inside" + "</div>" * levels + "</body></html>"
            return Response(200, body.encode(), html)
        if request.path in CHARSET_PAGES:
            body, content_type = CHARSET_PAGES[request.path]
            return Response(200, body, {"Content-Type": content_type})
        if request.path == "/br":
            return Response(200, b"\x1b\x00\x00", {**html, "Content-Encoding": "br"})
        if request.path == "/four":
            body = page.encode()
            for _ in range(4):
                body = gzip.compress(body)
            return Response(200, body, {**html, "Content-Encoding": "gzip, gzip, gzip, gzip"})
        if request.path == "/corrupt":
            body = b"\x1f\x8b\x09" + gzip.compress(page.encode())[3:]  # not deflate's method number
            return Response(200, body, {**html, "Content-Encoding": "gzip"})
        return Response(404, b"no")

    with Server(handler) as server:
        server.page = page
        yield server


def get(site: Server, path: str, **config) -> object:
    options = {"allow_private_urls": True, "max_bytes": 5_000_000, **config}
    return asyncio.run(fetch(site.url + path, FetchConfig(**options)))


@pytest.mark.parametrize("path", ["/bomb2", "/bomb3"])
def test_stacked_compression_bomb_is_refused_within_the_byte_budget(site, bombs, path):
    assert len(bombs[path][0]) < 20_000  # what crosses the wire is small...
    tracemalloc.start()
    try:
        with pytest.raises(
            FetchError, match=r"compression bomb: [\d,]+ bytes expand past the 1,000,000-byte"
        ):
            get(site, path, max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ...and 64 MiB behind it; decoding stays within the cap plus a few 64 kB chunks
    assert peak < 8_000_000, f"{peak:,} bytes allocated"


@pytest.mark.parametrize("path", ["/gzip", "/gzip2", "/deflate", "/raw-deflate", "/members"])
def test_content_encodings_still_decode(site, path):
    doc = get(site, path)
    assert doc.text == site.page and not doc.truncated


def test_a_compressed_page_over_the_cap_is_cut_like_any_other(site):
    doc = get(site, "/gzip2", max_bytes=10_000)
    assert doc.truncated and site.page.startswith(doc.text) and len(doc.text) == 10_000


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/br", r"compressed with `br`, which the browser cannot decode"),
        ("/four", r"compressed 4 times over \(Content-Encoding: gzip, gzip, gzip, gzip\)"),
        ("/corrupt", r"sent a corrupt compressed body"),
    ],
)
def test_encodings_it_cannot_decode_are_one_sentence(site, path, message):
    with pytest.raises(FetchError, match=message):
        get(site, path)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a00:5::1", False),  # 6to4 of 10.0.0.5
        ("2002:a9fe:a9fe::", False),  # 6to4 of the metadata address
        ("2002:5db8:d822::1", True),  # 6to4 of a public address
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::5db8:d822", True),
        ("64:ff9b:1::a00:5", False),  # local-use NAT64
        ("::ffff:192.0.0.8", False),
        ("192.0.0.8", False),
        ("192.0.0.1", False),
        ("192.0.1.1", True),
    ],
)
def test_embedded_and_protocol_addresses(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize("host", ["[2002:7f00:1::]", "[64:ff9b::7f00:1]", "192.0.0.8", "[2002:c0a8:101::]"])
def test_check_url_refuses_embedded_private_addresses(host):
    with pytest.raises(BlockedURL, match="internal address"):
        check_url(f"http://{host}/")
    with pytest.raises(BlockedURL):
        check_url("http://sneaky.test/", resolver=lambda name, port: [host.strip("[]")])


# -- pathological HTML ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _page_workers() -> list[int]:
    """Our child processes that convert pages (``page.py --worker``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if parent == os.getpid() and b"--worker" in command and b"page.py" in command:
            pids.append(int(entry.name))
    return pids


def _call_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("tool-call")}


def _assert_nothing_left_running(before: set[threading.Thread]) -> None:
    """No tool-call thread started since ``before`` alive, no page worker using the CPU."""
    deadline = time.monotonic() + 5
    while _call_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in _call_threads() - before]
    workers = {pid: _cpu_seconds(pid) for pid in _page_workers()}
    time.sleep(1.0)
    for pid, cpu in workers.items():
        now = _cpu_seconds(pid)
        assert now is None or cpu is None or now - cpu < 0.2, f"page worker {pid} still busy"


def _open(browser: Browser, url: str) -> tuple[str, bool, float]:
    started = time.monotonic()
    out = browser.call("open", json.dumps({"id": url}))
    return out.content, out.is_error, time.monotonic() - started


def test_five_megabytes_of_nested_divs_open_quickly_and_leave_nothing_running(site, enc):
    config = FetchConfig(parse_timeout=300)  # the depth limit is under test here, not the time limit
    browser = Browser(allow_private_urls=True, encoding=enc, fetch_config=config)
    before = _call_threads()
    text, is_error, seconds = _open(browser, f"{site.url}/nested/450000")  # 5 MB; unbounded: ~30 min
    assert not is_error and "deep inside" in text, text[:500]
    assert seconds < 120  # ~4 s here, ~30 s with the machine loaded 7 times over
    _assert_nothing_left_running(before)


def test_a_page_past_its_time_limit_stops_its_worker(site, enc):
    browser = Browser(
        allow_private_urls=True, encoding=enc, fetch_config=FetchConfig(parse_timeout=0.5, max_depth=10**9)
    )
    before = _call_threads()
    text, is_error, seconds = _open(browser, f"{site.url}/nested/150000")  # ~30 s of parsing unbounded
    assert is_error and "too complex to show: turning it into text took longer than 0.5 s" in text
    assert seconds < 15
    _assert_nothing_left_running(before)
    fresh = Browser(allow_private_urls=True, encoding=enc)
    text, is_error, _ = _open(fresh, f"{site.url}/gzip")  # a fresh worker for the next page
    assert not is_error and "Tidal power, gently compressed." in text


def test_a_call_cancelled_by_the_toolbox_stops_its_worker(site, enc):
    config = FetchConfig(parse_timeout=120, max_depth=10**9)
    box = Toolbox([Browser(allow_private_urls=True, encoding=enc, fetch_config=config)], timeout=1.0)
    before = _call_threads()
    out = box.dispatch("browser.open", json.dumps({"id": f"{site.url}/nested/150000"}))
    assert out.is_error and "did not finish within 1 seconds" in out.content
    _assert_nothing_left_running(before)


def test_limit_depth_drops_only_the_tags_too_deep():
    deep = "<div>" * 2000 + "deep inside" + "</div>" * 2000 + "<p>after</p>"
    limited = limit_depth(deep)
    assert limited.count("<div>") == MAX_DEPTH and limited.count("</div>") == MAX_DEPTH
    assert html_to_text(limited).text == "deep inside\n\nafter"
    # void, optional-end, raw-text elements and comments are not nesting
    flat = (
        "<p>a<br><li>b<img src=x>" * 600
        + "<script>"
        + "<div>" * 900
        + "</script><!--"
        + "<div>" * 900
        + "-->"
    )
    assert limit_depth(flat) is flat
    assert limit_depth("<!--" * 100_000 + "<div>" * 600).count("<div>") == 600  # an unclosed comment
    page = big_page()
    assert limit_depth(page) is page
    # a raw-text end tag is found in the page itself ("İ".lower() is two characters)
    mixed = "İ" * 50 + "<SCRIPT>" + "<div>" * 900 + "</Script>" + "<div>" * 600
    assert limit_depth(mixed).count("<div>") == 900 + MAX_DEPTH


# -- charsets ---------------------------------------------------------------------------------------

ZURICH = "<html><body><p>The café in Zürich charges 5 € for a naïve crème brûlée; señor Müller agrees.</p></body></html>"
FRENCH = "Le café de la gare, où l'on mange très bien, près du musée."
CHARSET_PAGES = {
    # declared UTF-8, one stray byte
    "/utf8-bad": (ZURICH.encode()[:40] + b"\xe9" + ZURICH.encode()[40:], "text/html; charset=utf-8"),
    "/latin1": (FRENCH.encode("latin-1"), "text/plain"),  # undeclared
    "/latin1.html": (f"<html><body><p>{FRENCH}</p></body></html>".encode("latin-1"), "text/html"),
    "/resume": ("Résumé".encode("latin-1"), "text/plain"),  # too short for any statistics
    "/quotes": ("It\x92s a \x93quote\x94 \x96 here".encode("latin-1"), "text/plain; charset=iso-8859-1"),
    "/mislabelled": (((FRENCH + " ") * 5).encode("latin-1"), "text/plain; charset=utf-8"),
    "/polish": ("Zażółć gęślą jaźń, czyli polski tekst.".encode("cp1250"), "text/plain"),
}


def test_a_utf8_page_with_a_few_bad_bytes_keeps_its_charset(site):
    doc = get(site, "/utf8-bad")
    # it was guessed as cp932: "naﾃｯve crﾃｨme brﾃｻlﾃｩe"
    assert doc.charset == "utf-8" and doc.text.count("\ufffd") == 1
    assert doc.text.replace("\ufffd", "") == ZURICH


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/latin1", FRENCH),
        ("/latin1.html", FRENCH),
        ("/resume", "Résumé"),
        ("/quotes", "It’s a “quote” – here"),  # what the web calls iso-8859-1 is windows-1252
        ("/mislabelled", FRENCH),  # "utf-8" that fits none of its accents gives way to a guess
        ("/polish", "Zażółć gęślą jaźń"),
    ],
)
def test_latin1_and_other_single_byte_pages_are_not_misdetected(site, path, text):
    assert text in get(site, path).text


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096])
def test_gzip_members_and_padding_split_anywhere(chunk):
    from gptoss_agent.tools.fetch import _CHUNK, _Inflate, _pull

    text = b"Tidal power, member by member. " * 500
    body = gzip.compress(text[:5000]) + gzip.compress(text[5000:]) + b"\0" * 5
    for stack in (["gzip"], ["gzip", "gzip"]):
        wire = body if len(stack) == 1 else gzip.compress(body)
        layers = [_Inflate(name) for name in stack]
        out = []
        for i in range(0, len(wire), chunk):
            layers[0].push(wire[i : i + chunk])
            while data := _pull(layers, len(layers) - 1, _CHUNK):
                out.append(data)
        assert b"".join(out) == text


def test_without_a_python_to_start_pages_convert_in_process(monkeypatch):
    from gptoss_agent.tools import page

    monkeypatch.setattr(page.sys, "executable", "/nonexistent/python")
    page.close_workers()
    deep = "<html><body>" + "<div>" * 5000 + "deep inside" + "</div>" * 5000 + "</body></html>"
    converted = asyncio.run(page.html_to_text_bounded(deep, "http://example.test/"))
    assert converted.text == "deep inside"
