"""Step writes, one request each on the hot path.

* A write that creates a step is ONE TransactWriteItems: the step (a Put that must not
  find it: a new step), the thread (created if missing; activity time moved; `_rev`
  bumped; the output appended to the search digest under its size condition; an owner
  given if it has none) and the step's locator (a Put that must not find it either). No
  read first. A thread this process has written before gets the lean form of that thread
  update (`thread_update`, `known`).
* A write that only updates a step is ONE UpdateItem (overwrites SET, fills with
  `if_not_exists`, metadata per key), conditional on the step existing with no attribute in
  blob storage; when it changes the output, a TransactWriteItems of that update and the
  digest append. Updates never move the thread's activity time (rating or favouriting an
  old message must not reorder the sidebar).
* Anything else takes the general path, as before the fast paths existed: read the step,
  `write.apply_to(stored)`, write it back conditional on `_rev` (large attributes moved to
  blob storage). That is: the step or its locator already exists for a create (a repeated
  create, an update that arrived first, a step id of another thread: refused there), the
  step is missing or has blobs for an update, its values
  are larger than the inline limit, or a condition did not hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import NotYours
from ..writes import StepWrite
from .client import CONFLICT_ATTEMPTS, DynamoDBError, Table, _backoff, retry_conflicts
from .items import (
    BLOBS,
    REV,
    TEXT_TRUNCATED,
    Expression,
    activity_sort_key,
    item_size,
    locator_key,
    serialize,
    step_key,
    storable,
    thread_key,
    update_expression,
)
from .large import LargeAttributes, put_versioned
from .search import DigestMemory, Written, digest_append, digest_text

CCF = "ConditionalCheckFailed"
#: A TransactWriteItems carries at most 4 MB: several new steps go together below this.
MAX_BATCH_BYTES = 2_000_000
#: DynamoDB refuses an expression string longer than 4 KB (a step with many metadata keys
#: written key by key could reach it): such a write takes the general path.
MAX_EXPRESSION = 4000


def _expressions_fit(request: dict[str, Any]) -> bool:
    return all(len(request.get(k, "")) <= MAX_EXPRESSION for k in ("UpdateExpression", "ConditionExpression"))


def _refused_path(exc: DynamoDBError) -> bool:
    """An update refused because a path it names is not what the condition assumed (a
    metadata that is not a map, on an endpoint that checks paths before conditions)."""
    return exc.code == "ValidationException" and "document path" in str(exc).lower()


def thread_update(table: str, thread_id: str, at: str, *, actor: str | None, actor_id: str | None,
                  may_create: bool, bump: bool, text: str | list[str] | None,
                  truncated: bool, known: Written | None = None) -> tuple[dict[str, Any], bool]:
    """The Update of the thread a step write touches, and whether it appends `text` (one
    step's, or several steps' written together) to the digest. `may_create`: create the
    thread when missing (a step may be its first write); otherwise the update requires it,
    so a deleted thread is never brought back. `bump`: its activity time becomes `at`. An
    ownerless thread gets `actor` as owner; an owned one keeps its owner. `_rev` moves, so a
    concurrent read-modify-write of the thread re-reads instead of writing back the digest
    it read.

    `known`: this process has written the item whole (`DigestMemory.known`), so every
    `if_not_exists` below would change nothing. The lean update leaves them out (5 clauses
    instead of 12) and instead requires the item to exist — with an owner when an actor
    writes, and with its digest when this process has appended to it. If it does not
    (deleted by another process), or the digest is full, the request is refused; the caller
    forgets the thread and sends the full update, which recreates the thread (owned) or
    marks the digest truncated as before.

    On DynamoDB the stored item is the same, and so are the write units (an update is
    billed by the item's size, not by its expression) and the requests, except one more
    when a lean update is refused: once per thread deleted by another process, once when
    its digest fills. An emulator that parses and evaluates every clause in Python (moto:
    several times per request) spends about half as long on the transaction."""
    e = Expression()
    sets: list[str] = []
    adds = [e.bump_rev()]
    conditions: list[str] = []
    when = order = ""
    if bump or (may_create and known is None):
        when, order = e.value(at), e.value(activity_sort_key(at, thread_id))
    if bump:
        sets += [f"{e.name('updatedAt')} = {when}", f"{e.name('UserThreadSK')} = {order}"]
    if known is not None:
        conditions.append(f"attribute_exists({e.name('UserThreadPK' if actor else 'PK')})")
    elif may_create:
        if not bump:
            sets += [f"{e.name(n)} = if_not_exists({e.name(n)}, {v})"
                     for n, v in (("updatedAt", when), ("UserThreadSK", order))]
        # `_textSince` equals `createdAt` only when the digest starts with the thread: a
        # thread written by Chainlit's layer gets a later one, and search does not trust
        # its digest to be complete.
        sets += [f"{e.name(n)} = if_not_exists({e.name(n)}, {v})"
                 for n, v in (("id", e.value(thread_id)), ("createdAt", when), ("_textSince", when),
                              ("metadata", e.value({})))]
    else:
        conditions.append(f"attribute_exists({e.name('PK')})")
    if actor and known is None:
        owner = [("userIdentifier", actor), ("UserThreadPK", f"USER#{actor}")]
        if actor_id:
            owner.append(("userId", actor_id))
        sets += [f"{e.name(n)} = if_not_exists({e.name(n)}, {e.value(v)})" for n, v in owner]
    appends = False
    if text:
        append = None if truncated else digest_append(e, [text] if isinstance(text, str) else text,
                                                      exists=known is not None and known.digest)
        if append is None:
            sets.append(f"{e.name(TEXT_TRUNCATED)} = {e.value(True)}")
        else:
            set_text, add_bytes, condition = append
            sets.append(set_text)
            adds.append(add_bytes)
            conditions.append(condition)
            appends = True
    request: dict[str, Any] = {"TableName": table, "Key": serialize(thread_key(thread_id)),
                               "UpdateExpression": update_expression(sets, adds), **e.kwargs()}
    if conditions:
        request["ConditionExpression"] = " AND ".join(conditions)
    return request, appends


def _clean(write: StepWrite) -> StepWrite:
    """The write without attribute names this layer reserves (a key attribute in a step
    dict would move or corrupt the item)."""
    return StepWrite(write.id, write.thread_id, storable(write.fill), storable(write.overwrite),
                     dict(write.fill_metadata), dict(write.overwrite_metadata), write.created, write.at)


def _reason(exc: DynamoDBError, index: int) -> str | None:
    if exc.code != "TransactionCanceledException" or index >= len(exc.reasons):
        return None
    return exc.reasons[index]


class StepWrites:
    def __init__(self, table: Table, large: LargeAttributes, digests: DigestMemory, logger: logging.Logger, *,
                 owner_id: Callable[[str | None], str | None],
                 delete_blobs: Callable[[list[str], str], Awaitable[None]]):
        self.table = table
        self.large = large
        self.digests = digests
        self.logger = logger
        self.owner_id = owner_id  # the cached user id of an identifier, or None
        self.delete_blobs = delete_blobs  # the base's journaled blob deletion

    async def write(self, write: StepWrite, actor: str | None) -> None:
        write = _clean(write)
        if write.created:
            await self._create(write, actor)
        else:
            await self._update(write, actor)

    @staticmethod
    def _ids(write: StepWrite) -> dict[str, Any]:
        return {"step_id": write.id, "thread_id": write.thread_id}

    # ------------------------------------------------------------------ create: one transaction
    def _new_step_puts(self, write: StepWrite, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The step as a conditional Put of the whole item (the same result as setting every
        attribute, and no update expression to evaluate: an UpdateExpression with one SET per
        attribute is the costliest part of a transaction for an emulator to parse), and its
        locator, each on condition that it does not exist yet.

        A locator that exists already — a client reusing another thread's step id, or one
        left behind by an interrupted write — cancels the transaction, and the general path
        decides (refusing the step if the locator names another thread). That costs a few
        requests in those rare cases and keeps the common case's condition the cheapest
        there is (for an emulator: DynamoDB charges nothing for conditions)."""
        def put_new(item: dict[str, Any]) -> dict[str, Any]:
            return {"Put": {"TableName": self.table.name, "Item": serialize(item),
                            "ConditionExpression": "attribute_not_exists(#pk)", "ExpressionAttributeNames": {"#pk": "PK"}}}

        return [put_new({**row, REV: 1}),
                put_new({**locator_key("STEP", write.id), "threadId": write.thread_id})]

    def _locator_put(self, write: StepWrite) -> dict[str, Any]:
        """The step's locator, unless it names another thread: a client chooses the ids of
        the messages it sends, and a step id of another user's thread must not be taken
        over (the locator decides where ratings and deletes go)."""
        e = Expression()
        return {"TableName": self.table.name,
                "Item": serialize({**locator_key("STEP", write.id), "threadId": write.thread_id}),
                "ConditionExpression": f"attribute_not_exists({e.name('PK')}) OR "
                                       f"{e.name('threadId')} = {e.value(write.thread_id)}", **e.kwargs()}

    async def write_many(self, writes: list[StepWrite], actor: str | None) -> None:
        """Several new steps of one thread in ONE TransactWriteItems: each step and its
        locator, and the thread once (activity time of the last, every output appended to
        the digest). All or nothing; anything the one-step paths handle specially (a step
        that exists, a large one, a full digest, a conflict) goes through them, in order."""
        writes = [_clean(w) for w in writes]
        rows = [{**w.new_row(), **step_key(w.thread_id, w.id)} for w in writes]
        thread_id = writes[0].thread_id
        if (len(writes) == 1 or not all(w.created for w in writes) or len({w.id for w in writes}) < len(writes)
                or any(w.thread_id != thread_id for w in writes) or not all(self.large.fits(r) for r in rows)
                or sum(item_size(r) for r in rows) > MAX_BATCH_BYTES):
            for write in writes:
                await self.write(write, actor)
            return
        texts = [digest_text(r.get("output")) for r in rows]
        items = [put for w, r in zip(writes, rows, strict=True) for put in self._new_step_puts(w, r)]
        known = self._known(thread_id, actor)
        while True:
            thread, appends = self._thread_update(thread_id, max(w.at for w in writes), actor, may_create=True,
                                                  text=[t for t in texts if t is not None], known=known)
            try:
                await self.table.transact([*items, {"Update": thread}], "create_step",
                                          {"thread_id": thread_id, "steps": len(writes)}, journaled=True)
                break
            except DynamoDBError as exc:
                if self._lean_refused(exc, len(items), thread_id, known):
                    known = None
                    continue
                if exc.code != "TransactionCanceledException" and not exc.too_large:
                    raise
                for write in writes:  # nothing was written: each takes its own path
                    await self.write(write, actor)
                return
        self._written(thread_id, actor, appends)
        if appends:
            for write, text in zip(writes, texts, strict=True):
                self.digests.appended(write.id, text)

    # ------------------------------------------------------------------ the thread part
    def _known(self, thread_id: str, actor: str | None) -> Written | None:
        return self.digests.known(thread_id, actor is not None, self.owner_id(actor) is not None)

    def _written(self, thread_id: str, actor: str | None, appends: bool) -> None:
        self.digests.written(thread_id, actor is not None, self.owner_id(actor) is not None, appends)

    def _thread_update(self, thread_id: str, at: str, actor: str | None, *, may_create: bool,
                       text: str | list[str] | None, known: Written | None,
                       truncated: bool | None = None) -> tuple[dict[str, Any], bool]:
        """The thread's Update for a step write of the fast paths: a create moves its
        activity, an update does not."""
        return thread_update(self.table.name, thread_id, at, actor=actor, actor_id=self.owner_id(actor),
                             may_create=may_create, bump=may_create, text=text, known=known,
                             truncated=self.digests.is_truncated(thread_id) if truncated is None else truncated)

    def _lean_refused(self, exc: DynamoDBError, index: int, thread_id: str, known: Written | None) -> bool:
        """The lean thread update (transaction item `index`) was refused: the thread is not
        as this process remembers it (deleted elsewhere), or its digest is full. It is
        forgotten, and the caller sends the full update, whose refusal means what it did
        before the lean one existed."""
        if known is None or _reason(exc, index) != CCF:
            return False
        self.digests.forget(thread_id)
        return True

    async def _create(self, write: StepWrite, actor: str | None) -> None:
        row = {**write.new_row(), **step_key(write.thread_id, write.id)}
        if not self.large.fits(row):
            return await self._general(write, actor)
        text = digest_text(row.get("output"))
        truncated = self.digests.is_truncated(write.thread_id)
        step, locator = self._new_step_puts(write, row)
        known = self._known(write.thread_id, actor)
        for attempt in range(CONFLICT_ATTEMPTS):
            thread, appends = self._thread_update(write.thread_id, write.at, actor, may_create=True, text=text,
                                                  known=known, truncated=truncated)
            try:
                await self.table.transact([step, {"Update": thread}, locator], "create_step",
                                          self._ids(write), journaled=True)
            except DynamoDBError as exc:
                if CCF in (_reason(exc, 0), _reason(exc, 2)) or exc.too_large:
                    # The step exists, its locator does (perhaps in another thread: refused
                    # there), or it is too large inline.
                    return await self._general(write, actor)
                if self._lean_refused(exc, 1, write.thread_id, known):
                    known = None
                    continue
                if appends and _reason(exc, 1) == CCF:
                    truncated = True  # the digest is full: mark it truncated instead
                    self.digests.truncated(write.thread_id)
                    continue
                if "TransactionConflict" in exc.reasons:
                    await asyncio.sleep(_backoff(attempt, base=0.005, cap=0.5))
                    continue
                raise
            self._written(write.thread_id, actor, appends)
            if appends:
                self.digests.appended(write.id, text)
            return
        raise DynamoDBError(f"create_step ({self._ids(write)}): transaction conflicts did not clear",
                            "TransactionConflict")

    # ------------------------------------------------------------------ update: one request
    def _step_update(self, write: StepWrite) -> dict[str, Any]:
        e = Expression()
        sets: list[str] = []
        removes: list[str] = []
        conditions = [f"attribute_exists({e.name('PK')})", f"attribute_not_exists({e.name(BLOBS)})"]
        for key, value in write.overwrite.items():
            sets.append(f"{e.name(key)} = {e.value(value, key)}")
        for key, value in write.fill.items():
            name = e.name(key)
            sets.append(f"{name} = if_not_exists({name}, {e.value(value, key)})")
            # A fill also applies over an empty value, which if_not_exists does not see:
            # such a step takes the general path.
            conditions.append(f"(attribute_not_exists({name}) OR (NOT attribute_type({name}, {e.value('NULL')}) "
                              f"AND {name} <> {e.value('')}))")
        if write.overwrite_metadata or write.fill_metadata:
            conditions.append(f"attribute_type({e.name('metadata')}, {e.value('M')})")
        for key, value in write.overwrite_metadata.items():
            if value is None:
                removes.append(e.path("metadata", key))
            else:
                sets.append(f"{e.path('metadata', key)} = {e.value(value, f'metadata.{key}')}")
        for key, value in write.fill_metadata.items():
            path = e.path("metadata", key)
            sets.append(f"{path} = if_not_exists({path}, {e.value(value, f'metadata.{key}')})")
        expression = update_expression(sets, [e.bump_rev()], removes)
        return {"TableName": self.table.name, "Key": serialize(step_key(write.thread_id, write.id)),
                "UpdateExpression": expression, "ConditionExpression": " AND ".join(conditions), **e.kwargs()}

    async def _update(self, write: StepWrite, actor: str | None) -> None:
        metadata = {**write.fill_metadata, **write.overwrite_metadata}
        if not self.large.fits({**write.values(), "metadata": metadata}):
            return await self._general(write, actor)
        step = self._step_update(write)
        if not _expressions_fit(step):
            return await self._general(write, actor)
        output = write.overwrite.get("output", write.fill.get("output"))
        text = digest_text(output)
        if text is not None and self.digests.already_appended(write.id, text):
            text = None
        truncated = self.digests.is_truncated(write.thread_id)
        known = self._known(write.thread_id, actor)
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                if text is None:
                    await self.table.call("update_item", "update_step", self._ids(write), journaled=True, **step)
                    return
                thread, appends = self._thread_update(write.thread_id, write.at, actor, may_create=False, text=text,
                                                      known=known, truncated=truncated)
                await self.table.transact([{"Update": step}, {"Update": thread}], "update_step", self._ids(write),
                                          journaled=True)
            except DynamoDBError as exc:
                if (exc.code == "ConditionalCheckFailedException" or _reason(exc, 0) == CCF or exc.too_large
                        or _refused_path(exc)):
                    return await self._general(write, actor)
                if self._lean_refused(exc, 1, write.thread_id, known):
                    known = None
                    continue
                if _reason(exc, 1) == CCF:
                    if appends:  # the digest is full (or the thread is gone): mark it truncated
                        truncated = True
                        self.digests.truncated(write.thread_id)
                    else:  # the thread is gone: never create it for an update
                        text = None
                    continue
                if "TransactionConflict" in exc.reasons:
                    await asyncio.sleep(_backoff(attempt, base=0.005, cap=0.5))
                    continue
                raise
            if appends:
                self.digests.appended(write.id, text)
                self.digests.appended_to(write.thread_id)
            return
        raise DynamoDBError(f"update_step ({self._ids(write)}): transaction conflicts did not clear",
                            "TransactionConflict")

    # ------------------------------------------------------------------ general path
    async def _touch_thread(self, write: StepWrite, actor: str | None, text: str | None, *,
                            may_create: bool, bump: bool) -> None:
        """The thread part of a step write on the general path, in its own request (before
        the step write: a touched thread without its step is harmless, a step without its
        thread could not be shown)."""
        truncated = self.digests.is_truncated(write.thread_id)
        for _ in range(2):
            request, appends = thread_update(self.table.name, write.thread_id, write.at, actor=actor,
                                             actor_id=self.owner_id(actor), may_create=may_create, bump=bump,
                                             text=text, truncated=truncated)
            try:
                await self.table.call("update_item", "step thread", self._ids(write), journaled=True, **request)
                return
            except DynamoDBError as exc:
                if exc.code != "ConditionalCheckFailedException":
                    raise
                if not appends:
                    return  # the thread is gone: an update never brings it back
                truncated = True
                self.digests.truncated(write.thread_id)

    async def _general(self, write: StepWrite, actor: str | None) -> None:
        operation = "create_step" if write.created else "update_step"
        ids = self._ids(write)
        key = step_key(write.thread_id, write.id)
        touched = False

        async def attempt() -> list[str]:
            nonlocal touched
            stored = await self.table.get(key, operation, ids, journaled=True)
            old_blobs: dict[str, str] = {}
            if stored is not None:
                stored, old_blobs = await self.large.hydrate(stored)
            item = write.apply_to(stored)
            if stored is None:
                item.update(key)
            text = digest_text(item.get("output"))
            if text is not None and (stored is not None and text == digest_text(stored.get("output"))
                                     or self.digests.already_appended(write.id, text)):
                text = None
            first_write = stored is None or write.created
            if stored is None and not touched:
                # The locator first: a step id of another thread stops the write here.
                try:
                    await self.table.call("put_item", operation, ids, journaled=True, **self._locator_put(write))
                except DynamoDBError as exc:
                    if exc.code == "ConditionalCheckFailedException":
                        raise NotYours(f"step {write.id} is in another thread") from None
                    raise
            if (first_write and not touched) or text is not None:
                await self._touch_thread(write, actor, text, may_create=first_write,
                                         bump=write.created and not touched)
                self.digests.appended(write.id, text)
                touched = touched or first_write
            if stored is not None and item == stored:
                return []
            return await put_versioned(self.table, self.large, operation, ids, item, stored, old_blobs, owner=actor,
                                       thread_id=write.thread_id, label=f"step-{write.id}", journaled=True)

        replaced = await retry_conflicts(operation, ids, attempt, self.logger)
        await self.delete_blobs(replaced, write.thread_id)
