"""The web pages a user links: found in a message, fetched safely, turned into text.

A chat app that fetches any URL a user types is a server-side request forgery tool: the
user can make the server read its own admin ports, the cloud metadata service (credentials)
or anything on the private network. So, unless the operator allows it:

- only http and https, no `user:password@` (credentials would be sent for the user, and
  `trusted.example@evil.example` hides the real host), only ports 80 and 443 (other ports on
  a public host are where databases and admin consoles listen);
- the host is resolved (`loop.getaddrinfo`, off the event loop) and refused if ANY of its
  addresses is not a public unicast one (`address_problem`);
- the request then goes to the address that was checked (the URL's host is replaced by the
  IP, the `Host` header and the TLS SNI name keep the original name, so virtual hosting and
  certificate checks work as before): a DNS server that answers a public address for the
  check and a private one a moment later (DNS rebinding) is never asked twice;
- redirects are followed by hand, each hop checked like the first;
- at most `max_links` links per message, `max_bytes` per page (counted while streaming: the
  read stops there), `timeout_seconds` for the whole fetch with its redirects, and only the
  content types we can read.

`allowed_hosts` lists hosts (or host:port) that skip the address and port checks (an
intranet wiki, the tests' page server); `allow_private=True` turns the address check off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from .extract import Document, ExtractionError, kind_of
from .extract_pool import extract_async

logger = logging.getLogger("chainlit").getChild("Knowledge")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
Extractor = Callable[[bytes, str, str | None], Awaitable[Document]]

DEFAULT_CONTENT_TYPES = (
    "text/html",
    "application/xhtml+xml",
    "text/plain",
    "text/markdown",
    "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
)
USER_AGENT = "chainlit-persist-link-reader/0.1 (reads the pages a chat user links)"

# Cloud instance-metadata services (AWS, Azure, GCP, OpenStack on 169.254.169.254; AWS on
# IPv6; Alibaba on 100.100.100.200; ECS task metadata on 169.254.170.2): named apart from
# "link-local" because they hand out credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2", "169.254.170.23")
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"})
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the low 32 bits are an IPv4
_NUMERIC_V4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$", re.IGNORECASE)


@dataclass(frozen=True)
class LinkPolicy:
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()  # "host" or "host:port": skip the address and port checks
    max_links: int = 5
    max_bytes: int = 2_000_000
    timeout_seconds: float = 10.0
    connect_timeout: float = 5.0
    max_redirects: int = 5
    content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    max_concurrency: int = 5
    user_agent: str = USER_AGENT


@dataclass
class PageResult:
    url: str
    final_url: str
    ok: bool
    title: str = ""
    text: str = ""
    size_bytes: int = 0  # bytes of the body read (for a refused page: read before stopping)
    content_type: str = ""
    error: str | None = None  # short, user-facing: why the page was not read
    document: Document | None = field(default=None, repr=False)  # sections, for chunking


class LinkRefused(Exception):
    """A page that will not be read; the message is the user-facing reason."""


# ---- finding links ------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\"*_~"
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def find_urls(text: str, limit: int | None = 50) -> list[str]:
    """The http(s) URLs in a message, in order, each once (at most `limit`)."""
    found: list[str] = []
    for match in _URL.finditer(text or ""):
        url = match.group(0)
        while url:
            last = url[-1]
            if last in _TRAILING:
                url = url[:-1]
            elif last in _CLOSERS and url.count(last) > url.count(_CLOSERS[last]):
                # `[x](https://e.com/a)` or "(see https://e.com)": the bracket is not the URL's,
                # but Wikipedia's `/wiki/Foo_(bar)` keeps its balanced one.
                url = url[:-1]
            else:
                break
        if "](" in url:  # `[https://a](https://b)`: the link text ran into the target
            url = url.split("](", 1)[0]
        if len(url) > len("https://") and url not in found:
            found.append(url)
            if limit is not None and len(found) >= limit:
                break
    return found


# ---- addresses ----------------------------------------------------------------------------


def address_problem(ip: IPAddress) -> str | None:
    """Why an address may not be fetched ("a loopback address", ...), or None if it is public."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.exploded.split("%", 1)[0])
        # IPv6 forms that carry an IPv4 address reach that address (through the stack, a
        # NAT64 gateway or a 6to4/Teredo relay): judge the embedded one.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "a non-public address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The IP a host names literally: `::1`, `127.0.0.1`, and the forms C's inet_aton takes
    (`2130706433`, `0177.0.0.1`, `0x7f.1`), which resolvers and browsers accept as IPv4."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_V4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's addresses from the system resolver, without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


# ---- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: httpx.URL  # the logical URL (host name, canonical IP for literals)
    host: str  # ASCII (IDNA) host name or canonical IP, no brackets
    port: int
    literal: IPAddress | None


def _parse(raw: str) -> _Target:
    try:
        parts = urllib.parse.urlsplit(raw.strip())
        port = parts.port
    except ValueError as exc:
        raise LinkRefused(f"refused: not a valid link ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise LinkRefused(f"refused: only http and https links are read, not {scheme or 'this'}")
    if parts.username is not None or parts.password is not None:
        raise LinkRefused("refused: links with a user name or password are not read")
    host = (parts.hostname or "").rstrip(".") if parts.hostname not in (None, ".") else ""
    if not host:
        raise LinkRefused("refused: the link has no host")
    literal = literal_address(host)
    if literal is not None:
        host = str(literal)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    try:
        url = httpx.URL(urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")))
    except httpx.InvalidURL as exc:
        raise LinkRefused(f"refused: not a valid link ({exc})") from exc
    ascii_host = url.raw_host.decode("ascii")
    return _Target(url, ascii_host, port or (443 if scheme == "https" else 80), literal)


def _host_pattern_matches(pattern: str, host: str, port: int) -> bool:
    pattern = pattern.strip().lower().rstrip(".")
    want_port: int | None = None
    if pattern.startswith("["):
        inside, _, rest = pattern[1:].partition("]")
        pattern, want_port = inside, int(rest[1:]) if rest.startswith(":") else None
    elif pattern.count(":") == 1:
        name, _, digits = pattern.partition(":")
        pattern, want_port = name, int(digits) if digits.isdigit() else None
    if want_port is not None and want_port != port:
        return False
    literal = literal_address(pattern) if pattern else None
    if literal is not None:
        return str(literal) == host
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB" if n >= 1000 else f"{n} bytes"


# ---- the reader -----------------------------------------------------------------------------


class LinkReader:
    """Reads pages under a `LinkPolicy`; `resolver`, `transport` and `verify` (the TLS trust:
    an `ssl.SSLContext` for a private CA) are seams for tests and operators."""

    def __init__(
        self,
        policy: LinkPolicy | None = None,
        extract: Extractor = extract_async,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ):
        self.policy = policy or LinkPolicy()
        self._verify = verify
        self._extract = extract
        self._resolve = resolver
        self._transport = transport

    def is_allowed_host(self, host: str, port: int) -> bool:
        return any(_host_pattern_matches(p, host, port) for p in self.policy.allowed_hosts)

    async def read_all(self, urls: Sequence[str]) -> list[PageResult]:
        """Every link's result, in order: the first `max_links` fetched concurrently."""
        policy = self.policy
        semaphore = asyncio.Semaphore(max(1, policy.max_concurrency))
        # One client for the batch. Keep-alive is off: the pool keys connections by IP and
        # port, and a kept TLS connection checked for one name must not carry another's.
        async with httpx.AsyncClient(
            transport=self._transport,
            verify=self._verify,  # certificates are checked against the host name (SNI), not the IP
            trust_env=False,  # a proxy would resolve the names itself, undoing the pinning
            follow_redirects=False,
            timeout=httpx.Timeout(policy.timeout_seconds, connect=policy.connect_timeout),
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": policy.user_agent, "Accept-Encoding": "identity"},
        ) as client:

            async def one(url: str) -> PageResult:
                async with semaphore:
                    return await self.read(url, client)

            chosen = list(urls[: policy.max_links])
            results = list(await asyncio.gather(*(one(u) for u in chosen)))
        for url in urls[policy.max_links :]:
            results.append(PageResult(url, url, False, error=f"not read: only the first {policy.max_links} links are read"))
        return results

    async def read(self, url: str, client: httpx.AsyncClient) -> PageResult:
        result = PageResult(url=url, final_url=url, ok=False)
        try:
            # The time limit is for the network (resolution, redirects, body); extraction
            # runs after it, in the worker pool, where a cancelled wait would not stop it.
            async with asyncio.timeout(self.policy.timeout_seconds):
                data, name, mime = await self._fetch(url, client, result)
            document = await self._extract(data, name, mime)
            result.document = document
            result.title = document.title
            result.text = document.text
            result.ok = True
        except LinkRefused as exc:
            result.error = str(exc)
        except TimeoutError:
            result.error = f"timed out after {self.policy.timeout_seconds:g} s"
        except httpx.TimeoutException:
            result.error = f"timed out after {self.policy.timeout_seconds:g} s"
        except httpx.ConnectError as exc:
            result.error = f"could not connect ({exc or type(exc).__name__})"
        except httpx.HTTPError as exc:
            result.error = f"the connection failed ({exc or type(exc).__name__})"
        except ExtractionError as exc:
            result.error = f"could not read the page: {exc}"
        if result.error:
            result.ok = False
            logger.debug("Link %s not read: %s", url, result.error)
        return result

    async def _fetch(self, url: str, client: httpx.AsyncClient, result: PageResult) -> tuple[bytes, str, str]:
        policy = self.policy
        target = _parse(url)
        for hop in range(policy.max_redirects + 1):
            result.final_url = str(target.url)
            addresses = await self._checked_addresses(target, redirected=hop > 0)
            response = await self._send(client, target, addresses)
            try:
                if response.is_redirect and "location" in response.headers:
                    try:
                        target = _parse(str(target.url.join(response.headers["location"])))
                    except (LinkRefused, httpx.InvalidURL) as exc:
                        reason = str(exc).removeprefix("refused: ")
                        raise LinkRefused(f"refused: redirect to {response.headers['location']} ({reason})") from exc
                    continue
                if not response.is_success:  # a 304 or a redirect without a Location too
                    raise LinkRefused(f"HTTP {response.status_code}")
                return await self._read_body(target, response, result)
            finally:
                await response.aclose()
        raise LinkRefused("too many redirects")

    async def _checked_addresses(self, target: _Target, *, redirected: bool) -> list[IPAddress]:
        policy = self.policy
        allowed = self.is_allowed_host(target.host, target.port)

        def refuse(reason: str) -> LinkRefused:
            if redirected:
                return LinkRefused(f"refused: redirect to {target.url} ({reason})")
            return LinkRefused(f"refused: {reason}")

        if target.literal is not None:
            addresses: list[IPAddress] = [target.literal]
        else:
            if not allowed and not policy.allow_private and target.host.lower() in METADATA_NAMES:
                raise refuse(f"{target.host} is a cloud metadata address")
            unresolved = f"could not resolve host {target.host}"
            try:
                addresses = list(await self._resolve(target.host, target.port))
            except (socket.gaierror, UnicodeError) as exc:
                raise (refuse(unresolved) if redirected else LinkRefused(unresolved)) from exc
            if not addresses:
                raise refuse(unresolved) if redirected else LinkRefused(unresolved)
        if allowed or policy.allow_private:
            # An intranet's services listen on any port: allow_private lifts the port rule too.
            return addresses
        self._check_public(target, addresses, refuse, redirected=redirected)
        if target.port not in (80, 443):
            raise refuse(f"port {target.port} is not a web port (80 or 443)")
        return addresses

    @staticmethod
    def _check_public(target: _Target, addresses: list[IPAddress], refuse: Callable[[str], LinkRefused], *, redirected: bool) -> None:
        for ip in addresses:  # ANY bad address refuses: the client may connect to any of them
            problem = address_problem(ip)
            if problem:
                if redirected:
                    raise refuse(problem)
                if target.literal is not None:
                    raise LinkRefused(f"refused: {ip} is {problem}")
                raise LinkRefused(f"refused: {target.host} resolves to {ip}, {problem}")

    async def _send(self, client: httpx.AsyncClient, target: _Target, addresses: list[IPAddress]) -> httpx.Response:
        """GET the target from one of its checked addresses (the next one if a connect fails)."""
        host_header = target.url.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" and target.literal is None else {}
        failure: httpx.ConnectError | None = None
        for ip in addresses:
            request = client.build_request("GET", target.url.copy_with(host=str(ip)), headers={"Host": host_header}, extensions=extensions)
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = exc
                continue
            client.cookies.clear()  # cookies would be filed under the IP, not the site
            return response
        assert failure is not None
        raise failure

    async def _read_body(self, target: _Target, response: httpx.Response, result: PageResult) -> tuple[bytes, str, str]:
        policy = self.policy
        header = response.headers.get("content-type", "")
        content_type = header.split(";", 1)[0].strip().lower()
        name = target.url.path.rsplit("/", 1)[-1] or target.host
        if not content_type:
            guessed = kind_of(name, None)
            content_type = {"pdf": "application/pdf", "html": "text/html", "markdown": "text/markdown"}.get(
                guessed or "", "text/plain" if guessed else ""
            )
        result.content_type = content_type
        if content_type not in policy.content_types:
            raise LinkRefused(f"unsupported content type {content_type or '(none given)'}")
        too_big = LinkRefused(f"refused: the page is larger than {_size(policy.max_bytes)}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_bytes:
            raise too_big
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise LinkRefused(f"unsupported content encoding {encoding}")
        # We ask for identity; a server that compresses anyway is inflated here, never more
        # than the limit at a time (httpx would inflate a whole network read: a 64 KB gzip
        # read of zeros is 64 MB).
        inflater = zlib.decompressobj(wbits=47) if encoding not in ("", "identity") else None  # 47: gzip or zlib header
        body = bytearray()
        async for raw in response.aiter_raw():
            pending = raw
            while pending:
                if inflater is None:
                    chunk, pending = pending, b""
                else:
                    try:
                        chunk = inflater.decompress(pending, policy.max_bytes - len(body) + 1)
                    except zlib.error as exc:
                        raise LinkRefused(f"could not decode the page ({encoding}: {exc})") from exc
                    pending = inflater.unconsumed_tail
                body += chunk
                result.size_bytes = len(body)
                if len(body) > policy.max_bytes:
                    raise too_big  # stop reading: the connection is closed, not drained
                if inflater is not None and not chunk:
                    break
        data = bytes(body)
        mime = header or content_type
        if content_type.startswith("text/") and content_type != "text/html":
            # Plain text and Markdown: the header's charset, else UTF-8 with replacement
            # characters (a page is shown, not rejected, for a few bad bytes).
            charset = response.charset_encoding or "utf-8"
            try:
                text = data.decode(charset, errors="replace")
            except LookupError:
                text = data.decode("utf-8", errors="replace")
            data, mime = text.encode("utf-8"), f"{content_type}; charset=utf-8"
        return data, name, mime
