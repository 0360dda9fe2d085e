"""The "saving is delayed" notice: while a thread's writes wait in the data layer's journal
(the database is unreachable), the user sees a message saying their messages are kept,
and it disappears when they are saved.

The notice is sent to the browser only (Chainlit's emitter), never stored: it describes
the moment, not the conversation.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import chainlit as cl
from chainlit.logger import logger as chainlit_logger
from chainlit.step import StepDict

logger = chainlit_logger.getChild("Chat")

NOTICE_TEXT = (
    "⏳ Saving is delayed: the database cannot be reached right now. Your messages are kept "
    "and will be saved as soon as it is back; you can keep chatting."
)


class SavingNotice:
    def __init__(self, data_layer: Any, lag_seconds: float | None = None, poll_seconds: float = 1.0):
        self.data_layer = data_layer
        self.lag_seconds = lag_seconds if lag_seconds is not None else getattr(data_layer, "lag_seconds", 3.0)
        self.poll_seconds = poll_seconds
        self._watchers: dict[str, asyncio.Task] = {}

    def watch(self, thread_id: str | None) -> None:
        """Follow this session's thread until its writes are saved (one watcher per session)."""
        if not thread_id or not hasattr(self.data_layer, "pending"):
            return
        session_id = cl.context.session.id
        running = self._watchers.get(session_id)
        if running is not None and not running.done():
            return
        # create_task copies the Chainlit context, so the watcher can talk to this session.
        task = asyncio.create_task(self._follow(thread_id))
        self._watchers[session_id] = task
        task.add_done_callback(functools.partial(self._done, session_id))

    def _done(self, session_id: str, task: asyncio.Task) -> None:
        if self._watchers.get(session_id) is task:
            del self._watchers[session_id]
        if not task.cancelled() and task.exception() is not None:
            logger.warning("saving notice failed: %s", task.exception())

    async def _follow(self, thread_id: str) -> None:
        shown: StepDict | None = None
        try:
            # The writes of the message just handled are submitted as background tasks:
            # give them a moment to reach the journal before the first look.
            await asyncio.sleep(self.poll_seconds)
            while True:
                count, oldest = self.data_layer.pending(thread_id)
                if count == 0:
                    return
                if shown is None and oldest >= self.lag_seconds:
                    shown = cl.Message(content=NOTICE_TEXT, author="Saving").to_dict()
                    await cl.context.emitter.send_step(shown)
                await asyncio.sleep(self.poll_seconds)
        finally:
            if shown is not None:
                await cl.context.emitter.delete_step(shown)
