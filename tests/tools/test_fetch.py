"""Page fetching against real HTTP servers on 127.0.0.1: limits, content types, charsets, SSRF guard."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import pytest
from gptoss_agent.tools.fetch import BlockedURL, FetchConfig, FetchError, check_url, fetch, is_public_address
from websim import PUBLIC, SECURE, Internet, Server, html, resolver, web_fixture  # noqa: F401  (the `web` fixture)


def get(web, url: str, **overrides):
    return asyncio.run(fetch(url, web.fetch_config(**overrides)))


def test_html_page_is_fetched_through_the_pinned_address(web):
    before = len(web.site.requests)
    doc = get(web, "http://news.test/")
    assert (doc.kind, doc.status, doc.charset, doc.url) == ("html", 200, "utf-8", "http://news.test/")
    assert "Tidal turbines light up the bay" in doc.text
    request = web.site.requests[before]
    assert request.host == "news.test" and request.path == "/"


def test_connection_goes_to_the_checked_address():
    internet = Internet(site_port=1)
    config = FetchConfig(resolver=resolver, transport=internet, timeout=2)
    with pytest.raises(FetchError):
        asyncio.run(fetch("http://wiki.test/wiki/Tidal_power", config))  # port 1: nothing listens
    assert internet.seen == [f"http://{PUBLIC['wiki.test']}/wiki/Tidal_power"]


def test_each_address_is_tried_in_turn_ipv4_first(web):
    internet = Internet(web.site.port)
    doc = get(web, "http://flaky.test/", transport=internet)
    assert "Harbor Times" in doc.text and doc.url == "http://flaky.test/"
    assert internet.seen == ["http://93.184.216.36/", "http://93.184.216.34/"]
    with pytest.raises(FetchError, match=r"Could not connect to `http://down\.test/`: \[Errno 111\]"):
        get(web, "http://down.test/", transport=internet)
    assert internet.seen[2:] == ["http://93.184.216.36/", "http://[2606:2800:220:1::1]/"]


def test_system_resolver_names_are_checked():
    with pytest.raises(BlockedURL, match="loopback"):
        check_url("http://localhost/")


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 whose certificate names only ``secure.test``."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (it makes the test certificate)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=secure.test",
         "-addext", "subjectAltName=DNS:secure.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = Server(lambda request: html(body="<title>Secure</title><p>over TLS</p>"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    with server:
        yield server, ssl.create_default_context(cafile=str(cert))


def test_https_goes_to_the_checked_address_and_verifies_the_host_name(web, tls_site):
    server, trust = tls_site
    internet = Internet(web.site.port, tls_port=server.port, verify=trust)
    doc = get(web, "https://secure.test/", transport=internet)
    assert "over TLS" in doc.text and doc.url == "https://secure.test/"
    assert internet.seen == [f"https://{SECURE}/"] and server.requests[-1].host == "secure.test"
    # Same address, another name: the certificate is checked against the name, not the address.
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        get(web, "https://impostor.test/", transport=internet)


def test_ssl_context_sets_the_trusted_authorities(tls_site):
    server, trust = tls_site
    local = {"secure.test": ["127.0.0.1"]}
    config = FetchConfig(allow_private_urls=True, resolver=lambda host, port: local[host], ssl_context=trust)
    url = f"https://secure.test:{server.port}/"
    assert "over TLS" in asyncio.run(fetch(url, config)).text
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):  # the public CAs do not know it
        asyncio.run(fetch(url, FetchConfig(allow_private_urls=True, resolver=lambda host, port: local[host])))


def test_redirects_are_followed_by_hand(web):
    assert get(web, "http://news.test/old-energy").url == "http://news.test/articles/tide-energy"
    assert get(web, "http://news.test/hop1").url == "http://news.test/"
    with pytest.raises(FetchError, match=r"Too many redirects \(more than 1\)"):
        get(web, "http://news.test/hop1", max_redirects=1)
    with pytest.raises(FetchError, match="Too many redirects"):
        get(web, "http://news.test/loop")


def test_http_errors_binary_files_and_timeouts_are_messages(web):
    with pytest.raises(FetchError, match=r"HTTP 404 Not Found for `http://news.test/missing`"):
        get(web, "http://news.test/missing")
    with pytest.raises(FetchError, match=r"binary file \(image/png\)"):
        get(web, "http://news.test/logo.png")
    with pytest.raises(FetchError, match=r"binary file \(application/octet-stream\)"):
        get(web, "http://news.test/blob")
    with pytest.raises(FetchError, match=r"Timed out after 0.5 s while fetching `http://news.test/slow`"):
        get(web, "http://news.test/slow", timeout=0.5)
    # Each chunk arrives well within httpx's read timeout; the overall deadline still holds.
    with pytest.raises(FetchError, match="Timed out after 1 s"):
        get(web, "http://news.test/trickle", timeout=1.0)


def test_size_cap_truncates(web):
    doc = get(web, "http://news.test/big.txt", max_bytes=100_000)
    assert doc.truncated and len(doc.text) == 100_000 and doc.kind == "text"
    assert not get(web, "http://news.test/notes.txt").truncated


def test_a_character_cut_by_the_size_cap_keeps_the_charset(web):
    huge = web.site.handler.huge.encode()
    cut = huge.index("Zürich".encode()) + 2  # inside the two bytes of "ü"
    doc = get(web, "http://news.test/huge", max_bytes=cut)
    assert doc.truncated and doc.charset == "utf-8" and doc.text.endswith("Z") and "\ufffd" not in doc.text


def test_content_types_and_charsets(web):
    data = get(web, "http://news.test/data.json")
    assert data.kind == "json" and '"capacity_mw": 240' in data.text and data.text.startswith("{\n  ")
    notes = get(web, "http://news.test/notes.txt")
    assert (notes.kind, notes.charset) == ("text", "iso-8859-1") and "café's" in notes.text
    legacy = get(web, "http://news.test/legacy")
    assert legacy.charset == "windows-1251" and "Приливная электростанция" in legacy.text
    undeclared = get(web, "http://news.test/undeclared")
    assert "Приливная электростанция" in undeclared.text
    pdf = get(web, "http://news.test/report.pdf")
    assert pdf.kind == "pdf" and "Tidal report 2026: output rose 12 percent" in pdf.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",  # the system resolver
        "http://2130706433:{port}/",  # 127.0.0.1 in decimal
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://0.0.0.0:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://192.168.1.1/",
        "http://evil.test:{port}/",  # a DNS name resolving to 127.0.0.1
        "http://intranet.test/",  # ... to 10.0.0.5
        "http://metadata.test/",  # ... to 169.254.169.254
    ],
)
def test_ssrf_guard_refuses_internal_addresses(web, url):
    before = len(web.internal.requests)
    with pytest.raises(BlockedURL, match="loopback, private, link-local or otherwise internal"):
        get(web, url.format(port=web.internal.port))
    assert len(web.internal.requests) == before


@pytest.mark.parametrize("path", ["/to-internal", "/to-intranet", "/to-metadata"])
def test_ssrf_guard_checks_every_redirect_hop(web, path):
    before = len(web.internal.requests)
    with pytest.raises(BlockedURL, match="Refused to open"):
        get(web, f"http://news.test{path}")
    assert len(web.internal.requests) == before


def test_every_resolved_address_is_checked():
    with pytest.raises(BlockedURL, match=r"10\.1\.2\.3"):
        check_url("http://mixed.test/", resolver=lambda host, port: ["93.184.216.34", "10.1.2.3"])
    assert check_url("http://mixed.test/", resolver=lambda host, port: ["93.184.216.34"]) == ["93.184.216.34"]


def test_allow_private_urls_opens_local_servers(web):
    doc = asyncio.run(fetch(f"{web.internal.url}/", FetchConfig(allow_private_urls=True)))
    assert "internal secret" in doc.text


def test_bad_urls(web):
    with pytest.raises(FetchError, match="only http and https"):
        get(web, "file:///etc/passwd")
    with pytest.raises(FetchError, match=r"Cannot resolve host `nowhere\.test`"):
        get(web, "http://nowhere.test/")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::7f00:1", False),
    ],
)
def test_is_public_address(address, public):
    assert is_public_address(address) is public
