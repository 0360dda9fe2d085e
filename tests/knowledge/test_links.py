"""Link reading against a real page server on a loopback port: the private-address guard on
(loopback refused, redirects re-checked) and off for the test host (pages read), the limits
(bytes, time, types, count, redirects), concurrency, and DNS rebinding."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time

import httpx
import pytest

from knowledge import extract_pool
from knowledge.links import (
    LinkPolicy,
    LinkReader,
    address_problem,
    find_urls,
    literal_address,
)
from tests.servers.pages import (
    ARTICLE_FACT,
    ARTICLE_TITLE,
    BOILERPLATE,
    HUGE_BYTES,
    HUGE_CHUNK,
    PDF_FACT,
    PDF_PAGES,
    PageServer,
)


@pytest.fixture(scope="module")
def pages():
    with PageServer() as server:
        yield server
    extract_pool.close()


@pytest.fixture(autouse=True)
def fresh(pages):
    pages.reset()


def allowing(pages: PageServer, **kwargs) -> LinkReader:
    return LinkReader(LinkPolicy(allowed_hosts=(pages.authority,), **kwargs))


async def read_one(reader: LinkReader, url: str):
    (result,) = await reader.read_all([url])
    return result


# ---- finding links ----------------------------------------------------------------------------


def test_find_urls():
    text = (
        "See https://example.com/a, and (https://example.org/b). Also [docs](https://docs.example.com/x?y=1) "
        "and https://en.wikipedia.org/wiki/Otter_(disambiguation); again https://example.com/a! "
        "<https://angle.example/> ftp://nope.example/ http://plain.example"
    )
    assert find_urls(text) == [
        "https://example.com/a",
        "https://example.org/b",
        "https://docs.example.com/x?y=1",
        "https://en.wikipedia.org/wiki/Otter_(disambiguation)",
        "https://angle.example/",
        "http://plain.example",
    ]
    assert find_urls(text, limit=2) == ["https://example.com/a", "https://example.org/b"]
    assert find_urls("nothing here, not even http:// alone") == []


# ---- address classification -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("10.0.0.5", "a private address"),
        ("172.16.3.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("240.0.0.1", "a private address"),  # reserved 240/4; Python files it under private
        ("255.255.255.255", "a private address"),
        ("192.0.2.1", "a private address"),  # documentation (TEST-NET-1)
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "a private address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "a private address"),  # 6to4 of 10.0.0.1
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
    ],
)
def test_address_problem(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("example.com", None),
        ("1.example", None),
        ("0xdead.example", None),
    ],
)
def test_literal_address(host, address):
    found = literal_address(host)
    assert (str(found) if found else None) == address


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://2130706433/", "refused: 127.0.0.1 is a loopback address"),
        ("http://0177.0.0.1/", "refused: 127.0.0.1 is a loopback address"),
        ("http://0x7f.0.0.1/admin", "refused: 127.0.0.1 is a loopback address"),
        ("http://[::1]/", "refused: ::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "refused: ::ffff:7f00:1 is a loopback address"),
        ("http://0.0.0.0/", "refused: 0.0.0.0 is an unspecified address"),
        ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 is a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "refused: fd00:ec2::254 is a cloud metadata address"),
        ("http://100.64.0.1/", "refused: 100.64.0.1 is a shared (carrier-grade NAT) address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "refused: metadata.google.internal is a cloud metadata address"),
        ("http://localhost/", "refused: localhost resolves to 127.0.0.1, a loopback address"),
        ("http://user:secret@example.com/", "refused: links with a user name or password are not read"),
        ("http://example.com@127.0.0.1/", "refused: links with a user name or password are not read"),
        ("ftp://example.com/file", "refused: only http and https links are read, not ftp"),
        ("file:///etc/passwd", "refused: only http and https links are read, not file"),
        ("http:///nohost", "refused: the link has no host"),
        ("http://example.com:99999/", "refused: not a valid link (Port out of range 0-65535)"),
        ("http://public.example:6379/", "refused: port 6379 is not a web port (80 or 443)"),
        ("http://mixed.example/", "refused: mixed.example resolves to 10.1.2.3, a private address"),
        ("http://gone.example/", "could not resolve host gone.example"),
    ],
)
async def test_refused_before_any_connection(url, error):
    async def resolver(host: str, port: int):
        table = {
            "localhost": ["127.0.0.1"],
            "public.example": ["93.184.215.14"],
            "mixed.example": ["93.184.215.14", "10.1.2.3"],  # ANY bad address refuses
        }
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    reader = LinkReader(LinkPolicy(), resolver=resolver, transport=httpx.MockTransport(record))
    result = await read_one(reader, url)
    assert (result.ok, result.error) == (False, error)
    assert sent == []


@pytest.mark.parametrize(
    ("pattern", "host", "port", "allowed"),
    [
        ("wiki.corp", "wiki.corp", 443, True),
        ("wiki.corp", "wiki.corp", 8080, True),  # no port in the pattern: any port
        ("wiki.corp:8080", "wiki.corp", 8080, True),
        ("wiki.corp:8080", "wiki.corp", 80, False),
        ("WIKI.corp.", "wiki.corp", 80, True),
        ("*.corp", "docs.wiki.corp", 80, True),
        ("*.corp", "corp", 80, False),
        ("wiki.corp", "evilwiki.corp", 80, False),
        ("127.0.0.1:8000", "127.0.0.1", 8000, True),
        ("[::1]:8000", "::1", 8000, True),
        ("::1", "::1", 9, True),
        ("2130706433", "127.0.0.1", 80, True),  # patterns take the same numeric forms as links
    ],
)
def test_allowed_host_patterns(pattern, host, port, allowed):
    assert LinkReader(LinkPolicy(allowed_hosts=(pattern,))).is_allowed_host(host, port) is allowed


async def test_international_names_are_resolved_in_their_ascii_form():
    asked: list[str] = []

    async def resolver(host: str, port: int):
        asked.append(host)
        return [ipaddress.ip_address("10.9.8.7")]

    result = await read_one(LinkReader(LinkPolicy(), resolver=resolver), "https://bücher.example/kapitel")
    assert asked == ["xn--bcher-kva.example"]
    assert result.error == "refused: xn--bcher-kva.example resolves to 10.9.8.7, a private address"


# ---- the page server: guard on, host allowed ---------------------------------------------------


async def test_loopback_page_is_refused_with_the_guard_on(pages):
    result = await read_one(LinkReader(LinkPolicy()), pages.url("/article.html"))
    assert not result.ok
    assert result.error == "refused: 127.0.0.1 is a loopback address"
    assert pages.paths() == []


async def test_allowed_host_is_read_without_boilerplate(pages):
    result = await read_one(allowing(pages), pages.url("/article.html"))
    assert result.ok, result.error
    assert result.title == ARTICLE_TITLE
    assert ARTICLE_FACT in result.text
    assert BOILERPLATE not in result.text and "All rights reserved" not in result.text
    assert result.content_type == "text/html" and result.size_bytes > 1000
    assert result.document is not None and "section Diet" in [s.location for s in result.document.sections]
    assert pages.requests == [("/article.html", pages.authority)]


async def test_pdf_and_plain_text_pages(pages):
    pdf, text = await allowing(pages).read_all([pages.url("/doc.pdf"), pages.url("/plain.txt")])
    assert pdf.ok, pdf.error
    assert pdf.content_type == "application/pdf"
    assert pdf.document is not None and pdf.document.pages == PDF_PAGES
    assert PDF_FACT in pdf.document.sections[-1].text and pdf.document.sections[-1].location == f"page {PDF_PAGES}"
    assert text.ok and "the café opens at 7 o'clock" in text.text


async def test_allow_private_lifts_the_address_and_port_checks(pages):
    result = await read_one(LinkReader(LinkPolicy(allow_private=True)), pages.url("/article.html"))
    assert result.ok, result.error


async def test_redirect_to_loopback_is_refused_even_from_an_allowed_name(pages):
    # The first host is allowed by name (localhost:<port>); the redirect goes to 127.0.0.1:<port>,
    # which is not in allowed_hosts, so it is checked like any address — and refused.
    reader = LinkReader(LinkPolicy(allowed_hosts=(f"localhost:{pages.port}",)))
    result = await read_one(reader, pages.url("/redirect-local", host="localhost"))
    assert not result.ok
    assert result.error == f"refused: redirect to http://127.0.0.1:{pages.port}/article.html (a loopback address)"
    assert pages.paths() == ["/redirect-local"]


async def test_redirect_to_an_allowed_target_is_followed(pages):
    reader = LinkReader(LinkPolicy(allowed_hosts=(f"localhost:{pages.port}", pages.authority)))
    result = await read_one(reader, pages.url("/redirect-local", host="localhost"))
    assert result.ok, result.error
    assert result.final_url == pages.url("/article.html")
    assert pages.paths() == ["/redirect-local", "/article.html"]


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("http://10.0.0.5/", "refused: redirect to http://10.0.0.5/ (a private address)"),
        ("http://169.254.169.254/latest/", "refused: redirect to http://169.254.169.254/latest/ (a cloud metadata address)"),
        ("http://[::ffff:7f00:1]/", "refused: redirect to http://[::ffff:7f00:1]/ (a loopback address)"),
        ("ftp://example.com/", "refused: redirect to ftp://example.com/ (only http and https links are read, not ftp)"),
        ("http://u:p@example.com/", "refused: redirect to http://u:p@example.com/ (links with a user name or password are not read)"),
        ("http://2130706433/", "refused: redirect to http://127.0.0.1/ (a loopback address)"),
    ],
)
async def test_every_redirect_is_checked(pages, target, error):
    url = str(httpx.URL(pages.url("/redirect-to"), params={"url": target}))
    result = await read_one(allowing(pages), url)
    assert (result.ok, result.error) == (False, error)


async def test_redirect_chain_limit(pages):
    short, long = await allowing(pages, max_redirects=5).read_all([pages.url("/redirect-chain/3"), pages.url("/redirect-chain/9")])
    assert short.ok and ARTICLE_FACT in short.text
    assert (long.ok, long.error) == (False, "too many redirects")
    assert pages.paths().count("/redirect-chain/9") == 1 and "/redirect-chain/3" in pages.paths()
    assert len([p for p in pages.paths() if p.startswith("/redirect-chain/") and int(p.rsplit("/", 1)[1]) >= 4]) == 6


# ---- limits -----------------------------------------------------------------------------------


async def test_huge_page_stops_at_the_byte_limit(pages):
    limit = 1_000_000
    result = await read_one(allowing(pages, max_bytes=limit), pages.url("/huge.html?group=huge"))
    assert (result.ok, result.error) == (False, "refused: the page is larger than 1.0 MB")
    # The reader held at most the limit plus one network read, then hung up.
    assert limit < result.size_bytes <= limit + HUGE_CHUNK + 1024
    for _ in range(200):  # wait for the server's writer to notice the closed connection
        if pages.in_flight_for("huge") == 0:
            break
        await asyncio.sleep(0.05)
    assert pages.in_flight_for("huge") == 0
    print(f"huge page: the reader took {result.size_bytes} bytes, the server sent {pages.huge_bytes_sent}")
    # What the server got out before the reset: the client's read plus the socket buffers.
    assert pages.huge_bytes_sent < limit + 8 * 1024 * 1024 < HUGE_BYTES


async def test_declared_length_over_the_limit_is_refused_unread(pages):
    result = await read_one(allowing(pages, max_bytes=500), pages.url("/article.html"))
    assert (result.error, result.size_bytes) == ("refused: the page is larger than 500 bytes", 0)


async def test_slow_page_times_out(pages):
    started = time.monotonic()
    result = await read_one(allowing(pages, timeout_seconds=1), pages.url("/slow.html?delay=30"))
    assert (result.ok, result.error) == (False, "timed out after 1 s")
    assert time.monotonic() - started < 1 + 5  # the page would take 30 s


async def test_unsupported_type_and_http_errors(pages):
    image, missing = await allowing(pages).read_all([pages.url("/image.png"), pages.url("/notfound")])
    assert (image.ok, image.error, image.size_bytes) == (False, "unsupported content type image/png", 0)
    assert (missing.ok, missing.error) == (False, "HTTP 404")


async def test_only_the_first_links_are_read(pages):
    urls = [pages.url(f"/article.html?n={i}") for i in range(7)]
    results = await allowing(pages, max_links=5).read_all(urls)
    assert [r.ok for r in results] == [True] * 5 + [False] * 2
    assert [r.error for r in results[5:]] == ["not read: only the first 5 links are read"] * 2
    assert len(pages.paths()) == 5


async def test_pages_are_fetched_concurrently(pages):
    urls = [pages.url(f"/slow.html?delay=0.5&group=five&n={i}") for i in range(5)]
    results = await allowing(pages, max_links=5).read_all(urls)
    assert all(r.ok for r in results), [r.error for r in results]
    assert pages.max_in_flight["five"] == 5


async def test_concurrency_is_bounded(pages):
    urls = [pages.url(f"/slow.html?delay=0.2&group=two&n={i}") for i in range(4)]
    results = await allowing(pages, max_links=4, max_concurrency=2).read_all(urls)
    assert all(r.ok for r in results)
    assert pages.max_in_flight["two"] == 2


# ---- DNS rebinding ----------------------------------------------------------------------------


async def test_dns_rebinding_cannot_redirect_the_connection(pages):
    """The resolver answers a public address for the check, then loopback: the request goes to
    the checked address (the name is never resolved twice for one hop), and the next hop's
    resolution, now loopback, is refused."""
    answers = iter(["93.184.215.14", "127.0.0.1", "127.0.0.1"])
    asked: list[str] = []

    async def rebinding(host: str, port: int):
        asked.append(host)
        return [ipaddress.ip_address(next(answers))]

    sent: list[tuple[str, str, str]] = []

    def network(request: httpx.Request) -> httpx.Response:
        # Stands in for the internet at the public address (this machine has none).
        sent.append((request.url.host, request.headers["host"], request.url.path))
        if request.url.path == "/first":
            return httpx.Response(302, headers={"Location": "/second"})
        return httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html><body><p>hello</p></body></html>")

    reader = LinkReader(LinkPolicy(), resolver=rebinding, transport=httpx.MockTransport(network))
    result = await read_one(reader, "http://rebind.example/first")
    assert sent == [("93.184.215.14", "rebind.example", "/first")]
    assert asked == ["rebind.example", "rebind.example"]
    assert result.error == "refused: redirect to http://rebind.example/second (a loopback address)"
    assert pages.paths() == []


# ---- compression ------------------------------------------------------------------------------


async def test_gzip_sent_anyway_is_read_and_a_gzip_bomb_is_stopped(pages):
    article, bomb = await allowing(pages, max_bytes=1_000_000).read_all([pages.url("/gzip.html"), pages.url("/gzip-bomb.html")])
    assert article.ok and ARTICLE_FACT in article.text
    assert len(pages.gzip_bomb) < 200_000  # 50 MB of zeros on the wire in a few dozen KB
    assert (bomb.ok, bomb.error) == (False, "refused: the page is larger than 1.0 MB")
    assert bomb.size_bytes == 1_000_001  # inflated no further than one byte past the limit


# ---- HTTPS: the connection goes to the checked IP, the certificate is checked for the name -----


def _certificates(tmp_path, name: str):
    """A throwaway CA and a certificate it signs for `name`: (server context, client context)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "link tests CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


async def test_https_goes_to_the_checked_address_and_verifies_the_name(tmp_path):
    server_tls, client_tls = _certificates(tmp_path, "pages.test")
    asked: list[str] = []

    async def resolver(host: str, port: int):
        asked.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    with PageServer(tls=server_tls) as secure:
        reader = LinkReader(
            LinkPolicy(allowed_hosts=(f"pages.test:{secure.port}", f"other.test:{secure.port}")), resolver=resolver, verify=client_tls
        )
        good, wrong_name = await reader.read_all(
            [secure.url("/article.html", host="pages.test"), secure.url("/article.html", host="other.test")]
        )
        assert good.ok, good.error
        assert ARTICLE_FACT in good.text
        assert good.final_url == f"https://pages.test:{secure.port}/article.html"
        # The server saw the name in the Host header although the client dialled 127.0.0.1.
        assert secure.requests == [("/article.html", f"pages.test:{secure.port}")]
        # The certificate is for pages.test: reached under another name, the handshake fails.
        assert not wrong_name.ok and "CERTIFICATE_VERIFY_FAILED" in (wrong_name.error or "")
        assert asked == ["pages.test", "other.test"]
