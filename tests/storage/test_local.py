"""LocalStorage beyond the shared contract: the download route's answers and headers,
the on-disk layout, and URL parsing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from storage import InvalidObjectKey, ObjectExists, ObjectNotFound, StorageError
from storage.local import LocalStorage
from tests.storage.conftest import http_fetch_response

SECRET = b"s" * 32


@pytest.fixture
async def local(tmp_path, blob_http_app):
    storage = LocalStorage(tmp_path / "root", secret=SECRET, base_url=f"{blob_http_app.state.base_url}/blobs")
    storage.mount(blob_http_app)
    yield storage
    await storage.close()


async def test_download_headers(local):
    key = "u/t/e/rapport été.txt"
    await local.upload_file(key, "bonjour", "text/plain")
    response = await http_fetch_response(await local.get_read_url(key))
    assert response.status_code == 200
    assert response.content == b"bonjour"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-disposition"] == (
        "inline; filename=\"rapport _t_.txt\"; filename*=UTF-8''rapport%20%C3%A9t%C3%A9.txt"
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert response.headers["cache-control"].startswith("private, max-age=")
    assert int(response.headers["content-length"]) == len(b"bonjour")


async def test_stored_attachment_disposition_is_served(local):
    key = "u/t/e/notes.txt"
    await local.upload_file(key, b"a", "text/plain", content_disposition='attachment; filename="notes.txt"')
    response = await http_fetch_response(await local.get_read_url(key))
    assert response.headers["content-disposition"] == 'attachment; filename="notes.txt"'
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "declared, name, served_type",
    [
        ("text/html", "page.html", "text/html; charset=utf-8"),
        ("image/svg+xml", "logo.svg", "image/svg+xml"),
        ("text/csv", "data.csv", "text/csv; charset=utf-8"),
        ("application/xhtml+xml", "page.xhtml", "application/xhtml+xml"),
        # Declared types that are not exactly one type: stored and served as bytes.
        ("image/png,text/html", "x.png", "application/octet-stream"),
        ("image/png, text/html", "x.png", "application/octet-stream"),
    ],
)
async def test_anything_not_allow_listed_is_a_sandboxed_download(local, declared, name, served_type):
    """An uploaded page must not run script on the app's own origin."""
    key = f"u/t/e/{name}"
    await local.upload_file(key, b"<script>alert(1)</script>", declared, content_disposition=f'inline; filename="{name}"')
    response = await http_fetch_response(await local.get_read_url(key))
    assert response.status_code == 200
    assert response.headers["content-type"] == served_type
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("declared, served_type", [("image/png", "image/png"), ("application/pdf", "application/pdf"),
                                                   ("audio/mpeg", "audio/mpeg"), ("video/mp4", "video/mp4")])
async def test_allow_listed_types_are_inline_and_sandboxed(local, declared, served_type):
    await local.upload_file("u/t/e/media", b"\x00\x01", declared)
    response = await http_fetch_response(await local.get_read_url("u/t/e/media"))
    assert response.headers["content-type"] == served_type
    assert response.headers["content-disposition"].startswith("inline;")
    assert response.headers["content-security-policy"] == "sandbox; default-src 'none'"


async def test_metadata_of_an_older_version_is_served_by_the_policy(local, tmp_path):
    """Metadata written before types were normalised may hold the raw declared type."""
    key = "u/t/e/x.png"
    await local.upload_file(key, b"<script>alert(1)</script>", "image/png")
    for meta in (tmp_path / "root" / "meta").rglob("*.json"):
        meta.write_text(json.dumps({"key": key, "mime": "image/png,text/html", "content_disposition": "inline"}))
    response = await http_fetch_response(await local.get_read_url(key))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")


@pytest.mark.parametrize("url_of", [lambda url: url.replace("sig=", "sig=00"), lambda url: url + "x",
                                    lambda url: url.replace("/e/", "/other/")])
async def test_refusals_carry_the_sandbox_too(local, url_of):
    await local.upload_file("u/t/e/f.txt", b"x", "text/plain")
    response = await http_fetch_response(url_of(await local.get_read_url("u/t/e/f.txt")))
    assert response.status_code in (403, 404)
    assert response.headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_expired_link_is_forbidden(local):
    key = "u/t/e/old.txt"
    await local.upload_file(key, b"old")
    url = local.sign(key, int(time.time()) - 1)
    response = await http_fetch_response(url)
    assert response.status_code == 403
    assert response.content != b"old"


@pytest.mark.parametrize(
    "query",
    ["", "?exp=&sig=", "?exp=notanumber&sig=00", "?sig=abc", "?exp=99999999999", "?exp=99999999999&sig=" + "0" * 64],
)
async def test_malformed_links_are_forbidden(local, query):
    await local.upload_file("u/t/e/f.txt", b"x")
    base = local.sign("u/t/e/f.txt", 1).split("?")[0]
    response = await http_fetch_response(base + query)
    assert response.status_code == 403


async def test_link_signed_by_another_secret_is_forbidden(local, tmp_path):
    await local.upload_file("u/t/e/f.txt", b"x")
    other = LocalStorage(tmp_path / "other", secret=b"o" * 32, base_url=local.base_url)
    response = await http_fetch_response(await other.get_read_url("u/t/e/f.txt"))
    assert response.status_code == 403


async def test_missing_object_is_404_only_with_a_valid_signature(local):
    url = local.sign("u/t/e/nothing.txt", int(time.time()) + 60)
    assert (await http_fetch_response(url)).status_code == 404


async def test_head_and_range_requests(local):
    key = "u/t/e/video.bin"
    data = os.urandom(4096)
    await local.upload_file(key, data, "video/mp4")
    url = await local.get_read_url(key)
    async with httpx.AsyncClient() as client:
        head = await client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == "4096"
        ranged = await client.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.content == data[100:200]


async def test_route_is_served_before_a_fastapi_catch_all(tmp_path):
    """Chainlit's app ends with `@app.get("/{full_path:path}")` serving the SPA."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/{full_path:path}")
    async def spa(full_path: str):
        return {"spa": full_path}

    storage = LocalStorage(tmp_path, secret=SECRET)
    storage.mount(app)
    storage.mount(app)  # mounting twice keeps one route
    assert sum(1 for r in app.router.routes if getattr(r, "name", "").startswith("blob-download")) == 1
    await storage.upload_file("u/t/e/a.txt", b"blob")
    url = await storage.get_read_url("u/t/e/a.txt")
    assert url.startswith("/blobs/u/t/e/a.txt?exp=")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == b"blob"
    await storage.close()


async def test_closed_storage_route_answers_503(local):
    await local.upload_file("u/t/e/f.txt", b"x")
    url = await local.get_read_url("u/t/e/f.txt")
    await local.close()
    assert (await http_fetch_response(url)).status_code == 503


async def test_urls_are_stable_within_a_minute(local):
    first = await local.get_read_url("u/t/e/f.txt")
    second = await local.get_read_url("u/t/e/f.txt")
    assert first == second  # lets the browser cache attachments across re-signed reads


def test_verify_signature(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    exp = int(time.time()) + 60
    sig = storage.sign("a/b", exp).rsplit("sig=", 1)[1]
    assert storage.verify_signature("a/b", str(exp), sig)
    assert storage.verify_signature("a/b", exp, sig)
    assert not storage.verify_signature("a/c", exp, sig)
    assert not storage.verify_signature("a/b", exp + 1, sig)
    assert not storage.verify_signature("a/b", None, sig)
    assert not storage.verify_signature("a/b", exp, None)
    assert not storage.verify_signature("a/b", "soon", sig)


def test_secret_is_required(tmp_path):
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, secret=b"")


# ---- on-disk layout ---------------------------------------------------------------


async def test_layout_and_cleanup(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    await storage.upload_file("alice/thread1/el1/a.txt", b"a")
    await storage.upload_file("alice/thread1/el2/b.txt", b"b")
    await storage.upload_file("alice/thread2/el3/c.txt", b"c")
    assert (tmp_path / "objects/alice/thread1/el1/a.txt").read_bytes() == b"a"
    await storage.delete_files(["alice/thread1/el1/a.txt", "alice/thread1/el2/b.txt"])
    # The deleted thread's folders are gone; the other thread's remain.
    assert not (tmp_path / "objects/alice/thread1").exists()
    assert (tmp_path / "objects/alice/thread2/el3/c.txt").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert len(list((tmp_path / "meta").rglob("*.json"))) == 1  # only c.txt's metadata left
    await storage.close()


async def test_no_temp_files_left_after_refused_write(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    await storage.upload_file("u/t/e/f", b"one")
    with pytest.raises(ObjectExists):
        await storage.upload_file("u/t/e/f", b"two", overwrite=False)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert await storage.read_file("u/t/e/f") == b"one"


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_an_unwritable_store_fails_the_upload_and_leaves_nothing(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    shutil.rmtree(tmp_path / "tmp")
    (tmp_path / "tmp").write_text("not a folder")  # as unwritable as a full or read-only disk
    with pytest.raises(StorageError):
        await storage.upload_file("u/t/e/f.txt", b"data", "text/plain")
    assert stored_files(tmp_path / "objects") == [] and stored_files(tmp_path / "meta") == []


async def test_metadata_that_cannot_be_written_fails_the_upload_and_leaves_no_object(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    shutil.rmtree(tmp_path / "meta")
    (tmp_path / "meta").write_text("not a folder")
    with pytest.raises(StorageError):
        await storage.upload_file("u/t/e/f.txt", b"data", "text/plain")
    assert stored_files(tmp_path / "objects") == []
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_metadata_failing_after_the_object_is_published_takes_the_object_back(tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path, secret=SECRET)
    real_replace = os.replace

    def replace(src, dst):
        if "/meta/" in str(dst):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StorageError, match="No space left"):
        await storage.upload_file("u/t/e/new.txt", b"data", "text/plain", overwrite=False)
    assert stored_files(tmp_path / "objects") == []
    assert not (tmp_path / "objects/u").exists()  # its folders pruned too
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_key_and_prefix_conflicts(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    await storage.upload_file("a/b", b"file")
    with pytest.raises(StorageError) as info:
        await storage.upload_file("a/b/c", b"under a file")
    assert not isinstance(info.value, ObjectExists)
    with pytest.raises(StorageError):
        await storage.upload_file("a", b"over a folder")
    with pytest.raises(ObjectNotFound):
        await storage.read_file("a")  # a folder is not an object
    with pytest.raises(ObjectNotFound):
        await storage.read_file("a/b/c")
    await storage.delete_file("a")  # a no-op, not an error, and the folder's object stays
    assert await storage.read_file("a/b") == b"file"


async def test_symlink_out_of_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    storage = LocalStorage(tmp_path / "root", secret=SECRET)
    (tmp_path / "root/objects/u").mkdir(parents=True)
    os.symlink(outside, tmp_path / "root/objects/u/link")
    with pytest.raises(InvalidObjectKey):
        await storage.read_file("u/link/secret.txt")
    with pytest.raises(InvalidObjectKey):
        await storage.upload_file("u/link/new.txt", b"x")
    assert not (outside / "new.txt").exists()


async def test_segment_too_long_for_the_filesystem(tmp_path):
    storage = LocalStorage(tmp_path, secret=SECRET)
    with pytest.raises(InvalidObjectKey):
        await storage.upload_file("u/" + "x" * 300, b"x")


async def test_type_guessed_when_metadata_is_missing(tmp_path, blob_http_app):
    storage = LocalStorage(tmp_path, secret=SECRET, base_url=f"{blob_http_app.state.base_url}/blobs")
    storage.mount(blob_http_app)
    target = tmp_path / "objects/u/t/e/photo.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x89PNG")
    response = await http_fetch_response(await storage.get_read_url("u/t/e/photo.png"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    await storage.close()


# ---- URLs ---------------------------------------------------------------------------


def test_from_url_forms(tmp_path):
    absolute = LocalStorage.from_url(f"file://{tmp_path}/abs", data_dir=tmp_path / "data", secret=SECRET)
    assert absolute.root == tmp_path / "abs"
    relative = LocalStorage.from_url("file://files/blobs", data_dir=tmp_path / "data", secret=SECRET)
    assert relative.root == tmp_path / "data/files/blobs"
    default = LocalStorage.from_url("file://", data_dir=tmp_path / "data", secret=SECRET)
    assert default.root == tmp_path / "data/blobs"
    spaced = LocalStorage.from_url(f"file://{quote(str(tmp_path))}/with%20space", data_dir=tmp_path, secret=SECRET)
    assert spaced.root == tmp_path / "with space"
    tuned = LocalStorage.from_url(
        f"file://{tmp_path}/t?base_url=/files/&expiry=120", data_dir=tmp_path, secret=SECRET
    )
    assert tuned.base_url == "/files" and tuned.url_expiry_seconds == 120
    assert tuned.route_path == "/files/{key:path}"
    with pytest.raises(ValueError):
        LocalStorage.from_url("s3://bucket", data_dir=tmp_path, secret=SECRET)
    with pytest.raises(ValueError):
        LocalStorage.from_url(f"file://{tmp_path}?expiry=soon", data_dir=tmp_path, secret=SECRET)


def test_repr_has_no_secret(tmp_path):
    storage = LocalStorage(tmp_path, secret=b"topsecret-value-123")
    assert "topsecret" not in repr(storage)
    assert Path(str(tmp_path)).name in repr(storage)


async def test_corrupt_metadata_does_not_hide_the_file(tmp_path, blob_http_app):
    storage = LocalStorage(tmp_path, secret=SECRET, base_url=f"{blob_http_app.state.base_url}/blobs")
    storage.mount(blob_http_app)
    await storage.upload_file("u/t/e/doc.pdf", b"%PDF", "application/pdf")
    for meta in (tmp_path / "meta").rglob("*.json"):
        meta.write_text("{not json")
    response = await http_fetch_response(await storage.get_read_url("u/t/e/doc.pdf"))
    assert response.status_code == 200 and response.content == b"%PDF"
    assert response.headers["content-type"] == "application/pdf"  # guessed from the name
    await storage.close()
