"""The behaviour every blob storage client must have.

A backend joins by subclassing `StorageContract` in a test module and providing two
fixtures:

    storage    a fresh, open `BlobStorage` for each test (closed by the fixture afterwards)
    fetch_url  an async callable `url -> (status, body bytes)` that fetches a read URL the
               way a browser would (plain HTTP for real backends)

For example, a developer's own client:

    class TestMyStorage(StorageContract):
        @pytest.fixture
        async def storage(self, tmp_path):
            async with MyStorage(tmp_path) as s:
                yield s

        @pytest.fixture
        def fetch_url(self):
            return plain_http_get      # e.g. tests.storage.conftest.http_fetch

Capabilities are data, not isinstance checks: `storage.signs_urls` says whether the
backend refuses a tampered link; a `verifies_signatures` fixture may override it where an
emulator (moto) serves the backend's URLs without checking them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from storage import (
    InvalidObjectKey,
    ObjectExists,
    ObjectNotFound,
    StorageClosed,
    StorageError,
)

BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("/abs/file.txt", id="absolute"),
    pytest.param("a/../b.txt", id="dotdot"),
    pytest.param("../escape.txt", id="leading-dotdot"),
    pytest.param("a/./b.txt", id="dot"),
    pytest.param("a//b.txt", id="empty-segment"),
    pytest.param("a/b/", id="trailing-slash"),
    pytest.param("a\\b.txt", id="backslash"),
    pytest.param("a/b\x00c.txt", id="nul"),
    pytest.param("a/b\nc.txt", id="newline"),
    pytest.param("a/b\x7fc.txt", id="del"),
    pytest.param("k/" + "x" * 1023, id="over-1024-bytes"),
    pytest.param("k/" + "é" * 512, id="over-1024-utf8-bytes"),
]

UNICODE_KEYS = [
    "用户/会话/元素/报告 2024.txt",
    "user/thread/el/naïve café 📎.txt",
    "user/thread/el/name with spaces & ?query#hash%20.txt",
    "user/thread/el/Ελληνικά-русский-עברית.txt",
]


def _key(name: str = "file.bin") -> str:
    """A key no other test uses, laid out like element keys (user/thread/element/name)."""
    return f"contract-user/{uuid.uuid4().hex}/{uuid.uuid4().hex[:8]}/{name}"


def _tamper(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _flip_last_char(value: str) -> str:
    return value[:-1] + ("0" if value[-1] != "0" else "1")


def _signature_param(url: str) -> str:
    """The query parameter holding the signature of a read URL (local, S3 or Azure)."""
    query = dict(parse_qsl(urlsplit(url).query))
    for name in ("sig", "X-Amz-Signature", "Signature"):
        if name in query:
            return name
    raise AssertionError(f"no signature parameter in {url!r}")


class StorageContract:
    @pytest.fixture
    def verifies_signatures(self, storage) -> bool:
        return storage.signs_urls

    # ---- round trips ---------------------------------------------------------------
    async def test_round_trip_bytes(self, storage):
        key = _key()
        data = bytes(range(256)) * 4
        result = await storage.upload_file(key, data, "application/octet-stream")
        assert result["object_key"] == key
        assert isinstance(result["url"], str) and result["url"]
        assert await storage.read_file(key) == data

    async def test_round_trip_str_is_utf8(self, storage):
        key = _key("note.txt")
        await storage.upload_file(key, "héllo wörld ✓", "text/plain")
        assert await storage.read_file(key) == "héllo wörld ✓".encode()

    async def test_empty_object(self, storage):
        key = _key("empty")
        await storage.upload_file(key, b"")
        assert await storage.read_file(key) == b""

    async def test_large_object(self, storage):
        key = _key("large.bin")
        data = os.urandom(10 * 1024 * 1024 + 17)
        await storage.upload_file(key, data, "application/octet-stream")
        assert await storage.read_file(key) == data

    async def test_unicode_names_round_trip(self, storage, fetch_url):
        for name in UNICODE_KEYS:
            key = f"{uuid.uuid4().hex}/{name}"
            body = f"content of {name}".encode()
            result = await storage.upload_file(key, body, "text/plain")
            assert result["object_key"] == key
            assert await storage.read_file(key) == body
            assert await fetch_url(await storage.get_read_url(key)) == (200, body)

    # ---- overwrite -----------------------------------------------------------------
    async def test_overwrite_true_replaces(self, storage):
        key = _key()
        await storage.upload_file(key, b"first")
        await storage.upload_file(key, b"second", overwrite=True)
        assert await storage.read_file(key) == b"second"

    async def test_overwrite_false_keeps_original(self, storage):
        key = _key()
        await storage.upload_file(key, b"original", overwrite=False)
        with pytest.raises(ObjectExists):
            await storage.upload_file(key, b"intruder", overwrite=False)
        with pytest.raises(FileExistsError):
            await storage.upload_file(key, b"intruder", overwrite=False)
        assert await storage.read_file(key) == b"original"

    async def test_overwrite_false_racing_uploads_one_winner(self, storage):
        key = _key()
        bodies = [f"writer {i}".encode() for i in range(6)]
        results = await asyncio.gather(
            *(storage.upload_file(key, body, overwrite=False) for body in bodies),
            return_exceptions=True,
        )
        winners = [body for body, result in zip(bodies, results, strict=True) if not isinstance(result, BaseException)]
        losers = [result for result in results if isinstance(result, BaseException)]
        assert len(winners) == 1, results
        assert all(isinstance(err, ObjectExists) for err in losers), losers
        assert await storage.read_file(key) == winners[0]

    # ---- delete --------------------------------------------------------------------
    async def test_delete_is_idempotent(self, storage):
        key = _key()
        await storage.upload_file(key, b"x")
        assert await storage.delete_file(key) is True
        assert await storage.delete_file(key) is True
        assert await storage.delete_file(_key("never-existed")) is True
        with pytest.raises(ObjectNotFound):
            await storage.read_file(key)

    async def test_delete_files_batch(self, storage):
        prefix = f"batch-user/{uuid.uuid4().hex}"
        doomed = [f"{prefix}/el{i}/f{i}.txt" for i in range(25)]
        kept = [f"{prefix}/kept{i}/f.txt" for i in range(2)]
        await asyncio.gather(*(storage.upload_file(k, k) for k in doomed + kept))
        await storage.delete_files(doomed + [f"{prefix}/missing/f.txt"])
        for key in doomed:
            with pytest.raises(ObjectNotFound):
                await storage.read_file(key)
        for key in kept:
            assert await storage.read_file(key) == key.encode()
        await storage.delete_files([])  # nothing to do is not an error

    async def test_delete_files_validates_every_key_first(self, storage):
        key = _key()
        await storage.upload_file(key, b"x")
        with pytest.raises(InvalidObjectKey):
            await storage.delete_files([key, "../etc/passwd"])
        assert await storage.read_file(key) == b"x"

    # ---- errors --------------------------------------------------------------------
    async def test_missing_object_error_types(self, storage):
        with pytest.raises(ObjectNotFound) as info:
            await storage.read_file(_key("absent"))
        assert isinstance(info.value, FileNotFoundError)
        assert isinstance(info.value, StorageError)

    @pytest.mark.parametrize("bad_key", BAD_KEYS)
    async def test_invalid_keys_refused(self, storage, bad_key):
        for call in (
            lambda: storage.upload_file(bad_key, b"x"),
            lambda: storage.read_file(bad_key),
            lambda: storage.delete_file(bad_key),
            lambda: storage.get_read_url(bad_key),
        ):
            with pytest.raises(InvalidObjectKey) as info:
                await call()
            assert isinstance(info.value, ValueError)

    # ---- read URLs -----------------------------------------------------------------
    async def test_read_url_serves_the_bytes(self, storage, fetch_url):
        key = _key("picture.png")
        data = os.urandom(70_000)
        result = await storage.upload_file(key, data, "image/png")
        assert await fetch_url(result["url"]) == (200, data)
        assert await fetch_url(await storage.get_read_url(key)) == (200, data)

    async def test_read_url_of_deleted_object_is_not_found(self, storage, fetch_url):
        key = _key()
        await storage.upload_file(key, b"soon gone")
        url = await storage.get_read_url(key)
        await storage.delete_file(key)
        status, body = await fetch_url(url)
        # S3 answers 403 instead of 404 to a caller who may not list the bucket (and moto
        # does for a link that sets the response headers); either way nothing is served.
        assert status in (403, 404) and body != b"soon gone"

    async def test_tampered_url_refused(self, storage, fetch_url, verifies_signatures):
        if not verifies_signatures:
            pytest.skip("this backend's read URLs carry no signature that is checked")
        key, other = _key("secret.txt"), _key("other.txt")
        await storage.upload_file(key, b"secret")
        await storage.upload_file(other, b"other secret")
        url = await storage.get_read_url(key)
        assert await fetch_url(url) == (200, b"secret")

        sig_param = _signature_param(url)
        query = dict(parse_qsl(urlsplit(url).query))
        forged = _tamper(url, **{sig_param: _flip_last_char(query[sig_param])})
        status, body = await fetch_url(forged)
        assert status == 403 and body != b"secret"

        stripped = urlunsplit(urlsplit(url)._replace(query=""))
        status, body = await fetch_url(stripped)
        assert status in (401, 403, 404) and body != b"secret"

        # A valid signature for one key must not open another key.
        other_url = await storage.get_read_url(other)
        other_path = urlsplit(other_url).path
        swapped = urlunsplit(urlsplit(url)._replace(path=other_path))
        status, body = await fetch_url(swapped)
        assert status == 403 and body != b"other secret"

    # ---- listing -------------------------------------------------------------------
    async def test_list_keys_by_prefix(self, storage):
        root = f"list-user/{uuid.uuid4().hex}"
        wanted = sorted([f"{root}/t1/e1/a.txt", f"{root}/t1/e2/b.txt", f"{root}/t10/e3/c.txt",
                         f"{root}/t2/e4/d.txt"])
        await asyncio.gather(*(storage.upload_file(k, k) for k in wanted))
        assert sorted([k async for k in storage.list_keys(f"{root}/")]) == wanted
        # A plain string prefix, not a folder: t1 also matches t10, as on S3.
        assert sorted([k async for k in storage.list_keys(f"{root}/t1")]) == wanted[:3]
        assert sorted([k async for k in storage.list_keys(f"{root}/t1/")]) == wanted[:2]
        assert [k async for k in storage.list_keys(f"{root}/t1/e1/a.txt")] == [wanted[0]]
        assert [k async for k in storage.list_keys(f"{root}/none/")] == []
        assert [k async for k in storage.list_keys(f"list-user/{uuid.uuid4().hex}")] == []
        everything = {k async for k in storage.list_keys()}
        assert set(wanted) <= everything

    async def test_list_objects_size_and_time(self, storage):
        key = _key("sized.bin")
        before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        await storage.upload_file(key, b"x" * 1234)
        [item] = [o async for o in storage.list_objects(key.rsplit("/", 1)[0] + "/")]
        assert (item.key, item.size) == (key, 1234)
        assert item.modified.tzinfo is not None
        assert before <= item.modified <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)

    async def test_list_after_delete_and_unicode(self, storage):
        root = f"list-user/{uuid.uuid4().hex}"
        keys = [f"{root}/{name}" for name in UNICODE_KEYS]
        await asyncio.gather(*(storage.upload_file(k, b"u") for k in keys))
        assert sorted([k async for k in storage.list_keys(root + "/")]) == sorted(keys)
        await storage.delete_files(keys[:2])
        assert sorted([k async for k in storage.list_keys(root + "/")]) == sorted(keys[2:])

    async def test_list_pages_through_many(self, storage):
        # More than one page on backends that page (S3 returns 1000 at most per request).
        root = f"list-many/{uuid.uuid4().hex}"
        keys = [f"{root}/t/e{i:04d}/f" for i in range(1100)]
        limit = asyncio.Semaphore(32)

        async def put(key):
            async with limit:
                await storage.upload_file(key, b"")

        await asyncio.gather(*(put(k) for k in keys))
        listed = [k async for k in storage.list_keys(root + "/")]
        assert sorted(listed) == keys and len(listed) == len(set(listed))

    # ---- lifecycle -----------------------------------------------------------------
    async def test_close_twice_then_use_raises(self, storage):
        key = _key()
        await storage.upload_file(key, b"x")
        await storage.close()
        await storage.close()
        for call in (
            lambda: storage.upload_file(key, b"y"),
            lambda: storage.read_file(key),
            lambda: storage.delete_file(key),
            lambda: storage.delete_files([key]),
            lambda: storage.get_read_url(key),
            lambda: anext(storage.list_keys()),
        ):
            with pytest.raises(StorageClosed):
                await call()

    async def test_async_context_manager_closes(self, storage):
        async with storage as same:
            assert same is storage
            await storage.upload_file(_key(), b"x")
        with pytest.raises(StorageClosed):
            await storage.read_file(_key())
