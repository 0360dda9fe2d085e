"""Who may write a thread: its owner only. The rule every data layer shares for writes by
id that arrive from a client — ratings, and the steps and thread changes of a socket
session, whose thread and step ids a client chooses.

A thread's owner is set once (by its first write) and never replaced, so a process can
remember the owners it has seen: a write into a thread seen before costs no read, and one
into a thread not seen yet costs one read of its owner, once per process.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from .errors import NotYours
from .journal import Entry

#: Journaled writes that only the thread's owner may make.
OWNED_KINDS = frozenset({"step", "step_delete", "thread"})
#: Threads whose owner a process remembers (a few MB at most).
CACHE_SIZE = 50_000
ACTIONS = {"step": "write a message in", "step_delete": "delete a message of", "thread": "change"}


class ThreadOwners:
    def __init__(self, logger: logging.Logger, read_owner: Callable[[str, bool], Awaitable[str | None]],
                 size: int = CACHE_SIZE):
        self.logger = logger
        # (thread id, journaled) -> the owner's identifier, or None for a missing or ownerless thread.
        self._read_owner = read_owner
        self.size = size
        self._owners: OrderedDict[str, str] = OrderedDict()

    def remember(self, thread_id: str, owner: str | None) -> None:
        if not owner or not thread_id:
            return
        self._owners[thread_id] = owner
        self._owners.move_to_end(thread_id)
        if len(self._owners) > self.size:
            self._owners.popitem(last=False)

    def forget(self, thread_id: str) -> None:
        self._owners.pop(thread_id, None)

    def _refused(self, actor: str, action: str, thread_id: str) -> None:
        self.logger.warning("refused: user %r may not %s thread %s, which another user owns; nothing stored",
                            actor, action, thread_id)

    def refuses_at_once(self, kind: str, thread_id: str, actor: str | None) -> bool:
        """A write this process already knows to be another user's: refused (and logged)
        before it is journaled, without a read. Anything else is checked when applied."""
        if kind not in OWNED_KINDS or not actor:
            return False
        owner = self._owners.get(thread_id)
        if owner is None or owner == actor:
            return False
        self._refused(actor, ACTIONS[kind], thread_id)
        return True

    async def may_apply(self, entry: Entry) -> bool:
        """Whether the entry's user may write its thread (theirs, ownerless or new); a
        refusal is logged. Called in the journal's background lane, so the read it may make
        never delays the chat, and an outage only postpones it."""
        if entry.kind not in OWNED_KINDS or not entry.actor or not entry.lane:
            return True
        owner = self._owners.get(entry.lane)
        if owner is None:
            owner = await self._read_owner(entry.lane, True)
            if owner:
                self.remember(entry.lane, owner)
            elif entry.kind == "step":
                self.remember(entry.lane, entry.actor)  # new or ownerless: this write makes it theirs
        if owner and owner != entry.actor:
            self._refused(entry.actor, ACTIONS[entry.kind], entry.lane)
            return False
        return True

    async def check(self, thread_id: str, actor: str | None, action: str, refusal: str) -> None:
        """Raise `NotYours(refusal)` — the message a missing item gets too — when `actor`
        does not own the thread. Nobody acting (scripts, tests): allowed."""
        if actor is None:
            return
        owner = self._owners.get(thread_id)
        if owner is None:
            owner = await self._read_owner(thread_id, False)
            self.remember(thread_id, owner)
        if owner and owner != actor:
            self._refused(actor, action, thread_id)
            raise NotYours(refusal)
