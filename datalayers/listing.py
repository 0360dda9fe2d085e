"""Listing every user and thread of a store, for the operator's export (`ops/`).

Chainlit's interface reads one user's sidebar at a time; an export needs all of them, and
a subject-access export or an incremental backup needs one user's or those changed since a
time. The public methods here page through the store (`LIST_PAGE` rows per round trip, so
memory stays constant whatever its size); a backend implements `_list_users` and
`_list_threads`, each one paged query. Whole threads are read with `get_thread`.

Rows are plain dicts:

* user: `id`, `identifier`, `metadata`, `createdAt`
* thread: `id`, `userIdentifier` (the owner, or None), `createdAt`, `updatedAt` (last
  activity), and where the backend has them in the row: `name`, `tags`, `metadata`
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .timestamps import normalize_timestamp

if TYPE_CHECKING:
    from .writes import StepWrite

LIST_PAGE = 500


class Listing:
    async def iter_users(self, page: int = LIST_PAGE) -> AsyncIterator[dict[str, Any]]:
        """Every user, one page per round trip (order: the backend's, stable)."""
        position: Any = None
        while True:
            rows, position = await self._list_users(position, page)
            for row in rows:
                yield row
            if position is None:
                return

    async def iter_threads(self, user_id: str | None = None, changed_since: str | None = None,
                           page: int = LIST_PAGE) -> AsyncIterator[dict[str, Any]]:
        """Every thread — or those owned by the user with identifier `user_id`, or those
        active at or after `changed_since` (an ISO-8601 time) — one page per round trip."""
        since = normalize_timestamp(changed_since) if changed_since else None
        position: Any = None
        while True:
            rows, position = await self._list_threads(position, page, user_id, since)
            for row in rows:
                yield row
            if position is None:
                return

    # ---- for backends: one paged query each; the position is the backend's own cursor
    # (None: start / no more pages).
    async def _list_users(self, position: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot list users")

    async def _list_threads(self, position: Any, limit: int, user_id: str | None,
                            since: str | None) -> tuple[list[dict[str, Any]], Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot list threads")

    async def _import_steps(self, writes: list[StepWrite], actor: str | None) -> None:
        """Several steps of one thread, for an import: the journal's rules (`_write_steps`);
        a backend may do them in fewer transactions, all or none."""
        await self._write_steps(writes, actor)  # type: ignore[attr-defined]
