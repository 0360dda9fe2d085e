"""`MessagePages`: a thread's messages a page at a time, oldest first (the HTTP API's
`GET /conversations/{id}/messages`), mixed into `PersistentDataLayer`.

A position is `(createdAt, id)` of the last step of the previous page (`createdAt` may be
None: such steps sort after all others, as in `get_thread`). A backend whose steps are
indexed by time (SQL: `steps(threadId, createdAt)`) implements `_page_steps` as one range
read; the default reads the whole thread and slices it, for backends that keep no order
(DynamoDB's step keys are ids, so a thread's steps are one Query either way).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .elements import sign_element_urls
from .paging import page_size
from .writes import is_valid_id, with_step_defaults

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: Steps a reader sees as the conversation: what the user and the model said, and tool steps.
MESSAGE_TYPES = ("user_message", "assistant_message", "tool")
Position = tuple[str | None, str]


def sort_key(step: dict) -> tuple[int, str, str]:
    created = step.get("createdAt")
    return (1 if created is None else 0, created or "", step.get("id") or "")


def after_position(step: dict, position: Position | None) -> bool:
    return position is None or sort_key(step) > sort_key({"createdAt": position[0], "id": position[1]})


class MessagePages:
    storage: Any
    if TYPE_CHECKING:
        _settle: Callable[[str], Awaitable[None]]
        _read_thread: Callable[[str], Awaitable[Any]]

    async def page_messages(self, thread_id: str, after: Position | None, limit: int,
                            kinds: Collection[str] = MESSAGE_TYPES) -> tuple[list[dict], list[dict]]:
        """Up to `limit` steps of `kinds` after `after`, oldest first, each with its rating
        (`feedback`), and the elements attached to them with freshly signed URLs; pending
        writes of the thread are applied first. Ownership is the caller's to check."""
        limit = page_size(limit)
        if not is_valid_id(thread_id):
            return [], []
        await self._settle(thread_id)
        steps, elements = await self._page_steps(thread_id, after, limit, tuple(kinds))
        for step in steps:
            with_step_defaults(step)
        await sign_element_urls(self.storage, elements)
        return steps, elements

    async def _page_steps(self, thread_id: str, after: Position | None, limit: int,
                          kinds: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
        """The page of steps (with `feedback`) and their elements; by default from the
        whole thread."""
        thread = await self._read_thread(thread_id)
        if thread is None:
            return [], []
        chosen = sorted((dict(s) for s in thread["steps"] if s.get("type") in kinds and after_position(s, after)),
                        key=sort_key)[:limit]
        ids = {step["id"] for step in chosen}
        return chosen, [dict(e) for e in thread["elements"] if e.get("forId") in ids]
