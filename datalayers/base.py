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
* Ownership: a rating, a step or a thread write by a user who does not own the thread is
  refused (`NotYours`, a 404 to a client; a fire-and-forget write is dropped with a WARNING
  naming the user and the thread); a thread created by a step write gets the acting user
  as owner, and an ownerless thread is given one. Owners are remembered per process, so a
  step write costs no extra read once its thread has been seen.
* Ids are at most `MAX_ID_LENGTH` characters without NUL: a write with another is refused
  (`RequestError`, a 400), a read by one finds nothing.
* Cursors are signed with a secret from the settings; blobs are deleted after their rows
  (a failed blob delete is journaled and retried until done, never a half-deleted thread).
* Elements (`elements.Attachments`): writes by id only by the owner of the thread, declared
  types normalised, a failed save reported to the user and leaving nothing behind.
* Session revocations and API tokens (`credentials.Credentials`): direct writes.
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
from .credentials import Credentials
from .derived import DerivedStore, DerivedStores
from .elements import Attachments, sign_element_urls
from .errors import NotFound, NotYours, RequestError
from .journal import Entry, WriteJournal
from .listing import Listing
from .messages import MessagePages
from .owners import ThreadOwners
from .paging import CursorCodec, page_size, search_term
from .timestamps import utc_now
from .writeback import PERMANENT, TRANSIENT, UNKNOWN, WriteBack
from .writes import StepWrite, ThreadWrite, check_id, is_valid_id, with_step_defaults

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


class PersistentDataLayer(Listing, Credentials, MessagePages, BaseDataLayer):
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
                                on_rejected=self._after_rejected, concurrency=write_concurrency,
                                apply_batch=self._apply_batch, batch_key=self._batch_key)
        self._identifiers: dict[str, str] = {}
        self.owners = ThreadOwners(self.logger, self._thread_author)
        self.attachments = Attachments(self)
        self.derived = DerivedStores(self)

    # ------------------------------------------------------------------ operating
    async def start(self) -> None:
        """Replay writes a previous run left in the journal (also done on first use)."""
        await self.writes.start()

    def add_derived_store(self, store: DerivedStore) -> None:
        """Register a store of data derived from threads (the knowledge index): it is told to
        forget a thread, message or attachment when that is deleted (derived.py)."""
        self.derived.add(store)

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
        actor = current_user_identifier()
        if self.owners.refuses_at_once(kind, lane, actor):
            return  # a write into another user's thread: logged, and nothing stored
        await self.writes.submit(Entry(lane, kind, payload, actor))

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

    # Elements: the shared rules (ownership, blob first, reporting, cleanup) are in elements.py.
    @_queued
    async def create_element(self, element: Element):
        await self.attachments.create(element)

    @_queued
    async def delete_element(self, element_id: str, thread_id: str | None = None):
        await self.attachments.delete(element_id, thread_id)

    async def check_element_write(self, element_id: str, thread_id: str | None) -> None:
        """Raise `NotYours` unless the acting user may create, change or delete this element
        (for routes that must answer before Chainlit writes in the background)."""
        await self.attachments.check_write(element_id, thread_id or None, "change")

    async def _apply_entry(self, entry: Entry) -> None:
        if not await self.owners.may_apply(entry):
            return
        try:
            await self._apply_checked(entry)
        except NotYours as exc:
            if entry.kind != "step":
                raise
            # A step id that exists in another thread (a client chose it): the backend
            # left the stored step alone.
            self.logger.warning("refused: %s of thread %s by user %r: %s; nothing stored", entry.kind, entry.lane,
                                entry.actor, exc)

    async def _apply_checked(self, entry: Entry) -> None:
        payload = entry.payload
        if entry.kind == "step":
            await self._write_step(StepWrite.from_json(payload), entry.actor)
        elif entry.kind == "thread":
            await self._write_thread(ThreadWrite.from_json(payload), entry.actor)
        elif entry.kind == "step_delete":
            await self._delete_blobs(await self._remove_step(payload["id"], entry.lane or None), entry.lane)
            # Both keys: what is forgotten must be this thread's step (the lane was checked).
            await self.derived.forget(step_id=payload["id"], thread_id=entry.lane or None)
        elif entry.kind == "element":
            await self.attachments.apply_write(entry)
        elif entry.kind == "element_delete":
            if await self.attachments.apply_delete(entry):
                await self.derived.forget(element_id=payload["id"], thread_id=payload.get("threadId"))
        elif entry.kind == "blobs_delete":
            await self.attachments.apply_cleanup(entry)
        elif entry.kind == "derived_forget":
            await self.derived.apply(entry)
        else:
            raise ValueError(f"unknown journal entry kind {entry.kind!r}")

    def _batch_key(self, entry: Entry) -> str | None:
        """Step writes of one thread by one user may be applied together, when the backend
        writes several steps in one round trip (it overrides `_write_steps`)."""
        if entry.kind != "step" or type(self)._write_steps is PersistentDataLayer._write_steps:
            return None
        return f"step:{entry.actor or ''}"

    async def _apply_batch(self, entries: list[Entry]) -> None:
        # One lane, one actor (the batch key): one ownership check for all. A batch that
        # fails (a foreign step id among them) is applied again one entry at a time.
        if not await self.owners.may_apply(entries[0]):
            return
        await self._write_steps([StepWrite.from_json(e.payload) for e in entries], entries[0].actor)

    async def _write_steps(self, writes: list[StepWrite], actor: str | None) -> None:
        """Several step writes of one thread, in order. A backend that can apply them in one
        round trip overrides this; it must apply all or none of them."""
        for write in writes:
            await self._write_step(write, actor)

    async def _delete_blobs(self, keys: list[str], lane: str) -> None:
        """Delete blobs whose rows are gone; a failure is retried until done (elements.py)."""
        await self.attachments.delete_blobs(keys, lane)

    async def _after_rejected(self, entry: Entry, exc: BaseException) -> None:
        """A refused element row leaves its freshly uploaded blob behind: remove it unless
        a stored row still points at it."""
        if entry.kind == "element" and (key := entry.payload["row"].get("objectKey")):
            await self.attachments.discard_upload(key, entry.lane, entry.payload["id"])

    def _classify(self, exc: BaseException) -> str:
        if isinstance(exc, RequestError):  # the write's own fault, whatever the database said on the way
            return PERMANENT
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
        if not is_valid_id(thread_id):  # no such thread can exist: no database round trip
            return ""
        await self._settle(thread_id)
        author = await self._thread_author(thread_id)
        self.owners.remember(thread_id, author)
        return author or ""

    async def message_thread(self, step_id: str) -> str | None:
        """The thread a step is stored in (None: no such step), its pending writes applied
        first; for callers that name a message by its id alone (the HTTP API's ratings)."""
        if not is_valid_id(step_id):
            return None
        if lane := self.writes.pending_lane("step", step_id):
            await self._settle(lane)
        return await self._step_thread(step_id, None)

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        if not is_valid_id(thread_id):
            return None
        await self._settle(thread_id)
        thread = await self._read_thread(thread_id)
        if thread is None:
            return None
        self.owners.remember(thread_id, thread.get("userIdentifier"))
        for step in thread["steps"]:
            with_step_defaults(step)  # type: ignore[arg-type]
        await sign_element_urls(self.storage, thread["elements"])  # type: ignore[arg-type]
        return thread

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        if not (is_valid_id(thread_id) and is_valid_id(element_id)):
            return None  # no such id can be stored; some backends would refuse the lookup itself
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
        search = search_term(filters.search)
        if filters.feedback not in (None, 0, 1):
            raise RequestError("the feedback filter must be 0 or 1")
        await self._settle_user(owner)
        rows = await self._page_threads(owner, position, first + 1, search, filters.feedback)
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
    async def upsert_feedback(self, feedback: Feedback) -> str:
        """Rate a message of one's own thread. With `feedback.id`, that rating must exist
        and be this message's (a client never moves or overwrites another rating)."""
        if feedback.value not in (0, 1):
            raise RequestError("a rating's value must be 0 or 1")
        check_id(feedback.forId, "feedback forId")
        if feedback.id is not None:
            check_id(feedback.id, "feedback id")
        if lane := self.writes.pending_lane("step", feedback.forId):
            await self._settle(lane)
        missing = "message not found"  # the same text for a missing message and another user's
        thread_id = await self._step_thread(feedback.forId, feedback.threadId)
        if thread_id is None:  # a rating needs its message: no orphan feedback
            raise NotFound(missing)
        # Chainlit's /feedback routes check nobody's ownership.
        await self.owners.check(thread_id, current_user_identifier(), "rate messages in", missing)
        if feedback.id is not None and await self._feedback_thread(feedback.id) != thread_id:
            raise NotFound("rating not found")
        return await self._set_feedback(thread_id, feedback)

    async def delete_feedback(self, feedback_id: str) -> bool:
        """Remove a rating of one's own thread; False when there is no such rating."""
        if not is_valid_id(feedback_id):
            return False
        thread_id = await self._feedback_thread(feedback_id)
        if thread_id is None:
            return False
        await self.owners.check(thread_id, current_user_identifier(), "remove ratings in", "rating not found")
        return await self._remove_feedback(thread_id, feedback_id)

    async def delete_thread(self, thread_id: str):
        if not is_valid_id(thread_id):
            raise NotFound("thread not found")
        self.owners.forget(thread_id)
        await self._settle(thread_id)
        await self._delete_blobs(await self._remove_thread(thread_id), thread_id)
        await self.derived.forget(thread_id=thread_id)

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

    async def _element_thread(self, element_id: str, journaled: bool = False) -> str | None:
        """The thread an element with this id is stored in, if any."""
        raise NotImplementedError

    async def _thread_author(self, thread_id: str, journaled: bool = False) -> str | None:
        """The owner's identifier; `journaled`: called while applying a journaled write, so a
        failure is the journal's to report (it retries), not an error of its own."""
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

