"""Loading portable records (`records.py`) into a store: the import's target side, shared
by `import` (from an archive) and `copy`.

What it keeps: thread, step, element ids; createdAt of threads and steps; a thread's last
activity (`updatedAt`); names, tags, metadata; the owner, matched by identifier (user ids
differ between backends, so they are remapped); element rows and their blob bytes under the
same object keys. What the target decides: user ids and their createdAt for users it did
not have, rating ids (DynamoDB derives one from its message).

How: each thread is read from the target first (`get_thread`) and compared with the
record, kind by kind; only what is new or different is written, so a second run writes
nothing and reports 0 changes, and a run killed half-way is finished by running it again
(the progress file only saves re-reading the threads already done). Writes go through the
backends' own `_` methods — one operation each, with the rules every write follows (the
owner set once, never replaced; a step id of another thread refused) — not through the
journal, whose background replay belongs to the app. Blobs are uploaded before the element
row that points at them; a blob the target already holds with the same bytes is not
rewritten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from chainlit.types import Feedback

from datalayers.timestamps import utc_now
from datalayers.writes import StepWrite, ThreadWrite
from storage.base import ObjectNotFound

from .exporter import BLOB_SHA, BLOB_SIZE, ordered_map
from .records import Bundle, bundle_from_thread, comparable, keyed, sha256_hex, thread_record

logger = logging.getLogger("chainlit").getChild("ops.import")

CHANGE_KINDS = ("users", "threads", "steps", "elements", "feedback")


def _empty_counts() -> dict[str, dict[str, int]]:
    counts = {kind: {"created": 0, "changed": 0, "unchanged": 0} for kind in CHANGE_KINDS}
    counts["blobs"] = {"uploaded": 0, "unchanged": 0, "bytes": 0}
    return counts


class Importer:
    def __init__(self, layer: Any, storage: Any, *, dry_run: bool = False, concurrency: int = 8):
        self.layer = layer
        self.storage = storage
        self.dry_run = dry_run
        self.concurrency = concurrency
        self.counts = _empty_counts()
        self._user_ids: dict[str, str] = {}
        self._user_lock = asyncio.Lock()

    # ------------------------------------------------------------------ users
    async def import_user(self, record: dict[str, Any]) -> None:
        identifier = record["identifier"]
        existing = await self.layer.get_user(identifier)
        if existing is not None:
            self._user_ids[identifier] = existing.id
            if comparable("users", {"identifier": identifier, "metadata": existing.metadata}) == \
                    comparable("users", record):
                self.counts["users"]["unchanged"] += 1
                return
        self.counts["users"]["changed" if existing else "created"] += 1
        if not self.dry_run:
            stored = await self.layer._upsert_user(identifier, dict(record.get("metadata") or {}))
            self._user_ids[identifier] = stored.id

    async def _owner_id(self, identifier: str | None) -> str | None:
        """The target's id of a thread owner; a user the archive did not list is created
        (with no metadata), as the app would on their next login."""
        if not identifier:
            return None
        if identifier in self._user_ids:
            return self._user_ids[identifier]
        async with self._user_lock:
            if identifier not in self._user_ids:
                existing = await self.layer.get_user(identifier)
                if existing is None:
                    self.counts["users"]["created"] += 1
                    if self.dry_run:
                        self._user_ids[identifier] = ""
                        return ""
                    existing = await self.layer._upsert_user(identifier, {})
                self._user_ids[identifier] = existing.id
        return self._user_ids[identifier]

    # ------------------------------------------------------------------ threads
    def _diff(self, kind: str, wanted: list[dict[str, Any]], stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of `wanted` that the target lacks or holds differently (counted)."""
        have = keyed(kind, stored)
        key = "forId" if kind == "feedback" else "id"
        todo = []
        for record in wanted:
            current = have.get(str(record[key]))
            if current is not None and current == comparable(kind, _stored_form(kind, record)):
                self.counts[kind]["unchanged"] += 1
                continue
            self.counts[kind]["changed" if current is not None else "created"] += 1
            todo.append(record)
        return todo

    async def import_bundle(self, bundle: Bundle) -> bool:
        """Bring one thread up to the record; True if anything was (or would be) written."""
        stored = await self.layer.get_thread(bundle.id)
        current = bundle_from_thread(dict(stored), None) if stored is not None else Bundle(thread={})
        thread = bundle.thread
        thread_differs = stored is None or comparable("threads", thread_record(dict(stored), None)) != \
            comparable("threads", thread)
        if thread_differs:
            self.counts["threads"]["changed" if stored is not None else "created"] += 1
        else:
            self.counts["threads"]["unchanged"] += 1
        steps = self._diff("steps", bundle.steps, current.steps)
        elements = self._diff("elements", bundle.elements, current.elements)
        feedback = self._diff("feedback", bundle.feedback, current.feedback)
        if self.dry_run or not (thread_differs or steps or elements or feedback):
            return bool(thread_differs or steps or elements or feedback)
        owner = thread.get("owner")
        owner_id = await self._owner_id(owner)
        if thread_differs:
            await self.layer._write_thread(ThreadWrite(
                thread["id"], thread.get("name"), owner_id or None, dict(thread.get("metadata") or {}),
                thread.get("tags"), at=thread.get("createdAt") or thread.get("updatedAt") or utc_now()), None)
        if steps:
            await self.layer._import_steps(self._step_writes(thread, steps), owner)
        for element in elements:
            await self._write_element(element, bundle, owner)
        for rating in feedback:
            await self.layer._set_feedback(bundle.id, Feedback(
                forId=rating["forId"], value=rating["value"], threadId=bundle.id, comment=rating.get("comment")))
        return True

    @staticmethod
    def _step_writes(thread: dict[str, Any], steps: list[dict[str, Any]]) -> list[StepWrite]:
        writes = []
        for step in steps:
            write = StepWrite.from_step(step, overwrite=True)
            # A created step moves the thread's activity to `at`; the last write moves it to
            # the thread's own last activity, so the sidebar order is the source's.
            write.created = True
            write.at = step.get("createdAt") or thread.get("createdAt") or write.at
            writes.append(write)
        writes[-1].at = max(writes[-1].at, thread.get("updatedAt") or "")
        return writes

    async def _write_element(self, element: dict[str, Any], bundle: Bundle, owner: str | None) -> None:
        row = _stored_form("elements", element)
        key, digest = element.get("objectKey"), element.get(BLOB_SHA)
        if key and digest and bundle.read_blob is not None:
            if await self._holds(key, digest, element.get(BLOB_SIZE)):
                self.counts["blobs"]["unchanged"] += 1
            else:
                data = await bundle.read_blob(digest, element)
                if sha256_hex(data) != digest:
                    raise ValueError(f"element {element['id']}: blob bytes do not match their SHA-256 {digest}")
                await self.storage.upload_file(key, data, mime=element.get("mime") or "application/octet-stream")
                self.counts["blobs"]["uploaded"] += 1
                self.counts["blobs"]["bytes"] += len(data)
        unused = await self.layer._write_element(row, owner)
        if unused:
            await self.layer.attachments.delete_blobs(unused, bundle.id)

    async def _holds(self, key: str, digest: str, size: Any) -> bool:
        """Whether the target already has exactly these bytes under `key`."""
        try:
            async for item in self.storage.list_objects(key):
                if item.key == key:
                    if item.size != size:
                        return False
                    break
            else:
                return False
            return sha256_hex(await self.storage.read_file(key)) == digest
        except ObjectNotFound:
            return False

    # ------------------------------------------------------------------ the run
    async def run(self, users: Iterable[dict[str, Any]] | AsyncIterator[dict[str, Any]],
                  bundles: AsyncIterator[Bundle], *, skip: int = 0,
                  advance: Callable[[int], None] | None = None,
                  done: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Users first (threads need their owners), then threads `concurrency` at a time.
        `skip`: threads a previous run finished (counted as unchanged, not read);
        `done(n)`: the first n threads are finished (for a progress file)."""
        if hasattr(users, "__aiter__"):
            async for record in users:
                await self.import_user(record)
        else:
            for record in users:
                await self.import_user(record)
        index = 0

        async def numbered() -> AsyncIterator[tuple[int, Bundle]]:
            nonlocal index
            async for bundle in bundles:
                index += 1
                if index <= skip:
                    self.counts["threads"]["unchanged"] += 1
                    continue
                yield index, bundle

        async def one(item: tuple[int, Bundle]) -> int:
            await self.import_bundle(item[1])
            return item[0]

        async for finished in ordered_map(numbered(), one, self.concurrency):
            if advance:
                advance(1)
            if done:
                done(finished)
        return self.counts


def _stored_form(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """A record as the target stores it (an element without its archive checksum keys)."""
    if kind == "elements":
        return {k: v for k, v in record.items() if k not in (BLOB_SHA, BLOB_SIZE)}
    return record
