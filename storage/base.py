"""The storage contract every blob client implements.

`BlobStorage` extends Chainlit's `BaseStorageClient` (so any Chainlit code that expects a
storage client accepts ours) and adds what a data layer and a test suite need: reading an
object back and deleting many at once. Public methods do the shared work (key validation,
str→bytes, `overwrite` semantics, closed-state checks); each backend implements the small
`_` methods (the aiocache pattern). SDK errors are translated into the typed errors below
once, inside each backend, so callers only ever see these.
"""

from __future__ import annotations

import unicodedata
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.logger import logger as chainlit_logger

from .content_types import Delivery, delivery, guess_media_type

MAX_KEY_BYTES = 1024  # S3's limit; Azure allows more, so this is the portable bound.
DEFAULT_URL_EXPIRY_SECONDS = 3600


class StorageError(Exception):
    """Any failure of a blob store. Subclasses also inherit the builtin a caller catches."""


class ObjectNotFound(StorageError, FileNotFoundError):
    pass


class ObjectExists(StorageError, FileExistsError):
    pass


class StorageAccessDenied(StorageError, PermissionError):
    pass


class InvalidObjectKey(StorageError, ValueError):
    pass


class StorageClosed(StorageError, RuntimeError):
    pass


def validate_object_key(key: str) -> str:
    """Return `key` if it is a safe, portable object key, else raise InvalidObjectKey.

    Refused: empty keys, absolute paths, `.`/`..` or empty segments, backslashes, control
    characters and keys over 1024 UTF-8 bytes. Unicode names are kept as NFC.
    """
    if not isinstance(key, str) or not key:
        raise InvalidObjectKey("object key must be a non-empty string")
    key = unicodedata.normalize("NFC", key)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidObjectKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/") or "\\" in key:
        raise InvalidObjectKey(f"object key must be relative and use '/': {key!r}")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise InvalidObjectKey("object key contains control characters")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidObjectKey(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def _key_segment(value: str) -> str:
    """One path segment made from an id or file name: separators and controls replaced."""
    cleaned = "".join(
        "_" if ch in "/\\" or unicodedata.category(ch) == "Cc" else ch for ch in value
    ).strip()
    if cleaned in ("", ".", ".."):
        cleaned = "_"
    return _truncate_utf8(cleaned, _MAX_SEGMENT_BYTES)


# Bytes, not characters: 4 segments of 200 bytes stay under MAX_KEY_BYTES, and each stays
# under the 255-byte file name limit of common filesystems (the local client).
_MAX_SEGMENT_BYTES = 200


def _truncate_utf8(value: str, limit: int) -> str:
    """Cut `value` to at most `limit` UTF-8 bytes on a character boundary, keeping a short
    extension (`.pdf`) so the stored name still tells its type."""
    if len(value.encode("utf-8")) <= limit:
        return value
    stem, dot, ext = value.rpartition(".")
    suffix = f".{ext}" if dot and stem and len(ext.encode("utf-8")) <= 16 else ""
    head = value[: len(value) - len(suffix)] if suffix else value
    budget = limit - len(suffix.encode("utf-8"))
    return head.encode("utf-8")[:budget].decode("utf-8", "ignore") + suffix


def element_object_key(user: str | None, thread_id: str, element_id: str, name: str | None) -> str:
    """The key layout `{user}/{thread}/{element}/{file name}`.

    Grouping by user and thread lets an operator find (and a data layer remove) all the
    blobs of one thread or one user with a prefix listing.
    """
    parts = [
        _key_segment(user or "anonymous"),
        _key_segment(thread_id),
        _key_segment(element_id),
        _key_segment(name or "file"),
    ]
    return validate_object_key("/".join(parts))


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing: its key, size in bytes and last change (aware UTC)."""

    key: str
    size: int
    modified: datetime


def object_filename(key: str) -> str:
    """The file name a download of `key` gets: its last segment."""
    return key.rsplit("/", 1)[-1]


class BlobStorage(BaseStorageClient):
    """Base of every blob client. Usable as `async with`; `close()` is idempotent."""

    #: True where `get_read_url` returns a link whose signature the backend verifies.
    signs_urls: bool = True

    def __init__(self, *, url_expiry_seconds: int = DEFAULT_URL_EXPIRY_SECONDS):
        self.url_expiry_seconds = url_expiry_seconds
        self._closed = False
        self.logger = chainlit_logger.getChild(type(self).__name__)

    # ---- public API (shared work) -------------------------------------------------
    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        """Store `data` under `object_key`. `mime` is the declared type: stored in its clean
        form, or as `application/octet-stream` when it does not parse (see content_types);
        the disposition stored with it is the serving policy's (`content_disposition` can
        only make it an attachment)."""
        self._check_open()
        key = validate_object_key(object_key)
        body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        served = delivery(mime, object_filename(key), content_disposition)
        await self._upload(key, body, served.content_type, overwrite, served.content_disposition)
        return {"object_key": key, "url": await self._read_url(key, served)}

    async def read_file(self, object_key: str) -> bytes:
        self._check_open()
        return await self._read(validate_object_key(object_key))

    async def delete_file(self, object_key: str) -> bool:
        """Delete one object. Deleting a missing object is not an error (returns True)."""
        self._check_open()
        await self._delete(validate_object_key(object_key))
        return True

    async def delete_files(self, object_keys: Iterable[str]) -> None:
        """Delete many objects (a thread's blobs) in as few calls as the backend allows."""
        self._check_open()
        keys = [validate_object_key(k) for k in object_keys if k]
        if keys:
            await self._delete_many(keys)

    async def get_read_url(self, object_key: str, mime: str | None = None) -> str:
        """A link a browser can GET the object from. `mime` is the type it was stored with
        (the element row's); clients whose links carry the response headers (S3, Azure)
        serve it by the same policy as at upload, else by the type its name suggests."""
        self._check_open()
        key = validate_object_key(object_key)
        filename = object_filename(key)
        return await self._read_url(key, delivery(mime or guess_media_type(filename), filename))

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Every object whose key starts with `prefix` (a plain string prefix, as on S3:
        `a/b` matches `a/b/c` and `a/bc`), streamed page by page so that a store of a
        million objects is never held in memory. The order is the backend's."""
        self._check_open()
        if not isinstance(prefix, str) or "\x00" in prefix:
            raise InvalidObjectKey("a listing prefix must be a string without NUL")
        prefix = unicodedata.normalize("NFC", prefix)
        async for item in self._list(prefix):
            if item.key.startswith(prefix):
                yield item

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """The keys of `list_objects(prefix)`."""
        async for item in self.list_objects(prefix):
            yield item.key

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosed(f"{type(self).__name__} is closed")

    # ---- backend hooks ------------------------------------------------------------
    @abstractmethod
    async def _upload(
        self, key: str, body: bytes, mime: str, overwrite: bool, content_disposition: str | None
    ) -> None:
        """Store `body`; raise ObjectExists when `overwrite` is False and `key` exists."""

    @abstractmethod
    async def _read(self, key: str) -> bytes:
        """Return the bytes of `key`; raise ObjectNotFound when it does not exist."""

    @abstractmethod
    async def _delete(self, key: str) -> None:
        """Delete `key`; a missing key is not an error."""

    async def _delete_many(self, keys: list[str]) -> None:
        for key in keys:
            await self._delete(key)

    @abstractmethod
    async def _read_url(self, key: str, served: Delivery) -> str:
        """A URL a browser can GET the object from (signed and expiring where possible),
        served with `served`'s type and disposition where the link can say so."""

    def _list(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Objects whose key may start with `prefix` (an async generator); the base drops
        any that do not, so a backend may list a little more (a whole folder). Not abstract:
        a client written before listing existed still stores and serves; only the operator
        commands that list (sweep) refuse it."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its objects")

    async def _close(self) -> None:
        return None

    def mount(self, app) -> None:
        """Add any HTTP routes this client serves (the local client's signed downloads)
        to Chainlit's FastAPI app. Most backends serve their own URLs: nothing to do."""
        return None
