"""One chat turn over HTTP, through the same conversation code as the browser.

`prepare` does every check that can refuse the call (the conversation is the caller's,
settings and files are valid) before anything is stored or streamed; `TurnPlan.run` then
works inside a Chainlit HTTP context whose user is the caller, so the data layer sees the
same acting user and stores the same steps as for a browser session: the thread (new
conversations, named after the first message like the UI does), the user message, its
attachments, the assistant's answer with its generation record, and the model-made title.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import chainlit as cl
from chainlit.context import ChainlitContext, context_var
from chainlit.session import HTTPSession
from chainlit.user_session import user_sessions
from chainlit.utils import utc_now

from chat.files import read_path
from chat.history import Turn
from chat.service import AssistantMessage, ChatState, TextSink
from chat.thread_settings import ThreadSettings
from datalayers.elements import failure_reason
from knowledge.service import Attachment

from . import models
from .auth import Caller
from .deps import ApiParts, logger
from .problems import Problem
from .threads import owned_thread, resolve_settings, stored_settings
from .uploads import PendingFile


@dataclass
class TurnPlan:
    parts: ApiParts
    caller: Caller
    query: str
    conversation_id: str
    new: bool
    state: ChatState
    settings: ThreadSettings
    files: list[PendingFile] = field(default_factory=list)
    system_prompt: str | None = None
    user_message_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    async def run(self, on_text: TextSink | None = None) -> AssistantMessage:
        session = HTTPSession(id=str(uuid.uuid4()), client_type="webapp", thread_id=self.conversation_id,
                              user=self.caller.user)
        session.chat_settings = self.settings.as_values()
        token = context_var.set(ChainlitContext(session))
        try:
            return await self._run(on_text)
        finally:
            user_sessions.pop(session.id, None)
            context_var.reset(token)

    async def _run(self, on_text: TextSink | None) -> AssistantMessage:
        data_layer = self.parts.data_layer
        if self.new:  # what Chainlit does at a browser thread's first message
            await data_layer.update_thread(thread_id=self.conversation_id, name=self.query, user_id=self.caller.user.id,
                                           metadata={"chat_settings": self.settings.as_values()})
        # The files first: one that cannot be stored refuses the whole message, so a client's
        # retry cannot leave the same message twice, once without its file.
        files = await self._attach(self.user_message_id)
        message = cl.Message(id=self.user_message_id, content=self.query, author=self.caller.identifier,
                             type="user_message", created_at=utc_now())  # as Chainlit stamps a browser's message
        await data_layer.create_step(message.to_dict())  # awaited: journaled before the answer's steps
        answer = await self.parts.service.turn(self.state, self.settings, self.query, files, message_id=message.id,
                                               on_text=on_text, system_prompt=self.system_prompt)
        # Chainlit stores a sent message from a task of its own, which may not have run yet: the
        # caller may read the conversation as soon as it has the answer, so journal it now (the
        # journal merges the two writes of the same step).
        await data_layer.update_step(answer.to_dict())
        return answer

    async def _attach(self, message_id: str) -> list[Attachment]:
        """Store the message's files; if one cannot be stored, undo the others and refuse the
        call: the files stay uploaded, so the client can send the same message again. (Files
        are uploaded to an existing conversation, so a call with files never creates one.)"""
        data_layer = self.parts.data_layer
        files: list[Attachment] = []
        for pending in self.files:
            element = cl.File(name=pending.name, path=str(pending.path), mime=pending.mime, display="inline")
            element.for_id = message_id
            element.thread_id = self.conversation_id
            try:
                await data_layer.create_element(element)  # the blob is stored before this returns
            except Exception as exc:  # logged with its context by the data layer
                for stored in files:
                    try:  # journaled: retried until the store takes it
                        await data_layer.delete_element(stored.element_id, self.conversation_id)
                    except Exception as undo_error:  # the call is refused all the same
                        logger.error("attachment %s of conversation %s could not be taken back after %r failed: %s",
                                     stored.element_id, self.conversation_id, pending.name, undo_error)
                raise Problem(503, f"the file {pending.name!r} could not be stored ({failure_reason(exc)}); "
                                   "nothing of this message was saved: send it again",
                              headers={"Retry-After": "5"}) from exc
            files.append(Attachment(element.id, pending.name, pending.mime, await read_path(pending.path)))
        self.parts.uploads.discard(self.files)
        return files


async def prepare(parts: ApiParts, caller: Caller, call: models.ChatCall, *, system_prompt: str | None = None,
                  history: list[Turn] | None = None) -> TurnPlan:
    service = parts.service
    size = len(call.query.encode("utf-8", "surrogatepass"))
    if size > parts.max_message_bytes:
        raise Problem(413, f"the message is {size} bytes; at most {parts.max_message_bytes} are accepted")
    thread: dict[str, Any] | None = None
    if call.conversation_id:
        thread = await owned_thread(parts.data_layer, caller, call.conversation_id)
    state = await service.state_for(thread)
    change = models.ConversationSettings(model=call.model_name, temperature=call.temperature,
                                         max_tokens=call.max_tokens, history_length=call.history_len,
                                         prompt=call.prompt_name)
    settings = resolve_settings(service.config, state.prompts, stored_settings(thread), change)
    if history is None and call.history is not None:
        history = [Turn(role=item.role, content=item.content) for item in call.history]
    if history is not None:  # the caller's own history replaces the stored one for this call
        state.turns = history
    conversation_id = call.conversation_id or str(uuid.uuid4())
    files = await parts.uploads.take(caller.identifier, conversation_id, call.file_ids) if call.file_ids else []
    return TurnPlan(parts, caller, call.query, conversation_id, thread is None, state, settings, files, system_prompt)


def answer_usage(answer: AssistantMessage) -> models.Usage:
    generation = answer.generation or {}
    return models.Usage(prompt_tokens=generation.get("inputTokenCount"),
                        completion_tokens=generation.get("outputTokenCount"),
                        total_tokens=generation.get("tokenCount"))


def finish_reason(answer: AssistantMessage) -> str | None:
    return ((answer.generation or {}).get("metadata") or {}).get("finishReason")


def answer_error(answer: AssistantMessage) -> tuple[int, str]:
    """The status and text of a failed answer (already stored as an error step)."""
    metadata = (answer.generation or {}).get("metadata") or {}
    status = 422 if metadata.get("errorKind") in ("bad_request", "not_found") else 503
    return status, (answer.generation or {}).get("error") or "the model call failed"


async def run_to_end(plan: TurnPlan, on_text: TextSink | None = None) -> AssistantMessage:
    """Run the turn; if the caller goes away (cancelled), the model is stopped and what was
    streamed is stored, marked cancelled, before the cancellation goes on."""
    task = asyncio.create_task(plan.run(on_text))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
