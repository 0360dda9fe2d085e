"""In-memory blob storage: for tests and for developers' own test suites.

Read URLs are `memory://` links (not fetchable over HTTP); `signs_urls` is False so the
storage contract knows not to expect signature checks here.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from ._url import expiry_from, query_params
from .base import BlobStorage, ObjectExists, ObjectNotFound, StoredObject


class MemoryStorage(BlobStorage):
    signs_urls = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.objects: dict[str, tuple[bytes, str, str | None]] = {}
        self.modified: dict[str, datetime] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, data_dir: Path | None = None, secret: bytes | None = None) -> MemoryStorage:
        """`memory://` (optionally `?expiry=SECONDS`); data_dir and secret are unused."""
        if urlsplit(url).scheme != "memory":
            raise ValueError(f"not a memory:// URL: {url!r}")
        return cls(url_expiry_seconds=expiry_from(query_params(url)))

    async def _upload(self, key, body, mime, overwrite, content_disposition):
        async with self._lock:
            if not overwrite and key in self.objects:
                raise ObjectExists(f"object already exists: {key}")
            self.objects[key] = (body, mime, content_disposition)
            self.modified[key] = datetime.now(UTC)

    async def _read(self, key):
        try:
            return self.objects[key][0]
        except KeyError:
            raise ObjectNotFound(f"no such object: {key}") from None

    async def _delete(self, key):
        self.objects.pop(key, None)
        self.modified.pop(key, None)

    async def _list(self, prefix):
        # A snapshot of the keys: uploads and deletes during the listing must not break it.
        for key in sorted(k for k in self.objects if k.startswith(prefix)):
            entry = self.objects.get(key)
            if entry is not None:
                yield StoredObject(key, len(entry[0]), self.modified.get(key) or datetime.now(UTC))

    async def _read_url(self, key, served):
        return "memory://" + quote(key)
