"""Local-filesystem blob storage: the default when `STORAGE_URL` is unset.

Layout under `root` (everything on one filesystem so renames are atomic):

    objects/<key>            the bytes, at a path that mirrors the key (browsable by operators)
    meta/<hh>/<sha256>.json  content type and disposition given at upload
    tmp/                     files being written, renamed into place when complete

Metadata lives under a hash of the key rather than next to the object, so no key can ever
collide with a metadata file (`a` and `a.json/b` are both valid keys).

Read URLs point at a download route this client adds to Chainlit's server (`mount`); they
carry an expiry and an HMAC-SHA256 signature, so guessing a key gives nothing. All file I/O
runs in worker threads (`asyncio.to_thread`): the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ._url import expiry_from, query_params
from .base import (
    DEFAULT_URL_EXPIRY_SECONDS,
    BlobStorage,
    InvalidObjectKey,
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
    StoredObject,
    object_filename,
    validate_object_key,
)
from .content_types import BLOB_RESPONSE_HEADERS, Delivery, delivery, guess_media_type

# Signed URLs expire on a 60 s grid: the same object read twice within a minute gets the
# same URL, so the browser cache keeps working although Chainlit re-signs on every read.
_EXPIRY_GRANULARITY = 60
# A concurrent delete may prune an empty directory between our makedirs and our rename.
_PUBLISH_ATTEMPTS = 5


class LocalStorage(BlobStorage):
    """Blobs as files under `root`, served through signed, expiring links."""

    signs_urls = True

    def __init__(
        self,
        root: Path | str,
        *,
        secret: bytes,
        base_url: str = "/blobs",
        url_expiry_seconds: int = DEFAULT_URL_EXPIRY_SECONDS,
    ):
        super().__init__(url_expiry_seconds=url_expiry_seconds)
        if not secret:
            raise ValueError("LocalStorage needs a non-empty secret to sign its URLs")
        self._secret = bytes(secret)
        self.root = Path(root).expanduser().absolute()
        self.base_url = base_url.rstrip("/")
        self.route_path = (urlsplit(self.base_url).path or "").rstrip("/") + "/{key:path}"
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        self._tmp = self.root / "tmp"
        # Creating three directories is instant; doing it here keeps every later call simple.
        for directory in (self._objects, self._meta, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self._objects_real = self._objects.resolve()

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r}, base_url={self.base_url!r})"

    @classmethod
    def from_url(cls, url: str, *, data_dir: Path, secret: bytes) -> LocalStorage:
        """`file:///abs/path`, or `file://rel/path` relative to `data_dir`; `file://` alone
        means `data_dir/blobs`. Query: `base_url=/blobs`, `expiry=SECONDS`."""
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise ValueError(f"not a file:// URL: {url!r}")
        path = unquote(parts.path)
        if parts.netloc in ("", "localhost"):
            root = Path(path) if path not in ("", "/") else Path(data_dir) / "blobs"
        else:
            root = Path(data_dir) / (unquote(parts.netloc) + path)
        params = query_params(url)
        return cls(
            root,
            secret=secret,
            base_url=params.get("base_url", "/blobs"),
            url_expiry_seconds=expiry_from(params),
        )

    # ---- paths ---------------------------------------------------------------------
    def _object_path(self, key: str) -> Path:
        path = self._objects / key
        # validate_object_key already refuses `..` and absolute keys; this also catches a
        # symlink planted inside the tree that points outside it.
        if not path.resolve().is_relative_to(self._objects_real):
            raise InvalidObjectKey(f"object key escapes the storage root: {key!r}")
        return path

    def _meta_path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self._meta / digest[:2] / f"{digest}.json"

    # ---- signing -------------------------------------------------------------------
    def _signature(self, key: str, exp: int) -> str:
        message = f"{exp}\n{key}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, expires_at: int) -> str:
        return f"{self.base_url}/{quote(key, safe='/')}?exp={expires_at}&sig={self._signature(key, expires_at)}"

    def verify_signature(self, key: str, exp: str | int | None, sig: str | None) -> bool:
        """True when `sig` is this storage's signature of `key` until `exp`, not yet past."""
        if exp is None or sig is None:
            return False
        try:
            expires_at = int(exp)
        except (TypeError, ValueError):
            return False
        if expires_at < time.time():
            return False
        return hmac.compare_digest(self._signature(key, expires_at), str(sig))

    async def _read_url(self, key: str, served: Delivery) -> str:
        # The download route applies the serving policy to the stored type itself: the
        # link only needs to prove it was handed out by this app.
        deadline = time.time() + self.url_expiry_seconds
        expires_at = -(-int(deadline) // _EXPIRY_GRANULARITY) * _EXPIRY_GRANULARITY
        return self.sign(key, expires_at)

    # ---- backend hooks ---------------------------------------------------------------
    async def _upload(self, key, body, mime, overwrite, content_disposition):
        meta = {"key": key, "mime": mime, "content_disposition": content_disposition}
        await asyncio.to_thread(self._write_sync, key, body, meta, overwrite)

    async def _read(self, key):
        def read() -> bytes:
            # _object_path resolves symlinks (file system calls), so it runs here too.
            with _translated(key, missing=ObjectNotFound):
                return self._object_path(key).read_bytes()

        return await asyncio.to_thread(read)

    async def _delete(self, key):
        await asyncio.to_thread(self._delete_sync, [key])

    async def _delete_many(self, keys):
        await asyncio.to_thread(self._delete_sync, keys)

    async def _list(self, prefix):
        # The directory walk runs in a worker thread a batch at a time: the event loop
        # never waits on the disk, and a big tree is never held in memory at once.
        walk = self._walk(prefix)
        while batch := await asyncio.to_thread(_take, walk, 500):
            for item in batch:
                yield item

    # ---- blocking work, run in threads ---------------------------------------------
    def _walk(self, prefix: str) -> Iterator[StoredObject]:
        folder = prefix.rpartition("/")[0]
        start = self._objects / folder if folder else self._objects
        if folder and not start.resolve().is_relative_to(self._objects_real):
            return
        for directory, subdirs, files in os.walk(start):
            subdirs.sort()  # a stable order from one run to the next
            base = Path(directory).relative_to(self._objects).as_posix()
            for name in sorted(files):
                key = name if base == "." else f"{base}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    stat_result = os.stat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue  # deleted while we walked
                yield StoredObject(key, stat_result.st_size, datetime.fromtimestamp(stat_result.st_mtime, UTC))

    def _write_temp(self, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="up-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                # fsync before the rename: after a crash the key holds the old or the new
                # bytes, never a truncated file.
                os.fsync(handle.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _write_sync(self, key: str, body: bytes, meta: dict[str, Any], overwrite: bool) -> None:
        """Publish the bytes and their metadata, or raise leaving no new object behind."""
        with _translated(key):
            dest = self._object_path(key)
            meta_path = self._meta_path(key)
            tmp = self._write_temp(body)
            meta_tmp: str | None = None
            try:
                meta_tmp = self._write_temp(json.dumps(meta).encode("utf-8"))
                # Everything that can fail before the object is visible is done first.
                meta_path.parent.mkdir(exist_ok=True)
                existed = dest.is_file()
                self._publish(key, tmp, dest, overwrite)
                try:
                    os.replace(meta_tmp, meta_path)
                except BaseException:
                    # Bytes without their type: a new object goes again, an overwritten
                    # one loses the stale type (then guessed from its name), and the
                    # caller gets the error.
                    if existed:
                        _remove_quietly(meta_path)
                    else:
                        _remove_quietly(dest)
                        self._prune_empty_parents(dest.parent)
                    raise
            finally:
                _unlink_quietly(tmp)
                if meta_tmp is not None:
                    _unlink_quietly(meta_tmp)

    def _publish(self, key: str, tmp: str, dest: Path, overwrite: bool) -> None:
        """Move the finished temp file to `dest` in one atomic step."""
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise StorageError(
                    f"object key {key!r} needs a folder where an object already exists"
                ) from exc
            if dest.is_dir():
                raise StorageError(f"object key {key!r} is a prefix of other objects")
            try:
                if overwrite:
                    os.replace(tmp, dest)
                else:
                    # link() fails if dest exists, atomically: two racing uploads with
                    # overwrite=False cannot both win, unlike an exists()-then-write check.
                    os.link(tmp, dest)
                return
            except FileExistsError as exc:
                raise ObjectExists(f"object already exists: {key}") from exc
            except FileNotFoundError:
                # A delete pruned our freshly made parent folder; make it again.
                if attempt == _PUBLISH_ATTEMPTS - 1:
                    raise

    def _delete_sync(self, keys: list[str]) -> None:
        for key in keys:
            with _translated(key):
                path = self._object_path(key)
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    pass  # not an object: deleting it is a no-op by contract
                _unlink_quietly(self._meta_path(key))
                self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, directory: Path) -> None:
        """Remove folders a delete left empty (a thread's folder after the thread goes)."""
        while directory != self._objects and directory.is_relative_to(self._objects):
            try:
                directory.rmdir()
            except OSError:
                return  # not empty, already gone, or busy: all fine to leave
            directory = directory.parent

    def stat_object(self, key: str) -> tuple[Path, os.stat_result, str, str | None]:
        """(path, stat, stored type, stored disposition) of an object; blocking, for the
        route. Without stored metadata (a file put there by hand) the name suggests the type."""
        with _translated(key, missing=ObjectNotFound):
            path = self._object_path(key)
            stat_result = path.stat()
            if not os.path.isfile(path):
                raise ObjectNotFound(f"no such object: {key}")
        mime, disposition = None, None
        try:
            meta = json.loads(self._meta_path(key).read_text("utf-8"))
            mime, disposition = meta.get("mime"), meta.get("content_disposition")
        except FileNotFoundError:
            pass  # written by hand or by an older version: guess from the name below
        except (OSError, ValueError) as exc:
            # Unreadable metadata must not make the file itself unreachable.
            self.logger.warning("ignoring unreadable metadata of %r: %s", key, exc)
        if not mime:
            # Only without metadata: a stored `application/octet-stream` may be a declared
            # type that did not parse, which the name must not turn back into a page type.
            mime = guess_media_type(object_filename(key))
        return path, stat_result, mime, disposition

    # ---- HTTP route ----------------------------------------------------------------
    def mount(self, app) -> None:
        """Serve signed downloads at `{base_url}/{key}` on a Starlette/FastAPI app.

        Inserted at the front of the route table: Chainlit registers a catch-all
        `/{full_path:path}` for its single-page app that would otherwise answer first.
        Mounting again (a reconfigured storage) replaces the earlier route of that path."""
        from starlette.routing import Route

        name = f"blob-download:{self.route_path}"
        routes = app.router.routes
        routes[:] = [route for route in routes if getattr(route, "name", None) != name]
        routes.insert(0, Route(self.route_path, self._serve, methods=["GET", "HEAD"], name=name))

    async def _serve(self, request):
        from starlette.responses import FileResponse, PlainTextResponse

        def refuse(text: str, status: int):
            return PlainTextResponse(text, status_code=status, headers=BLOB_RESPONSE_HEADERS)

        key = request.path_params["key"]
        if not self.verify_signature(key, request.query_params.get("exp"), request.query_params.get("sig")):
            return refuse("invalid or expired link", 403)
        if self._closed:
            return refuse("storage closed", 503)
        try:
            key = validate_object_key(key)
            path, stat_result, mime, disposition = await asyncio.to_thread(self.stat_object, key)
        except (ObjectNotFound, InvalidObjectKey):
            return refuse("not found", 404)
        # Re-applied on every response: metadata written before this policy existed may
        # hold a raw declared type (`image/png,text/html`).
        served = delivery(mime, object_filename(key), disposition)
        headers = {
            **BLOB_RESPONSE_HEADERS,
            "Content-Disposition": served.content_disposition,
            "Cache-Control": f"private, max-age={max(0, int(request.query_params['exp']) - int(time.time()))}",
        }
        return FileResponse(path, headers=headers, media_type=served.content_type, stat_result=stat_result)


class _translated:
    """Turn OSErrors of one key's file operations into the storage's typed errors."""

    def __init__(self, key: str, missing: type[StorageError] | None = None):
        self.key = key
        self.missing = missing

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, StorageError) or not isinstance(exc, OSError):
            return False
        if self.missing and isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            raise self.missing(f"no such object: {self.key}") from exc
        if isinstance(exc, PermissionError):
            raise StorageAccessDenied(f"permission denied on {self.key!r}: {exc}") from exc
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidObjectKey(f"object key has a segment too long for this filesystem: {self.key!r}") from exc
        raise StorageError(f"local storage failed on {self.key!r}: {exc}") from exc


def _take(items: Iterator[StoredObject], count: int) -> list[StoredObject]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == count:
            break
    return batch


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_quietly(path: str | Path) -> None:
    """Best-effort cleanup while another error is being raised: that error is the report."""
    try:
        os.unlink(path)
    except OSError:
        pass
