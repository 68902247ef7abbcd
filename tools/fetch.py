"""Fetching web pages for the browser: httpx with limits, and a guard against reaching private networks.

``fetch(url, config)`` returns a ``Document`` (the final URL, its kind and its decoded text) or
raises ``FetchError`` with a message written for the model. Redirects are followed by hand so
that every hop passes the SSRF guard: a host name is resolved, every address it resolves to is
checked, and the request then goes to the checked address (the name stays in the ``Host``
header and the TLS server name), so a DNS answer cannot change between check and connect.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import ipaddress
import json
import re
import socket
import ssl
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from .base import ToolError
from .text import clean

__all__ = [
    "BlockedURL",
    "Document",
    "FetchConfig",
    "FetchError",
    "Resolver",
    "check_url",
    "fetch",
    "is_public_address",
    "shared_ssl_context",
    "system_resolver",
]

Resolver = Callable[[str, int], Sequence[str]]
"""``resolver(host, port) -> addresses``: the DNS seam (the default asks the system)."""

Kind = Literal["html", "text", "json", "pdf"]

_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_JSON_TYPES = {"application/json", "application/ld+json", "text/json"}
_TEXT_TYPES = {"application/xml", "application/javascript", "application/x-javascript", "application/rss+xml"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")
"""IETF protocol assignments (DS-Lite, NAT64 discovery...): never a web server."""


class FetchError(ToolError):
    """A page could not be fetched or shown; the message is for the model."""


class BlockedURL(FetchError):
    """The URL points at a loopback, private, link-local or otherwise internal address."""


@dataclass(frozen=True, kw_only=True)
class FetchConfig:
    """Limits and policy for fetching pages."""

    timeout: float = 20.0
    """Seconds for the whole fetch, redirects and body included."""
    connect_timeout: float = 10.0
    max_bytes: int = 5_000_000
    """Bodies longer than this are cut here (``Document.truncated``)."""
    max_redirects: int = 5
    user_agent: str = "Mozilla/5.0 (compatible; gptoss-agent/0.1; +https://github.com/openai/gpt-oss)"
    allow_private_urls: bool = False
    """Allow loopback, private and link-local addresses (tests against local servers)."""
    resolver: Resolver | None = None
    """DNS seam; None asks the system (``getaddrinfo``)."""
    transport: httpx.AsyncBaseTransport | None = None
    """Network seam (httpx transport); None opens real connections."""
    ssl_context: ssl.SSLContext | None = None
    """TLS trust for https pages (a company CA, say); None trusts the usual public CAs."""
    parse_timeout: float = 20.0
    """Seconds an HTML page may take to turn into text (in a worker process, stopped after)."""
    max_depth: int = 512
    """Tags nested deeper than this are dropped before an HTML page is parsed (text kept)."""


@dataclass(frozen=True, kw_only=True)
class Document:
    """A fetched resource, decoded to text."""

    url: str
    """The final URL, after redirects."""
    kind: Kind
    text: str
    """HTML source for ``html``; readable text otherwise (JSON pretty-printed, PDF extracted)."""
    content_type: str
    status: int
    charset: str | None = None
    truncated: bool = False


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client (building one costs tens of milliseconds)."""
    return httpx.create_ssl_context()


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True if the address is globally routable unicast: not loopback, private, link-local
    (cloud metadata lives at 169.254.169.254), unspecified, multicast or reserved, nor one of
    those embedded in an IPv6 address (IPv4-mapped, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64:
        ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # NAT64 embeds an IPv4 address
    if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None:
        ip = ip.sixtofour  # 6to4 relays reach the embedded IPv4 address
    if isinstance(ip, ipaddress.IPv4Address) and ip in _IETF_PROTOCOL:
        return False
    if ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return ip.is_global


def _host_and_port(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise FetchError(f"Invalid URL `{url}`: {e}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"Cannot open `{url}`: only http and https URLs are supported.")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise FetchError(f"Invalid URL `{url}`: it has no host.")
    return scheme, host, port or (443 if scheme == "https" else 80)


def check_url(url: str, *, allow_private: bool = False, resolver: Resolver | None = None) -> list[str]:
    """Resolve the URL's host and return its addresses, refusing internal ones.

    Raises ``BlockedURL`` when any address the host resolves to is not public (unless
    ``allow_private``), and ``FetchError`` for a malformed URL or a name that does not resolve.
    """
    _, host, port = _host_and_port(url)
    addresses = _literal_address(host)
    if addresses is None:
        if not allow_private and host in _METADATA_HOSTS:
            raise BlockedURL(_blocked_message(url, host))
        try:
            addresses = list((resolver or system_resolver)(host, port))
        except (OSError, UnicodeError) as e:
            raise FetchError(f"Cannot resolve host `{host}`: {e}.") from None
        if not addresses:
            raise FetchError(f"Cannot resolve host `{host}`: no addresses.")
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise BlockedURL(_blocked_message(url, address))
    return addresses


def _literal_address(host: str) -> list[str] | None:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return None


def _blocked_message(url: str, address: str) -> str:
    return (
        f"Refused to open `{url}`: it points to `{address}`, a loopback, private, link-local or "
        "otherwise internal address. The browser only opens public web addresses."
    )


def _pinned_request(
    url: str, address: str, headers: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Rewrite ``url`` to connect to ``address`` while keeping the name for Host and TLS SNI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip = ipaddress.ip_address(address)
    ip_text = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{ip_text}:{parts.port}" if parts.port else ip_text
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = f"{host}:{parts.port}" if parts.port else host
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return pinned, {**headers, "Host": host_header}, extensions


async def fetch(
    url: str, config: FetchConfig | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> Document:
    """Fetch ``url`` within the limits of ``config``; raises ``FetchError`` for the model to read."""
    config = config or FetchConfig()
    try:
        async with asyncio.timeout(config.timeout):
            return await _fetch(url, config)
    except TimeoutError:
        raise FetchError(f"Timed out after {config.timeout:g} s while fetching `{url}`.") from None


async def _fetch(url: str, config: FetchConfig) -> Document:
    timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
    headers = {
        "User-Agent": config.user_agent,
        "Accept": "text/html,application/xhtml+xml,text/plain,application/json;q=0.9,*/*;q=0.5",
        "Accept-Encoding": "gzip, deflate",
    }
    async with httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        transport=config.transport,
        trust_env=False,
        verify=config.ssl_context or shared_ssl_context(),
    ) as client:
        current = url.split("#", 1)[0]
        for _hop in range(config.max_redirects + 1):
            response = await _send(client, current, config, headers)
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    if not location:
                        raise FetchError(
                            f"`{current}` answered {response.status_code} without a Location header."
                        )
                    current = urljoin(current, location).split("#", 1)[0]
                    continue
                if response.status_code >= 400:
                    reason = response.reason_phrase or ""
                    raise FetchError(
                        f"HTTP {response.status_code} {reason} for `{current}`.".replace("  ", " ")
                    )
                body, truncated = await _read_capped(response, current, config.max_bytes)
            finally:
                await response.aclose()
            return _decode(current, response, body, truncated)
    raise FetchError(f"Too many redirects (more than {config.max_redirects}) starting from `{url}`.")


async def _send(
    client: httpx.AsyncClient, url: str, config: FetchConfig, headers: dict[str, str]
) -> httpx.Response:
    """Send one GET for ``url``: to each checked address of its host in turn (IPv4 first) when
    guarding or resolving through the seam, else straight to the URL."""
    _host_and_port(url)
    if config.allow_private_urls and config.resolver is None:
        targets: list[tuple[str, dict[str, str], dict[str, Any]]] = [(url, headers, {})]
    else:
        addresses = await asyncio.to_thread(
            check_url, url, allow_private=config.allow_private_urls, resolver=config.resolver
        )
        addresses.sort(key=lambda address: ":" in address)
        targets = [_pinned_request(url, address, headers) for address in addresses]
    for i, (target, hop_headers, extensions) in enumerate(targets):
        request = client.build_request("GET", target, headers=hop_headers, extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as e:
            if i + 1 < len(targets):
                continue  # the next address of the same host
            raise FetchError(f"Could not connect to `{url}`: {e or 'connection refused'}.") from None
        except httpx.TimeoutException:
            raise FetchError(f"Timed out while fetching `{url}`.") from None
        except httpx.HTTPError as e:
            raise FetchError(
                f"Could not fetch `{url}`: {type(e).__name__}: {e or 'connection failed'}."
            ) from None
    raise AssertionError("unreachable: check_url returns at least one address")


async def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> tuple[bytes, bool]:
    """The body, decoded from its content encodings, cut at ``max_bytes`` (and whether it was).

    httpx would inflate a whole layer of a chunk before anyone counts the bytes (``gzip, gzip``:
    1.8 kB became 2 GB); here each layer gives at most ``_CHUNK`` bytes at a time, so memory stays
    within ``max_bytes`` plus a few chunks whatever the encodings.
    """
    layers = _content_layers(response, url)
    chunks: list[bytes] = []
    size = raw_size = 0
    try:
        async for raw in response.aiter_raw():
            raw_size += len(raw)
            if not layers:
                chunks.append(raw)
                size += len(raw)
            else:
                layers[0].push(raw)
                while data := _pull(layers, len(layers) - 1, min(_CHUNK, max_bytes + 1 - size)):
                    chunks.append(data)
                    size += len(data)
                    if size > max_bytes:
                        break
            if size > max_bytes or raw_size > max_bytes:
                if layers and size > _BOMB_RATIO * raw_size:
                    raise FetchError(
                        f"`{url}` is a compression bomb: {raw_size:,} bytes expand past the "
                        f"{max_bytes:,}-byte page limit; it was not opened."
                    )
                return b"".join(chunks)[:max_bytes], True
    except httpx.TimeoutException:
        raise FetchError(f"Timed out while reading `{url}`.") from None
    except httpx.HTTPError as e:
        raise FetchError(f"Connection broke while reading the page: {type(e).__name__}: {e}.") from None
    except zlib.error as e:
        raise FetchError(f"`{url}` sent a corrupt compressed body ({e}).") from None
    return b"".join(chunks), False


_CHUNK = 65_536
_MAX_ENCODINGS = 3
_BOMB_RATIO = 1_000
"""A body that expands more than this many times past the size cap is refused, not cut."""
_NO_ENCODING = {"", "identity", "none"}


def _content_layers(response: httpx.Response, url: str) -> list[_Inflate]:
    """Decoders for the response's ``Content-Encoding``, outermost (applied last) first."""
    names = [e.strip().lower() for e in response.headers.get_list("content-encoding", split_commas=True)]
    names = [name for name in names if name not in _NO_ENCODING]
    for name in names:
        if name not in ("gzip", "x-gzip", "deflate"):
            raise FetchError(
                f"`{url}` is compressed with `{name}`, which the browser cannot decode (gzip and deflate only)."
            )
    if len(names) > _MAX_ENCODINGS:
        raise FetchError(
            f"`{url}` is compressed {len(names)} times over (Content-Encoding: {', '.join(names)}); "
            "the browser decodes at most three layers."
        )
    return [_Inflate(name) for name in reversed(names)]


class _Inflate:
    """One gzip or deflate layer that inflates at most ``limit`` bytes per ``pull``."""

    def __init__(self, encoding: str) -> None:
        self.gzip = encoding != "deflate"
        self.pending = b""
        self._inflater: Any = None
        self._more = False  # the last pull filled its limit: output may wait inside zlib
        self._ended = False  # a stream (gzip: a member) ended; only another gzip member may follow

    def push(self, data: bytes) -> None:
        self.pending = self.pending + data if self.pending else data

    def pull(self, limit: int) -> bytes:
        if self._inflater is None:
            if len(self.pending) < 2 and (not self._ended or b"\x1f\x8b".startswith(self.pending)):
                return b""  # too little to tell what comes: wait for more
            if self._ended and not (self.gzip and self.pending.startswith(b"\x1f\x8b")):
                self.pending = b""  # bytes after the end (padding, junk) are ignored
                return b""
            self._inflater = zlib.decompressobj(self._wbits())
        elif not self.pending and not self._more:
            return b""
        out: bytes = self._inflater.decompress(self.pending, limit)
        self.pending = self._inflater.unconsumed_tail
        self._more = len(out) == limit
        if self._inflater.eof:
            self.pending = self._inflater.unused_data + self.pending
            self._inflater = None
            self._ended = True
        return out

    def _wbits(self) -> int:
        if self.gzip:
            return 16 + zlib.MAX_WBITS
        head = self.pending[:2]  # "deflate" is zlib-wrapped by the standard, raw by some servers
        is_zlib = len(head) == 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS


def _pull(layers: list[_Inflate], i: int, limit: int) -> bytes:
    """Up to ``limit`` decoded bytes out of layer ``i``, feeding it from the layers before."""
    layer = layers[i]
    while True:
        if out := layer.pull(limit):
            return out
        if i == 0:
            return b""
        upstream = _pull(layers, i - 1, _CHUNK)
        if not upstream:
            return b""
        layer.push(upstream)


def _media_type(response: httpx.Response, body: bytes) -> tuple[str, str | None]:
    header = response.headers.get("content-type", "")
    media, _, params = header.partition(";")
    media = media.strip().lower()
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'")
    if not media or media == "application/octet-stream":
        head = body[:1024]
        if head.startswith(b"%PDF-"):
            media = "application/pdf"
        elif b"\x00" in head:
            media = media or "application/octet-stream"
        elif re.search(rb"<(!doctype html|html|head|body)", head, re.IGNORECASE):
            media = "text/html"
        elif not media:
            media = "text/plain"
    return media, charset


def _decode(url: str, response: httpx.Response, body: bytes, truncated: bool) -> Document:
    media, charset = _media_type(response, body)
    status = response.status_code
    if media in _HTML_TYPES:
        text, charset = decode_text(body, charset, html=True)
        return Document(
            url=url,
            kind="html",
            text=text,
            content_type=media,
            status=status,
            charset=charset,
            truncated=truncated,
        )
    if media in _JSON_TYPES or media.endswith("+json"):
        text, charset = decode_text(body, charset)
        with contextlib.suppress(ValueError):  # cut by the size cap or malformed: show it as it came
            text = clean(json.dumps(json.loads(text), indent=2, ensure_ascii=False))  # "\\ud800" parses
        return Document(
            url=url,
            kind="json",
            text=text,
            content_type=media,
            status=status,
            charset=charset,
            truncated=truncated,
        )
    if media == "application/pdf":
        return Document(
            url=url,
            kind="pdf",
            text=_pdf_text(url, body),
            content_type=media,
            status=status,
            truncated=truncated,
        )
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith("+xml"):
        text, charset = decode_text(body, charset)
        return Document(
            url=url,
            kind="text",
            text=text,
            content_type=media,
            status=status,
            charset=charset,
            truncated=truncated,
        )
    raise FetchError(
        f"`{url}` is a binary file ({media}); the browser can show HTML, plain text, JSON and PDF only."
    )


def decode_text(body: bytes, charset: str | None, *, html: bool = False) -> tuple[str, str]:
    """Decode ``body`` much as a browser does: by its BOM, else the declared charset (the
    ``Content-Type`` header's, then an HTML ``<meta charset>``), else as UTF-8, else by a guess.

    A declared charset (or UTF-8) that fits all but a few bytes keeps them as U+FFFD: a stray
    byte does not send a UTF-8 page to the guesser (which made mojibake of it). Only a charset
    that fits badly gives way to the next. Labels the web reads as windows-1252 (``iso-8859-1``,
    ``ascii``) are decoded as windows-1252, whose quotes and dashes such pages use.
    """
    for bom, name in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if body.startswith(bom):
            return body.decode(name, "replace"), name
    candidates = [charset] if charset else []
    if html and (match := _META_CHARSET.search(body[:4096])):
        candidates.append(match.group(1).decode("ascii"))
    for name in [*candidates, "utf-8"]:
        text = _decode_as(body, name)
        if text is not None:
            return text, name.lower()
    return _guess(body)


_WINDOWS_1252 = {
    "ascii", "us-ascii", "iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "cp819",
    "ibm819", "iso-ir-100", "csisolatin1", "windows-1252", "cp1252", "x-cp1252",
}  # fmt: skip
"""Labels that mean windows-1252 to a browser (the WHATWG Encoding Standard)."""


def _decode_as(body: bytes, name: str) -> str | None:
    """``body`` in charset ``name`` when it fits: its invalid bytes as U+FFFD when they are at
    most a quarter of the non-ASCII characters, else None (and None for an unknown charset)."""
    codec = "cp1252" if name.strip().lower() in _WINDOWS_1252 else name
    try:
        return body.decode(codec)
    except LookupError:
        return None
    except UnicodeDecodeError as e:
        if e.start >= len(body) - 3:  # only the last character is incomplete: cut by the size cap
            with contextlib.suppress(UnicodeDecodeError):
                return body[: e.start].decode(codec)
    text = body.decode(codec, "replace")
    legit = body.count(b"\xef\xbf\xbd") if codecs.lookup(codec).name == "utf-8" else 0
    bad = text.count("\ufffd") - legit
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return text if 4 * bad <= non_ascii else None


_LATIN_PUNCTUATION = set("\xa0¡¢£¥§¨©ª«¬\xad®¯°±´µ¶·¸º»¿×÷‘’‚“”„†‡•…‰‹›€™–—ˆ˜")


def _guess(body: bytes) -> tuple[str, str]:
    """charset-normalizer's guess, but never UTF-16/32 without a BOM, and windows-1252 when that
    reads as Latin-script text no worse than the guess (for short Western text every single-byte
    charset ties, and the guesser's first pick was cp1250: "très" became "trčs")."""
    from charset_normalizer import from_bytes

    sample = body[:200_000]
    matches = [m for m in from_bytes(sample) if not m.encoding.startswith(("utf_16", "utf_32"))]
    cp1252 = next((m.coherence for m in matches if m.encoding == "cp1252"), 0.0)
    if _reads_as_latin(sample) and (not matches or matches[0].coherence <= cp1252 + 0.01):
        return body.decode("cp1252", "replace"), "windows-1252"
    if matches:
        return body.decode(matches[0].encoding, "replace"), matches[0].encoding
    return body.decode("utf-8", "replace"), "utf-8"


def _reads_as_latin(sample: bytes) -> bool:
    """True if ``sample`` in windows-1252 is plausible Latin-script text: every non-ASCII
    character a letter or common punctuation, and most letters ASCII (Cyrillic or Greek read as
    windows-1252 is all accented letters)."""
    try:
        text = sample.decode("cp1252")
    except UnicodeDecodeError:
        return False
    wide = [c for c in text if c > "\x7f"]
    if any(not c.isalpha() and c not in _LATIN_PUNCTUATION for c in wide):
        return False
    wide_letters = sum(c.isalpha() for c in wide)
    return wide_letters <= 0.4 * sum(c.isalpha() for c in text)


def _pdf_text(url: str, body: bytes) -> str:
    import io

    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:  # pragma: no cover - pypdf is a dependency
        raise FetchError(f"`{url}` is a PDF, and PDF support (pypdf) is not installed.") from None
    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as e:
        raise FetchError(f"Could not read the PDF at `{url}`: {e}.") from None
    return "\n\n".join(text.strip() for text in pages).strip()
