"""`PersistentDataLayer`: Chainlit's `BaseDataLayer`, with the rules every backend shares
done once, here; a backend implements small `_` methods (one per database operation).

What the public methods do for every backend:

* **Writes Chainlit fires and forgets** (`update_thread`, `create_step`, `update_step`,
  `delete_step`, `create_element`'s row, `delete_element`) are checked, journaled durably
  (`journal.py`) and return; `writeback.py` applies them in order per thread, coalesced,
  retried through outages, replayed after a restart. A bad write raises at once.
* **Reads** of a thread wait (at most `read_wait` seconds) for its pending writes, so a
  caller sees what it wrote.
* Chainlit's `@queue_until_user_message` is applied to the five methods that need it —
  also to a subclass's overrides (`__init_subclass__`), which Python would otherwise drop.
* Ownership: a rating on another user's thread is refused; a thread created by a step
  write gets the acting user as owner, and an ownerless thread is given one.
* Cursors are signed with a secret from the settings; blobs are deleted after their rows
  (a failed blob delete is journaled and retried, never a half-deleted thread).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from os import PathLike
from typing import TYPE_CHECKING, Any

from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User

from .actor import current_session_thread, current_user_identifier
from .elements import element_row, sign_element_urls, upload_element
from .journal import Entry, WriteJournal
from .paging import CursorCodec, page_size
from .timestamps import utc_now
from .writeback import PERMANENT, TRANSIENT, UNKNOWN, WriteBack
from .writes import StepWrite, ThreadWrite, check_id, with_step_defaults

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

    from storage.base import BlobStorage

QUEUED_METHODS = ("create_element", "delete_element", "create_step", "update_step", "delete_step")


def _queued(method):
    """Chainlit's decorator, once: writes before the first user message wait for it."""
    if getattr(method, "_queued_until_user_message", False):
        return method
    wrapped = queue_until_user_message()(method)
    wrapped._queued_until_user_message = True
    return wrapped


def _merge_entries(earlier: Entry, later: Entry) -> bool:
    """Fold a later write of the same step or thread into a waiting earlier one."""
    if earlier.kind != later.kind or earlier.payload.get("id") != later.payload.get("id"):
        return False
    if earlier.actor and later.actor and earlier.actor != later.actor:
        return False
    record: Any
    if earlier.kind == "step":
        record = StepWrite.from_json(earlier.payload)
        record.merge(StepWrite.from_json(later.payload))
    elif earlier.kind == "thread":
        record = ThreadWrite.from_json(earlier.payload)
        record.merge(ThreadWrite.from_json(later.payload))
    else:
        return False
    earlier.payload = record.to_json()
    earlier.actor = earlier.actor or later.actor
    return True


class PersistentDataLayer(BaseDataLayer):
    logger: logging.Logger = logging.getLogger("chainlit")
    #: Saving lags when a write has waited this long: the status says so, the chat tells the user.
    lag_seconds = 3.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in QUEUED_METHODS:
            if name in cls.__dict__:
                setattr(cls, name, _queued(cls.__dict__[name]))

    def __init__(
        self,
        *,
        storage: BlobStorage | None = None,
        cursor_secret: bytes | None = None,
        journal: WriteJournal | str | PathLike | None = None,
        read_wait: float = 5.0,
        write_concurrency: int = 8,
    ):
        self.storage = storage
        # Without a secret from the settings, cursors are valid for this instance only.
        self.cursors = CursorCodec(cursor_secret or secrets.token_bytes(32))
        if not isinstance(journal, WriteJournal):
            journal = WriteJournal(journal)
        self.read_wait = read_wait
        self.writes = WriteBack(journal, self._apply_entry, self._classify, _merge_entries, self.logger,
                                on_rejected=self._after_rejected, concurrency=write_concurrency)
        self._identifiers: dict[str, str] = {}

    # ------------------------------------------------------------------ operating
    async def start(self) -> None:
        """Replay writes a previous run left in the journal (also done on first use)."""
        await self.writes.start()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every journaled write is in the database; False if `timeout` ran out."""
        return await self.writes.flush(timeout)

    def pending(self, thread_id: str | None = None) -> tuple[int, float]:
        """(writes not yet in the database, age of the oldest in seconds), for one thread or all."""
        return self.writes.backlog(thread_id)

    def status(self) -> dict[str, Any]:
        """The write backlog, for the status route: `degraded` while writes are failing or
        the oldest pending one is older than `lag_seconds`."""
        count, oldest = self.writes.backlog()
        return {"pending": count, "oldest_seconds": round(oldest, 3), "rejected": self.writes.rejected,
                "degraded": self.writes.degraded or oldest > self.lag_seconds,
                "journal": str(self.writes.journal.path or "memory")}

    async def close(self) -> None:
        await self.writes.close()
        await self._close()
        if self.storage is not None:
            await self.storage.close()

    async def build_debug_url(self) -> str:
        return ""

    # ------------------------------------------------------------------ users
    def _remember(self, user: PersistedUser | None) -> PersistedUser | None:
        if user is not None:
            self._identifiers[user.id] = user.identifier
            if len(self._identifiers) > 10_000:
                self._identifiers.pop(next(iter(self._identifiers)))
        return user

    async def get_user(self, identifier: str) -> PersistedUser | None:
        return self._remember(await self._get_user(identifier))

    async def create_user(self, user: User) -> PersistedUser | None:
        metadata = dict(user.metadata or {})
        if user.display_name and "display_name" not in metadata:
            metadata["display_name"] = user.display_name
        return self._remember(await self._upsert_user(user.identifier, metadata))

    # ------------------------------------------------------------------ journaled writes
    async def _submit(self, lane: str, kind: str, payload: dict) -> None:
        await self.writes.submit(Entry(lane, kind, payload, current_user_identifier()))

    async def update_thread(self, thread_id: str, name: str | None = None, user_id: str | None = None,
                            metadata: dict | None = None, tags: list[str] | None = None):
        write = ThreadWrite.from_call(thread_id, name, user_id, metadata, tags)
        await self._submit(thread_id, "thread", write.to_json())

    @_queued
    async def create_step(self, step_dict: StepDict):
        write = StepWrite.from_step(dict(step_dict), overwrite=False)
        await self._submit(write.thread_id, "step", write.to_json())

    @_queued
    async def update_step(self, step_dict: StepDict):
        write = StepWrite.from_step(dict(step_dict), overwrite=True)
        await self._submit(write.thread_id, "step", write.to_json())

    @_queued
    async def delete_step(self, step_id: str):
        check_id(step_id, "step id")
        await self._submit(await self._lane_of_step(step_id), "step_delete", {"id": step_id})

    async def _lane_of_step(self, step_id: str) -> str:
        """The thread a write about this step is ordered in: a pending write's, else the
        stored step's, else (database unreachable) the session's."""
        if lane := self.writes.pending_lane("step", step_id):
            return lane
        try:
            if stored := await self._step_thread(step_id, None):
                return stored
        except Exception as exc:  # unreachable now: the write is journaled all the same
            self.logger.debug("thread of step %s unknown (%s); ordering it in the session's", step_id,
                              type(exc).__name__)
        return current_session_thread() or ""

    @_queued
    async def create_element(self, element: Element):
        check_id(element.id, "element id")
        check_id(element.thread_id, "element threadId")
        owner = current_user_identifier() or await self.get_thread_author(element.thread_id) or None
        object_key = await upload_element(self.storage, element, owner)
        await self._submit(element.thread_id, "element", {"id": element.id, "row": element_row(element, object_key)})

    @_queued
    async def delete_element(self, element_id: str, thread_id: str | None = None):
        check_id(element_id, "element id")
        lane = thread_id or current_session_thread() or ""
        await self._submit(lane, "element_delete", {"id": element_id, "threadId": thread_id})

    async def _apply_entry(self, entry: Entry) -> None:
        payload = entry.payload
        if entry.kind == "step":
            await self._write_step(StepWrite.from_json(payload), entry.actor)
        elif entry.kind == "thread":
            await self._write_thread(ThreadWrite.from_json(payload), entry.actor)
        elif entry.kind == "step_delete":
            await self._delete_blobs(await self._remove_step(payload["id"], entry.lane or None), entry.lane)
        elif entry.kind == "element":
            await self._delete_blobs(await self._write_element(payload["row"], entry.actor), entry.lane)
        elif entry.kind == "element_delete":
            await self._delete_blobs(await self._remove_element(payload["id"], payload.get("threadId")), entry.lane)
        elif entry.kind == "blobs_delete":
            if self.storage is not None:
                await self.storage.delete_files(payload["keys"])
        else:
            raise ValueError(f"unknown journal entry kind {entry.kind!r}")

    async def _delete_blobs(self, keys: list[str], lane: str) -> None:
        """Delete blobs whose rows are gone. A failure is journaled and retried, so the
        row change (already committed) is never undone or repeated for it."""
        keys = [k for k in keys if k]
        if not keys or self.storage is None:
            return
        try:
            await self.storage.delete_files(keys)
        except Exception as exc:
            self.logger.warning("%d blob(s) of thread %s could not be deleted yet (%s); retrying from the journal",
                                len(keys), lane, type(exc).__name__)
            await self.writes.submit(Entry(lane, "blobs_delete", {"keys": keys}, None))

    async def _after_rejected(self, entry: Entry, exc: BaseException) -> None:
        """A refused element row leaves its freshly uploaded blob behind: remove it unless
        a stored row still points at it."""
        if entry.kind != "element" or self.storage is None:
            return
        key = entry.payload["row"].get("objectKey")
        if key and await self._read_element(entry.lane, entry.payload["id"]) is None:
            await self.storage.delete_files([key])

    def _classify(self, exc: BaseException) -> str:
        kind = self._failure_kind(exc)
        if kind is not None:
            return kind
        if isinstance(exc, (ValueError, TypeError, PermissionError, LookupError)):
            return PERMANENT
        if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return TRANSIENT
        return UNKNOWN

    # ------------------------------------------------------------------ reads
    async def get_current_timestamp(self) -> str:
        """The time as every layer stores it; Chainlit's SQL layers offer this and apps call it."""
        return utc_now()

    async def _settle(self, thread_id: str) -> None:
        await self.writes.settle([thread_id], self.read_wait)

    async def get_thread_author(self, thread_id: str) -> str:
        await self._settle(thread_id)
        return await self._thread_author(thread_id) or ""

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        await self._settle(thread_id)
        thread = await self._read_thread(thread_id)
        if thread is None:
            return None
        for step in thread["steps"]:
            with_step_defaults(step)  # type: ignore[arg-type]
        await sign_element_urls(self.storage, thread["elements"])  # type: ignore[arg-type]
        return thread

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        await self._settle(thread_id)
        element = await self._read_element(thread_id, element_id)
        if element is not None:
            await sign_element_urls(self.storage, [element])
        return element  # type: ignore[return-value]

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        first = page_size(pagination.first)
        if not filters.userId:  # Chainlit always sends it; without it we would list everyone's
            raise ValueError("list_threads needs filters.userId")
        owner = filters.userId
        position = self.cursors.decode(owner, pagination.cursor) if pagination.cursor else None
        await self._settle_user(owner)
        rows = await self._page_threads(owner, position, first + 1, filters.search or None, filters.feedback)
        has_next = len(rows) > first
        rows = rows[:first]
        page = PageInfo(
            hasNextPage=has_next,
            startCursor=self.cursors.encode(owner, rows[0][1]) if rows else None,
            endCursor=self.cursors.encode(owner, rows[-1][1]) if rows else None,
        )
        return PaginatedResponse(pageInfo=page, data=[thread for thread, _ in rows])

    async def _settle_user(self, user_id: str) -> None:
        await self.writes.settle(self.writes.lanes_of(self._identifiers.get(user_id), user_id), self.read_wait)

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        await self._settle_user(user_id)
        return [with_step_defaults(s) for s in await self._favorite_steps(user_id)]  # type: ignore[misc]

    # ------------------------------------------------------------------ direct writes
    async def _check_owner(self, thread_id: str, action: str) -> None:
        """Chainlit's /feedback routes check nobody's ownership: refuse another user's thread."""
        actor = current_user_identifier()
        if actor is None:
            return
        author = await self._thread_author(thread_id)
        if author and author != actor:
            raise PermissionError(f"user {actor!r} may not {action} in thread {thread_id!r}")

    async def upsert_feedback(self, feedback: Feedback) -> str:
        if feedback.value not in (0, 1):
            raise ValueError(f"feedback value must be 0 or 1, got {feedback.value!r}")
        check_id(feedback.forId, "feedback forId")
        if lane := self.writes.pending_lane("step", feedback.forId):
            await self._settle(lane)
        thread_id = await self._step_thread(feedback.forId, feedback.threadId)
        if thread_id is None:  # a rating needs its message: no orphan feedback
            raise ValueError(f"feedback for unknown step {feedback.forId!r}")
        await self._check_owner(thread_id, "rate messages")
        return await self._set_feedback(thread_id, feedback)

    async def delete_feedback(self, feedback_id: str) -> bool:
        if not feedback_id:
            return False
        thread_id = await self._feedback_thread(feedback_id)
        if thread_id is None:
            return False
        await self._check_owner(thread_id, "remove ratings")
        return await self._remove_feedback(thread_id, feedback_id)

    async def delete_thread(self, thread_id: str):
        await self._settle(thread_id)
        await self._delete_blobs(await self._remove_thread(thread_id), thread_id)

    # ------------------------------------------------------------------ for backends
    # Each is one database operation; the public methods above call them.
    def _failure_kind(self, exc: BaseException) -> str | None:
        """TRANSIENT, PERMANENT or UNKNOWN for a failed journaled write; None: the base's rule."""
        return None

    async def _get_user(self, identifier: str) -> PersistedUser | None:
        raise NotImplementedError

    async def _upsert_user(self, identifier: str, metadata: dict) -> PersistedUser:
        raise NotImplementedError

    async def _write_thread(self, write: ThreadWrite, actor: str | None) -> None:
        raise NotImplementedError

    async def _write_step(self, write: StepWrite, actor: str | None) -> None:
        """Upsert the step and create/touch its thread, giving it `actor` as owner if it has none."""
        raise NotImplementedError

    async def _remove_step(self, step_id: str, thread_hint: str | None) -> list[str]:
        """Delete the step, its feedback and elements; return the blob keys to delete."""
        raise NotImplementedError

    async def _write_element(self, row: dict, actor: str | None) -> list[str]:
        """Upsert the element row; return the keys of blobs it no longer uses."""
        raise NotImplementedError

    async def _remove_element(self, element_id: str, thread_id: str | None) -> list[str]:
        raise NotImplementedError

    async def _thread_author(self, thread_id: str) -> str | None:
        raise NotImplementedError

    async def _read_thread(self, thread_id: str) -> ThreadDict | None:
        raise NotImplementedError

    async def _read_element(self, thread_id: str, element_id: str) -> dict | None:
        raise NotImplementedError

    async def _page_threads(self, user_id: str, position: dict | None, limit: int, search: str | None,
                            feedback: int | None) -> list[tuple[ThreadDict, dict]]:
        """Up to `limit` of the user's threads after `position`, most recently active first,
        each with the cursor position that follows it."""
        raise NotImplementedError

    async def _favorite_steps(self, user_id: str) -> list[dict]:
        raise NotImplementedError

    async def _step_thread(self, step_id: str, thread_hint: str | None) -> str | None:
        raise NotImplementedError

    async def _set_feedback(self, thread_id: str, feedback: Feedback) -> str:
        raise NotImplementedError

    async def _feedback_thread(self, feedback_id: str) -> str | None:
        raise NotImplementedError

    async def _remove_feedback(self, thread_id: str, feedback_id: str) -> bool:
        raise NotImplementedError

    async def _remove_thread(self, thread_id: str) -> list[str]:
        raise NotImplementedError

    async def _close(self) -> None:
        return None

