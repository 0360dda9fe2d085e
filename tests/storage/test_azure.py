"""AzureDataLakeStorage beyond the shared contract, against tests/servers/adls_fake.py:
SAS expiry, stored headers, error translation, user-delegation signing, URL forms."""

from __future__ import annotations

import datetime as dt
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from storage import ObjectExists, ObjectNotFound, StorageAccessDenied, StorageError
from tests.storage.conftest import http_fetch_response, require

require("azure.storage.filedatalake.aio")
from azure.core.exceptions import (  # noqa: E402  (after the SDK check)
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.filedatalake import UserDelegationKey  # noqa: E402

from storage.azure import AzureDataLakeStorage  # noqa: E402


@pytest.fixture
async def adls(adls_fake):
    storage = AzureDataLakeStorage(
        adls_fake.account_url, f"fs{uuid.uuid4().hex[:12]}", "pre/fix", credential=adls_fake.account_key
    )
    await storage._fs.create_file_system()
    yield storage
    await storage.close()


async def test_sas_link_serves_stored_headers(adls, adls_fake):
    await adls.upload_file("u/t/e/été.pdf", b"%PDF", "application/pdf")
    assert (adls.file_system, "pre/fix/u/t/e/été.pdf") in adls_fake.fake.files
    url = await adls.get_read_url("u/t/e/été.pdf")
    query = parse_qs(urlsplit(url).query)
    assert query["sp"] == ["r"]  # read-only
    response = await http_fetch_response(url)
    assert response.status_code == 200 and response.content == b"%PDF"
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == "inline; filename=\"_t_.pdf\"; filename*=UTF-8''%C3%A9t%C3%A9.pdf"


async def test_expired_sas_is_refused(adls):
    await adls.upload_file("u/t/e/f.txt", b"x")
    adls.url_expiry_seconds = -60
    response = await http_fetch_response(await adls.get_read_url("u/t/e/f.txt"))
    assert response.status_code == 403 and response.content != b"x"


async def test_sas_signed_with_another_key_is_refused(adls, adls_fake):
    await adls.upload_file("u/t/e/f.txt", b"x")
    impostor = AzureDataLakeStorage(adls_fake.account_url, adls.file_system, "pre/fix", credential="b3RoZXIta2V5")
    response = await http_fetch_response(await impostor.get_read_url("u/t/e/f.txt"))
    assert response.status_code == 403
    await impostor.close()


async def test_create_is_conditional_on_the_wire(adls, adls_fake):
    """overwrite=False must reach the service as `If-None-Match: *` on create, not as a
    client-side existence check (which two racing uploads could both pass)."""
    adls_fake.fake.requests.clear()
    await adls.upload_file("u/t/e/once.txt", b"1", overwrite=False)
    with pytest.raises(ObjectExists):
        await adls.upload_file("u/t/e/once.txt", b"2", overwrite=False)
    methods = [method for method, _ in adls_fake.fake.requests]
    assert "HEAD" not in methods and "GET" not in methods
    assert await adls.read_file("u/t/e/once.txt") == b"1"


async def test_missing_file_system_is_not_a_missing_object(adls_fake):
    storage = AzureDataLakeStorage(adls_fake.account_url, "nosuchfs", credential=adls_fake.account_key)
    for call in (
        lambda: storage.read_file("u/t/e/f"),
        lambda: storage.upload_file("u/t/e/f", b"x"),
        lambda: storage.delete_file("u/t/e/f"),
    ):
        with pytest.raises(StorageError) as info:
            await call()
        assert not isinstance(info.value, ObjectNotFound)
        assert "nosuchfs" in str(info.value)
    await storage.close()


def _http_error(cls, status: int, code: str):
    error = cls(message=f"{status} {code}")
    error.status_code = status
    error.error_code = code
    return error


@pytest.mark.parametrize(
    "error, expected",
    [
        (_http_error(ResourceNotFoundError, 404, "PathNotFound"), ObjectNotFound),
        (_http_error(ResourceNotFoundError, 404, "BlobNotFound"), ObjectNotFound),
        (_http_error(ResourceNotFoundError, 404, "FilesystemNotFound"), StorageError),
        (_http_error(ResourceExistsError, 409, "PathAlreadyExists"), ObjectExists),
        (_http_error(ClientAuthenticationError, 403, "AuthenticationFailed"), StorageAccessDenied),
        (_http_error(HttpResponseError, 403, "AuthorizationPermissionMismatch"), StorageAccessDenied),
        (_http_error(HttpResponseError, 503, "ServerBusy"), StorageError),
    ],
)
def test_sdk_errors_are_translated(error, expected):
    storage = AzureDataLakeStorage("https://acct.dfs.core.windows.net", "fs", credential="a2V5")
    translated = storage._translate(error, "read", "u/t/e/f")
    assert type(translated) is expected


class _FakeTokenCredential:
    """Stands in for DefaultAzureCredential; never asked for a token in these tests."""

    async def get_token(self, *scopes, **kwargs):  # pragma: no cover - not reached
        raise AssertionError("no request should be authenticated here")

    async def close(self):
        pass


def _delegation_key() -> UserDelegationKey:
    key = UserDelegationKey()
    key.signed_oid = "00000000-0000-0000-0000-000000000001"
    key.signed_tid = "00000000-0000-0000-0000-000000000002"
    key.signed_start = "2026-01-01T00:00:00Z"
    key.signed_expiry = "2099-01-01T00:00:00Z"
    key.signed_service = "b"
    key.signed_version = "2025-01-05"
    key.value = "ZGVsZWdhdGlvbi1rZXk="
    return key


async def test_user_delegation_sas_fetches_one_key_and_reuses_it():
    storage = AzureDataLakeStorage("https://acct.dfs.core.windows.net", "fs", credential=_FakeTokenCredential())
    calls = []

    async def get_user_delegation_key(key_start_time, key_expiry_time, **kwargs):
        calls.append((key_start_time, key_expiry_time))
        return _delegation_key()

    storage._service.get_user_delegation_key = get_user_delegation_key
    first = await storage.get_read_url("u/t/e/a.txt")
    second = await storage.get_read_url("u/t/e/b.txt")
    assert len(calls) == 1
    start, expiry = calls[0]
    assert expiry - start >= dt.timedelta(hours=23)
    for url in (first, second):
        query = parse_qs(urlsplit(url).query)
        assert query["skoid"] == ["00000000-0000-0000-0000-000000000001"]
        assert query["sp"] == ["r"] and "sig" in query
    assert urlsplit(first).netloc == "acct.blob.core.windows.net"  # browsers read from the Blob endpoint
    assert urlsplit(first).path == "/fs/u/t/e/a.txt"
    await storage.close()


async def test_user_delegation_failure_names_the_missing_role():
    storage = AzureDataLakeStorage("https://acct.dfs.core.windows.net", "fs", credential=_FakeTokenCredential())

    async def denied(**kwargs):
        raise _http_error(HttpResponseError, 403, "AuthorizationPermissionMismatch")

    storage._service.get_user_delegation_key = denied
    with pytest.raises(StorageAccessDenied) as info:
        await storage.get_read_url("u/t/e/a.txt")
    assert "Storage Blob Delegator" in str(info.value)
    await storage.close()


def test_from_url_public_form(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_KEY", "ZW52LWtleQ==")
    storage = AzureDataLakeStorage.from_url(
        "abfss://container@myacct.dfs.core.windows.net/app/blobs?account_key=dXJsLWtleQ==&expiry=600",
        data_dir=None,
        secret=b"",
    )
    assert storage.account_url == "https://myacct.dfs.core.windows.net"
    assert (storage.file_system, storage.prefix, storage.account_name) == ("container", "app/blobs/", "myacct")
    assert storage._account_key == "ZW52LWtleQ=="  # the environment wins over the URL
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    pasted = AzureDataLakeStorage.from_url("abfs://c@acct?account_key=a+b/c==", data_dir=None, secret=b"")
    assert pasted._account_key == "a+b/c=="  # '+' of an unencoded base64 key survives
    assert storage.url_expiry_seconds == 600
    assert "ZW52" not in repr(storage) and "dXJs" not in repr(storage)
    short = AzureDataLakeStorage.from_url("abfs://c@acct", data_dir=None, secret=b"")
    assert short.account_url == "https://acct.dfs.core.windows.net"


def test_from_url_local_endpoint(monkeypatch, adls_fake):
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    storage = AzureDataLakeStorage.from_url(
        f"abfs://files@{adls_fake.account_name}/p?endpoint_url={adls_fake.account_url}&account_key={adls_fake.account_key}",
        data_dir=None,
        secret=b"",
    )
    assert storage.account_url == adls_fake.account_url
    assert storage.account_name == adls_fake.account_name
    assert adls_fake.account_key not in repr(storage)


async def test_without_a_key_default_credential_is_used_and_closed(monkeypatch):
    require("azure.identity.aio")
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    storage = AzureDataLakeStorage.from_url("abfs://c@acct.dfs.core.windows.net", data_dir=None, secret=b"")
    assert type(storage._owned_credential).__name__ == "DefaultAzureCredential"
    closed = []
    original_close = storage._owned_credential.close

    async def tracking_close():
        closed.append(True)
        await original_close()

    storage._owned_credential.close = tracking_close
    await storage.close()
    await storage.close()
    assert closed == [True]


@pytest.mark.parametrize("url", ["abfs://acct.dfs.core.windows.net/x", "s3://b/p", "abfs://"])
def test_from_url_rejects_malformed(url):
    with pytest.raises(ValueError):
        AzureDataLakeStorage.from_url(url, data_dir=None, secret=b"")


async def test_batch_delete_reports_every_failure(adls):
    await adls.upload_file("u/t/e/ok.txt", b"x")
    failing = {"u/t/e/a.txt", "u/t/e/b.txt"}
    original = adls._delete

    async def flaky_delete(key):
        if key in failing:
            raise StorageAccessDenied(f"denied {key}")
        await original(key)

    adls._delete = flaky_delete
    with pytest.raises(StorageAccessDenied) as info:
        await adls.delete_files(["u/t/e/a.txt", "u/t/e/ok.txt", "u/t/e/b.txt"])
    assert "2 of 3 deletes failed" in str(info.value)
    with pytest.raises(ObjectNotFound):
        await adls.read_file("u/t/e/ok.txt")  # the others were still deleted


# ---- serving policy ---------------------------------------------------------------


async def test_a_declared_type_that_does_not_parse_is_stored_and_served_as_a_download(adls, adls_fake):
    await adls.upload_file("u/t/e/x.png", b"<script>alert(1)</script>", "image/png, text/html")
    stored = adls_fake.fake.files[(adls.file_system, "pre/fix/u/t/e/x.png")]
    assert stored.content_type == "application/octet-stream"
    assert stored.content_disposition.startswith("attachment;")
    url = await adls.get_read_url("u/t/e/x.png", mime="application/octet-stream")
    query = parse_qs(urlsplit(url).query)
    assert query["rsct"] == ["application/octet-stream"] and query["rscd"][0].startswith("attachment;")
    response = await http_fetch_response(url)
    assert response.status_code == 200  # the fake checks the SAS signature, rsct/rscd included
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")


async def test_the_sas_overrides_what_a_file_was_stored_with(adls, adls_fake):
    """A file written by an older version, or by hand, as an inline page."""
    await adls.upload_file("u/t/e/page.html", b"<script>1</script>", "text/plain")
    adls_fake.fake.files[(adls.file_system, "pre/fix/u/t/e/page.html")].content_type = "text/html"
    adls_fake.fake.files[(adls.file_system, "pre/fix/u/t/e/page.html")].content_disposition = "inline"
    response = await http_fetch_response(await adls.get_read_url("u/t/e/page.html", mime="text/html"))
    assert response.headers["content-type"] == "text/html"
    assert response.headers["content-disposition"].startswith("attachment;")
    inline = await http_fetch_response(await adls.get_read_url("u/t/e/page.html", mime="text/plain"))
    assert inline.headers["content-disposition"].startswith("inline;")
