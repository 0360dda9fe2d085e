"""Search over a user's threads: names from the index, step text from a per-thread digest.

The thread item keeps `_text`, the lowercased outputs of its steps (a list: DynamoDB cannot
concatenate strings in an update), appended in the same request that writes the step; at
most TEXT_LIMIT bytes, then `_textTruncated` stops it. It never moves to blob storage, is
never in the index, never in a response.

A search matches thread names from the index page, then reads the digests of the other
threads with BatchGetItem (100 threads a request). Only a thread without a complete digest
(written by Chainlit's layer or before digests existed, or truncated) and with no match in
what it has costs one Query of its steps. The digest is only appended to: words edited out
of a step, or of a deleted step, still find the thread until it is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any, NamedTuple

from .client import Table
from .items import BLOBS, TEXT, TEXT_BYTES, TEXT_SINCE, TEXT_TRUNCATED, Expression, remove_prefix, thread_key
from .large import LargeAttributes

#: Cap of the digest (UTF-8 bytes of its entries). It is rewritten with the thread item on
#: every new step, so it costs write units: about one per KB it holds.
TEXT_LIMIT = 24 * 1024
#: Threads / steps remembered by `DigestMemory`.
MEMORY_SIZE = 10_000


def digest_text(output: Any) -> str | None:
    """What a step's output adds to its thread's digest (any step: a tool's output is shown
    to the user too), or None."""
    if output is None or output == "":
        return None
    return str(output).lower()


def digest_append(e: Expression, texts: list[str], exists: bool = False) -> tuple[str, str, str] | None:
    """The SET and ADD clauses appending `texts` (one per step) to the digest, and the
    condition that keeps it under TEXT_LIMIT and stops at truncation; None when they cannot
    fit. `exists`: this process has appended to the digest, so it is there (a lean thread
    update): no `if_not_exists`, and a missing digest fails the condition instead of
    starting one — the caller then sends the full update. The same item either way."""
    size = sum(len(text.encode("utf-8")) for text in texts)
    if size > TEXT_LIMIT:
        return None
    text, count, truncated = e.name(TEXT), e.name(TEXT_BYTES), e.name(TEXT_TRUNCATED)
    add_bytes = f"{count} {e.value(size)}"
    if exists:
        set_text = f"{text} = list_append({text}, {e.value(list(texts))})"
        condition = f"{count} <= {e.value(TEXT_LIMIT - size)} AND attribute_not_exists({truncated})"
    else:
        set_text = f"{text} = list_append(if_not_exists({text}, {e.value([])}), {e.value(list(texts))})"
        condition = (f"(attribute_not_exists({count}) OR {count} <= {e.value(TEXT_LIMIT - size)}) "
                     f"AND attribute_not_exists({truncated})")
    return set_text, add_bytes, condition


def digest_complete(digest: dict[str, Any]) -> bool:
    """The digest holds every step's text. `_textSince` equals `createdAt` only when the
    digest started with the thread: a thread written by Chainlit's layer or before digests
    existed gets a later one."""
    return (TEXT in digest and not digest.get(TEXT_TRUNCATED) and digest.get(TEXT_SINCE) is not None
            and digest.get(TEXT_SINCE) == digest.get("createdAt"))


class Written(NamedTuple):
    """What a thread item is known to have, from this process's own successful writes."""

    owned: bool
    with_user_id: bool
    digest: bool


class DigestMemory:
    """What this process knows about thread items and their digests, so a write skips a
    request part that would fail, repeat or change nothing: threads whose digest is
    truncated, the last text appended per step (a hash: outputs can be long), and the
    threads whose item this process has written whole (see `written`). Bounded; forgetting
    only costs a redundant append or a longer thread update."""

    def __init__(self, size: int = MEMORY_SIZE):
        self.size = size
        self._truncated: OrderedDict[str, None] = OrderedDict()
        self._appended: OrderedDict[str, bytes] = OrderedDict()
        self._written: OrderedDict[str, Written] = OrderedDict()

    @staticmethod
    def _hash(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def _remember(self, table: OrderedDict, key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.size:
            table.popitem(last=False)

    def is_truncated(self, thread_id: str) -> bool:
        return thread_id in self._truncated

    def truncated(self, thread_id: str) -> None:
        self._remember(self._truncated, thread_id, None)

    def already_appended(self, step_id: str, text: str) -> bool:
        return self._appended.get(step_id) == self._hash(text)

    def appended(self, step_id: str, text: str | None) -> None:
        if text is not None:
            self._remember(self._appended, step_id, self._hash(text))

    def written(self, thread_id: str, owned: bool, with_user_id: bool, digest: bool) -> None:
        """A step write that may create the thread succeeded: its item now has what creating
        it sets (id, createdAt, metadata, activity, digest start), an owner when `owned`
        (with its user id, when `with_user_id`), and a digest when `digest` (it appended
        text). None of these is ever removed from an item; only a delete takes the item
        away, which the lean update's condition notices."""
        known = self._written.get(thread_id) or Written(False, False, False)
        self._remember(self._written, thread_id,
                       Written(owned or known.owned, with_user_id or known.with_user_id, digest or known.digest))

    def appended_to(self, thread_id: str) -> None:
        """An update appended text to a thread this process knows: it has a digest now."""
        known = self._written.get(thread_id)
        if known is not None:
            self._remember(self._written, thread_id, known._replace(digest=True))

    def known(self, thread_id: str, owned: bool, with_user_id: bool) -> Written | None:
        """What this process knows of the thread, if a write by an owner (`owned`; with a
        user id, `with_user_id`) may use the lean thread update: every `if_not_exists` of
        the full one would change nothing. None: the full update."""
        known = self._written.get(thread_id)
        if known is None or known.owned < owned or known.with_user_id < with_user_id:
            return None
        return known

    def forget(self, thread_id: str) -> None:
        """The thread's item is gone (deleted here) or not as remembered (a lean update's
        condition failed): the next write takes the full update, and a digest starting
        again is not taken for the truncated one."""
        self._written.pop(thread_id, None)
        self._truncated.pop(thread_id, None)


async def search_filter(table: Table, large: LargeAttributes, batch: list[dict[str, Any]],
                        term: str) -> list[dict[str, Any]]:
    """The threads of `batch` (index items) whose name or a step's output contains `term`
    (lowercased, literal). Digests of the threads whose name does not match are read with
    BatchGetItem; a thread without a complete digest and no match in it costs one query of
    its steps, run concurrently."""
    semaphore = asyncio.Semaphore(16)
    unnamed = [item["id"] for item in batch if term not in str(item.get("name") or "").lower()]
    digests: dict[str, dict[str, Any]] = {}
    if unnamed:
        for digest in await table.batch_get([thread_key(t) for t in unnamed], "list_threads search",
                                            ("PK", "createdAt", TEXT, TEXT_TRUNCATED, TEXT_SINCE)):
            digests[remove_prefix(digest["PK"], "THREAD#") or ""] = digest

    async def matches(item: dict[str, Any]) -> bool:
        if term in str(item.get("name") or "").lower():
            return True
        digest = digests.get(item["id"]) or {}  # none: deleted since the index query, or not yet readable
        if any(term in str(text) for text in digest.get(TEXT) or ()):
            return True
        if digest_complete(digest):
            return False
        async with semaphore:
            return await steps_contain(table, large, item["id"], term)

    flags = await asyncio.gather(*(matches(item) for item in batch))
    return [item for item, keep in zip(batch, flags, strict=True) if keep]


async def steps_contain(table: Table, large: LargeAttributes, thread_id: str, term: str) -> bool:
    """Whether any step of the thread has `term` in its output (eventually consistent: half
    the cost, and a second's lag is harmless in a search)."""
    for item in await table.partition(thread_id, "list_threads search", "STEP#", attributes=("output", BLOBS),
                                      consistent=False):
        blobs = item.get(BLOBS) or {}
        if "output" in blobs:  # only the output's blob: the others are not searched
            item, _ = await large.hydrate({BLOBS: {"output": blobs["output"]}})
        if term in str(item.get("output") or "").lower():
            return True
    return False
