"""The stores an operator command works on — the app's data layer, blob storage and
knowledge index, built from the app's settings — and how a command finishes with them.

The data layer gets an in-memory write journal: the app's journal file
(`<APP_DATA_DIR>/journal.sqlite3`) belongs to the running app, which holds its lock, and an
operator command must neither wait for that lock nor leave entries behind in it that the
app would replay as its own. What the command itself journals (a blob delete the store
refused, retried in the background) must therefore be done before it reports: `finish`
waits for it, and says what could not be done rather than dropping it silently.
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
    storage = settings.build_storage()
    layer = replace(settings, journal_path=None).build_data_layer(storage=storage)
    index = None
    try:
        if hasattr(layer, "start"):
            await layer.start()
        if knowledge:
            index = _knowledge_index(settings)
            if index is not None:
                # No embedding size: deleting and counting chunks needs none.
                await index.start(None)
        yield Stores(layer, storage, index)
    finally:
        try:
            if index is not None:
                await index.close()
        finally:
            await layer.close()
