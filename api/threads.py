"""Chainlit threads as the API's conversations and messages: the caller's own threads only
(another user's is answered exactly like a missing one), steps shown as messages with
their model, usage and rating, attachments with freshly signed links."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from chat.config import ChatConfig
from chat.prompts import PromptBook
from chat.thread_settings import ThreadSettings

from . import models
from .auth import Caller
from .problems import Problem

ROLES: dict[str, Literal["user", "assistant", "tool"]] = {
    "user_message": "user", "assistant_message": "assistant", "tool": "tool"}
NOT_FOUND = "conversation not found"


async def owned_thread(data_layer: Any, caller: Caller, conversation_id: str) -> dict:
    """The caller's thread, with its steps and elements; 404 for a missing or foreign one."""
    author = await data_layer.get_thread_author(conversation_id)
    if author != caller.identifier:
        raise Problem(404, NOT_FOUND)
    thread = await data_layer.get_thread(conversation_id)
    if thread is None:  # deleted in between
        raise Problem(404, NOT_FOUND)
    return thread


async def check_owned(data_layer: Any, caller: Caller, conversation_id: str) -> None:
    if await data_layer.get_thread_author(conversation_id) != caller.identifier:
        raise Problem(404, NOT_FOUND)


def stored_settings(thread: Mapping[str, Any] | None) -> dict:
    metadata = (thread or {}).get("metadata") or {}
    values = metadata.get("chat_settings") if isinstance(metadata, dict) else None
    return values if isinstance(values, dict) else {}


def resolve_settings(config: ChatConfig, prompts: PromptBook, base: Mapping[str, Any],
                     change: models.ConversationSettings | None) -> ThreadSettings:
    """`base` (stored values) with `change` applied; an unknown model or template is a 422
    naming the choices (the settings panel can only offer known ones)."""
    values = dict(base)
    if change is not None:
        given = change.model_dump(exclude_none=True)
        if "model" in given and given["model"] not in config.model_choices:
            raise Problem(422, f"unknown model {given['model']!r}; choose one of {', '.join(config.model_choices)}")
        if "prompt" in given and given["prompt"] not in prompts.templates:
            raise Problem(422, f"unknown prompt template {given['prompt']!r}; choose one of {', '.join(prompts.names)}")
        values.update(given)
    return ThreadSettings.from_values(values, config, prompts)


def conversation(thread: Mapping[str, Any], settings: ThreadSettings | None = None) -> models.Conversation:
    return models.Conversation(
        id=thread["id"], name=thread.get("name"), created_at=thread.get("createdAt"),
        tags=[tag for tag in thread.get("tags") or [] if isinstance(tag, str)],
        settings=models.Settings(**settings.as_values()) if settings is not None else None)


def message(step: Mapping[str, Any], attachments: list[models.Attachment]) -> models.Message:
    generation = step.get("generation") or {}
    metadata = generation.get("metadata") or {}
    feedback = step.get("feedback") or None
    usage = None
    if generation:
        usage = models.Usage(prompt_tokens=generation.get("inputTokenCount"),
                             completion_tokens=generation.get("outputTokenCount"),
                             total_tokens=generation.get("tokenCount"))
    rating = None
    if feedback and feedback.get("value") in (0, 1):
        rating = models.Rating(value=feedback["value"], comment=feedback.get("comment"))
    return models.Message(
        id=step["id"], role=ROLES[step["type"]], text=step.get("output") or "", created_at=step.get("createdAt"),
        model=generation.get("model"), usage=usage, finish_reason=metadata.get("finishReason"),
        status=("error" if step.get("isError") else metadata.get("status")) if step["type"] == "assistant_message" else None,
        feedback=rating, attachments=attachments)


def messages(thread: Mapping[str, Any]) -> list[models.Message]:
    """The thread's messages in order: what the user and the model said, and tool steps."""
    by_step: dict[str, list[models.Attachment]] = {}
    for element in thread.get("elements") or []:
        if element.get("forId"):
            by_step.setdefault(element["forId"], []).append(models.Attachment(
                id=element["id"], name=element.get("name"), mime=element.get("mime"), url=element.get("url")))
    return [message(step, by_step.get(step["id"], [])) for step in thread.get("steps") or []
            if step.get("type") in ROLES]
