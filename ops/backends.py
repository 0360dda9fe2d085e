"""Data layer + blob storage for an operator command, built from the app's settings or from
explicit URLs (`copy --from DB,STORAGE --to DB,STORAGE`).

The layer gets an in-memory journal: the app's journal file belongs to the app (one process
holds its lock, and the app replays it), and the operator's bulk writes go through the
backends' `_` methods, not the journal. Every layer is flushed and closed on the way out,
so a command reports success only once its writes are in the store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from settings import Settings

logger = logging.getLogger("chainlit").getChild("ops")


@dataclass(frozen=True)
class Endpoint:
    """Where data lives: a database URL and a storage URL."""

    database_url: str
    storage_url: str

    @classmethod
    def parse(cls, text: str, option: str) -> Endpoint:
        """`DATABASE_URL,STORAGE_URL` (neither URL may hold a comma; percent-encode one)."""
        database, sep, storage = text.partition(",")
        if not sep or not database.strip() or not storage.strip() or "," in storage:
            raise ValueError(f"{option} takes DATABASE_URL,STORAGE_URL (two URLs separated by one comma)")
        return cls(database.strip(), storage.strip())

    @classmethod
    def of(cls, settings: Settings) -> Endpoint:
        return cls(settings.database_url, settings.storage_url)

    def describe(self) -> dict[str, Any]:
        from settings import redact_url

        return {"database": redact_url(self.database_url), "storage": redact_url(self.storage_url)}


def is_chainlit_source(endpoint: Endpoint) -> bool:
    return endpoint.database_url.lower().startswith("chainlit+")


@asynccontextmanager
async def open_layer(settings: Settings, endpoint: Endpoint, *, create: bool) -> AsyncIterator[Any]:
    """Our data layer on `endpoint`, with its storage. `create`: a target, whose schema or
    table is created/upgraded as the app would; a source is never migrated (an export must
    not change what it reads)."""
    config = replace(settings, database_url=endpoint.database_url, storage_url=endpoint.storage_url,
                     journal_path=None, auto_migrate=create)
    storage = config.build_storage()
    try:
        layer = config.build_data_layer(storage=storage)
    except BaseException:
        await storage.close()
        raise
    try:
        yield layer
        await layer.flush()
    finally:
        await layer.close()  # closes the storage too
