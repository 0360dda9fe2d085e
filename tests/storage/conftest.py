"""Servers the storage tests talk to over real HTTP on loopback ports.

- `blob_http_app`: a Starlette app served by uvicorn, with a catch-all route like
  Chainlit's SPA fallback, onto which LocalStorage mounts its download route.
- `moto_s3`: moto's ThreadedMotoServer (S3 API), with fake credentials in the environment.
- `adls_fake`: tests/servers/adls_fake.py, the slice of the ADLS Gen2 DFS API the Azure SDK
  calls.

In CI (`CI=true`) a missing SDK is an error, never a skip: these servers are all local, so
the tests can always run there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
import pytest

from tests.conftest import unavailable
from tests.servers.adls_fake import FakeAdlsServer, ServerThread


def require(module: str):
    """Import an optional SDK; skip without it locally, fail without it in CI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed (pip install -e '.[dev]')")


async def http_fetch(url: str) -> tuple[int, bytes]:
    """GET `url` the way a browser would: plain HTTP, no credentials, no redirects."""
    async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
        response = await client.get(url)
        return response.status_code, response.content


def sigv4_presigned_url_is_valid(url: str, *, secret_key: str, region: str, now: dt.datetime | None = None) -> bool:
    """Check an S3 presigned GET URL the way S3 does (SigV4 query auth, expiry, region),
    written from the AWS documentation rather than with botocore, whose signer made it.

    moto serves presigned URLs without checking them; the S3 tests put this check in front
    of moto so that a tampered, expired or wrong-region link is refused as on AWS."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(params)
    try:
        if query["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
            return False
        signature = query["X-Amz-Signature"]
        amz_date = query["X-Amz-Date"]
        expires = int(query["X-Amz-Expires"])
        access_key, date, scope_region, service, terminator = query["X-Amz-Credential"].split("/")
    except (KeyError, ValueError):
        return False
    signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    if not (signed_at - dt.timedelta(minutes=15) <= now <= signed_at + dt.timedelta(seconds=expires)):
        return False
    if (scope_region, service, terminator, date) != (region, "s3", "aws4_request", amz_date[:8]):
        return False
    if query.get("X-Amz-SignedHeaders") != "host":
        return False
    canonical_query = "&".join(
        sorted(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in params if k != "X-Amz-Signature")
    )
    canonical_request = "\n".join(
        [
            "GET",
            quote(unquote(parts.path), safe="/~"),
            canonical_query,
            f"host:{parts.netloc}\n",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{date}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


async def http_fetch_response(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
        return await client.get(url)


@pytest.fixture(scope="session")
def blob_http_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def spa_fallback(request):
        # Stands in for Chainlit's `/{full_path:path}` route: if the download route were
        # appended after it instead of inserted first, every blob URL would get this page.
        return PlainTextResponse("<html>chainlit spa</html>", status_code=200)

    app = Starlette(routes=[Route("/{full_path:path}", spa_fallback)])
    server = ServerThread(app).start()
    app.state.base_url = server.base_url
    try:
        yield app
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3(moto_endpoint):
    """Endpoint URL of the session's moto server (tests/conftest.py sets fake AWS
    credentials in the environment), once aioboto3 is known to be installed."""
    require("aioboto3")
    return moto_endpoint


@pytest.fixture(scope="session")
def adls_fake():
    """A running fake ADLS Gen2 endpoint: (.account_url, .account_name, .account_key)."""
    require("azure.storage.filedatalake.aio")
    server = FakeAdlsServer().start()
    try:
        yield server
    finally:
        server.stop()
