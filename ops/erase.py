"""Erasure of one person: everything stored about them goes, and a receipt says what.

In order — access first, so nothing new arrives while the rest goes:

1. sessions: revoked (`revoke_sessions`). A revocation record (name, time, reason) stays:
   it is what keeps a login token issued before the erasure refused until it expires;
2. API tokens: deleted;
3. threads (through `delete_thread`: steps, ratings, elements, search digests, their blobs)
   and the knowledge index's chunks of each;
4. blobs left under the user's prefix of storage (`{user}/…`: files whose rows were lost
   earlier) and the user's remaining knowledge chunks;
5. the user record in the database, and the entry in the users file.

**Legal hold**: a thread tagged `legal-hold` is not erased; the receipt lists it with the
reason, and the user record stays with it (the thread needs its owner; SQL would delete
it with the user row). `--override-hold` erases held threads too — for when counsel has
released the hold but the tag was not removed. A user defined in `APP_USERS` (the
environment) cannot be removed from there by this command; the receipt says so.

The receipt holds counts per kind, the user name and the start and end times — never
passwords, tokens or content — and is logged at INFO under `chainlit.Audit`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from datalayers.timestamps import format_timestamp
from storage.base import element_object_key

from .retention import Counts, is_held
from .stale import _backend, threads_of

audit = logging.getLogger("chainlit").getChild("Audit")


@dataclass
class Receipt:
    user: str
    dry_run: bool
    override_hold: bool
    started_at: str
    finished_at: str = ""
    removed: Counts = field(default_factory=Counts)
    other_blobs: int = 0          # blobs under the user's prefix that no thread listed
    api_tokens: int = 0
    sessions_revoked: bool = False
    user_record: int = 0
    users_file_entry: int = 0
    kept: list[dict[str, str]] = field(default_factory=list)   # {"what", "id", "why"}
    not_finished: int = 0

    @property
    def found(self) -> bool:
        return bool(self.removed.threads or self.api_tokens or self.user_record or self.users_file_entry
                    or self.other_blobs or self.removed.chunks or self.kept)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["would_remove" if self.dry_run else "removed"] = data.pop("removed")
        return data


async def remove_user_record(layer: Any, identifier: str) -> int:
    """Delete the user's own record (SQL `users` row; DynamoDB user item and its id
    locator); 1 if there was one."""
    user = await layer.get_user(identifier)
    if user is None:
        return 0
    if _backend(layer) == "sql":
        from sqlalchemy import delete

        from datalayers.sqlalchemy.schema import users

        async def work(conn):
            return (await conn.execute(delete(users).where(users.c.identifier == identifier))).rowcount

        removed = await layer._run("erase user", work, identifier=identifier)
    else:
        from datalayers.dynamodb.items import locator_key, user_key

        await layer.table.batch_delete([user_key(identifier), locator_key("USERID", user.id)], "erase user",
                                       {"identifier": identifier})
        removed = 1
    getattr(layer, "_identifiers", {}).pop(user.id, None)
    getattr(layer, "_user_ids", {}).pop(identifier, None)
    return int(bool(removed))


async def erase_user(layer: Any, name: str, *, user_store: Any = None, knowledge: Any = None,
                     dry_run: bool = False, override_hold: bool = False,
                     progress: Any = None) -> Receipt:
    _backend(layer)  # a data layer of another kind is refused before anything is changed
    receipt = Receipt(user=name, dry_run=dry_run, override_hold=override_hold,
                      started_at=format_timestamp(datetime.now(UTC)))
    persisted = await layer.get_user(name)
    tokens = await layer.list_api_tokens(name)
    # 1-2. access
    if not dry_run:
        await layer.revoke_sessions(name, "erased by the operator")
        receipt.sessions_revoked = True
        receipt.api_tokens = await layer.delete_api_tokens(name)
    else:
        receipt.api_tokens = len(tokens)
    # 3. threads
    held: set[str] = set()
    visited: set[str] = set()   # the key segment of every thread listed (storage/base.py's layout)
    async for ref in threads_of(layer, owner=name):
        if progress is not None:
            progress(1)
        visited.add(element_object_key(name, ref.id, "e", "f").split("/")[1])
        thread = await layer.get_thread(ref.id)
        if thread is None:
            continue
        if is_held(thread.get("tags")) and not override_hold:
            held.add(ref.id)
            receipt.kept.append({"what": "thread", "id": ref.id, "why": "legal hold (tag 'legal-hold')"})
            continue
        if not dry_run:
            await layer.delete_thread(ref.id)
        receipt.removed.add_thread(thread)
        if knowledge is not None:
            chunks = await knowledge.count(thread_id=ref.id) if dry_run else await knowledge.delete(thread_id=ref.id)
            receipt.removed.chunks += chunks
    # 4. what no thread listed: blobs under the user's prefix, chunks under the user
    storage = getattr(layer, "storage", None)
    if storage is not None:
        # The first segment of every key of this user's files (storage/base.py's layout).
        prefix = element_object_key(name, "t", "e", "f").split("/", 1)[0] + "/"
        # Blobs of the threads listed went with them (or are being retried from the journal).
        stray = [k async for k in storage.list_keys(prefix) if k[len(prefix):].split("/", 1)[0] not in visited]
        receipt.other_blobs = len(stray)
        if stray and not dry_run:
            await storage.delete_files(stray)
    if knowledge is not None and not held:
        user_chunks = 0
        for user_id in dict.fromkeys(i for i in (persisted.id if persisted else None, name) if i):
            user_chunks += (await knowledge.count(user_id=user_id) if dry_run
                            else await knowledge.delete(user_id=user_id))
        # A dry run deleted nothing per thread: the user's count already holds those chunks.
        receipt.removed.chunks = user_chunks if dry_run else receipt.removed.chunks + user_chunks
    elif knowledge is not None:
        receipt.kept.append({"what": "knowledge chunks", "id": name, "why": "of the threads under legal hold"})
    # 5. the user
    if held:
        receipt.kept.append({"what": "user record", "id": name, "why": "owner of threads under legal hold"})
    elif persisted is not None:
        receipt.user_record = 1 if dry_run else await remove_user_record(layer, name)
    if user_store is not None:
        if name in user_store.load_file():
            receipt.users_file_entry = 1 if dry_run else int(user_store.remove(name))
        if name in user_store.load() and name not in user_store.load_file():
            receipt.kept.append({"what": "login", "id": name,
                                 "why": "defined in APP_USERS: remove it from the environment"})
    receipt.finished_at = format_timestamp(datetime.now(UTC))
    return receipt


def receipt_text(receipt: Receipt) -> str:
    c = receipt.removed
    head = "would erase" if receipt.dry_run else "erased"
    lines = [f"{head} user {receipt.user!r} ({receipt.started_at} - {receipt.finished_at}):",
             f"  threads {c.threads}, steps {c.steps}, ratings {c.feedback}, elements {c.elements}, "
             f"blobs {c.blobs} (+{receipt.other_blobs} under the user's prefix), knowledge chunks {c.chunks}",
             f"  API tokens {receipt.api_tokens}, sessions {'revoked' if receipt.sessions_revoked else 'not revoked'}"
             f", user record {receipt.user_record}, users file entry {receipt.users_file_entry}"]
    for item in receipt.kept:
        lines.append(f"  kept {item['what']} {item['id']}: {item['why']}")
    if receipt.not_finished:
        lines.append(f"  {receipt.not_finished} blob delete(s) not done: run `chainlit-persist sweep --fix`")
    return "\n".join(lines)


def log_receipt(receipt: Receipt) -> None:
    audit.info("%s", receipt_text(receipt).replace("\n", ";"))
