"""The stores an operator command works on — a data layer with its blob storage, built from
the app's settings or from explicit URLs (`copy --from DB,STORAGE --to DB,STORAGE`), and the
knowledge index — and how a command finishes with them.

The data layer gets an in-memory write journal: the app's journal file
(`<APP_DATA_DIR>/journal.sqlite3`) belongs to the running app, which holds its lock, and an
operator command must neither wait for that lock nor leave entries behind in it that the
app would replay as its own. The operator's bulk writes go through the backends' `_`
methods, not the journal; what a command does journal (a blob delete the store refused,
retried in the background) must be done before it reports: `open_layer` flushes on the way
out, and `Stores.finish` waits with a limit and says what could not be done rather than
dropping it silently.
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

#: How long a command waits, at the end, for the writes it journaled (blob deletes retried).
FLUSH_SECONDS = 30.0


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
async def open_layer(settings: Settings, endpoint: Endpoint, *, create: bool, flush: bool = True) -> AsyncIterator[Any]:
    """Our data layer on `endpoint`, with its storage (`.storage`). `create`: a target, whose
    schema or table is created/upgraded as the app would; a source is never migrated (an
    export must not change what it reads). `flush`: on the way out, wait for every journaled
    write (a command that reports what is left undone waits with a limit instead)."""
    config = replace(settings, database_url=endpoint.database_url, storage_url=endpoint.storage_url,
                     journal_path=None, auto_migrate=create)
    storage = config.build_storage()
    try:
        layer = config.build_data_layer(storage=storage)
    except BaseException:
        await storage.close()
        raise
    try:
        if hasattr(layer, "start"):  # a developer's own layer (DATA_LAYER_CLASS) may have none
            await layer.start()
        yield layer
        if flush and hasattr(layer, "flush"):
            await layer.flush()
    finally:
        await layer.close()  # closes the storage too


@dataclass
class Stores:
    layer: Any
    storage: Any
    knowledge: Any = None

    async def finish(self, timeout: float = FLUSH_SECONDS) -> int:
        """Wait for the journaled writes of this run; return how many are still not done
        (0 when everything is in the stores)."""
        flush = getattr(self.layer, "flush", None)
        if flush is None:
            return 0
        await flush(timeout)
        pending, _ = self.layer.pending()
        return int(pending) + int(getattr(self.layer.writes, "rejected", 0))


def _knowledge_index(settings: Settings) -> Any:
    """The configured knowledge index, or None (KNOWLEDGE_URL off, or settings without it)."""
    build = getattr(settings, "build_knowledge_index", None)
    return build() if build is not None else None


@asynccontextmanager
async def open_stores(settings: Settings, *, knowledge: bool = False) -> AsyncIterator[Stores]:
    """The app's stores for one command; closed on exit (the layer closes its storage)."""
    async with open_layer(settings, Endpoint.of(settings), create=settings.auto_migrate, flush=False) as layer:
        index = _knowledge_index(settings) if knowledge else None
        try:
            if index is not None:
                # No embedding size: deleting and counting chunks needs none.
                await index.start(None)
            yield Stores(layer, layer.storage, index)
        finally:
            if index is not None:
                await index.close()
