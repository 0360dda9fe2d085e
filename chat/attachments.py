"""The files of a message, for the model: as they arrive (a browser upload or an API file) and
as a stored thread holds them when it resumes. Documents and their passages are the
knowledge service's (`knowledge/service.py`); without one, files are described as before."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import chainlit as cl
from chainlit.logger import logger as chainlit_logger

from .files import describe_attachment, is_text_like, read_path

if TYPE_CHECKING:
    from knowledge.service import Attachment, KnowledgeService

logger = chainlit_logger.getChild("Chat")


async def message_attachments(message: cl.Message) -> list[Attachment]:
    """The bytes of each file that came with a message (Chainlit keeps uploads on disk)."""
    from knowledge.service import Attachment

    files = []
    for element in message.elements or []:
        data: bytes | None = None
        path = getattr(element, "path", None)
        content = getattr(element, "content", None)
        if isinstance(content, (bytes, bytearray)):
            data = bytes(content)
        elif isinstance(content, str):
            data = content.encode("utf-8")
        elif path:
            data = await read_path(path)
        files.append(Attachment(element.id, element.name, element.mime, data))
    return files


async def stored_attachments(elements: list[Mapping[str, Any]], user_messages: set[str], storage: Any,
                             knowledge: KnowledgeService | None, max_file_chars: int) -> dict[str, list[str]]:
    """Text blocks of the files users sent in a stored thread, per message id, read from
    the storage (an answer's sources and the pages a step read are not the user's files)."""
    by_step: dict[str, list[str]] = {}
    for element in elements:
        for_id = element.get("forId")
        if not for_id or for_id not in user_messages:
            continue
        name = element.get("name") or "file"
        mime = element.get("mime")
        key = element.get("objectKey")
        wanted = is_text_like(name, mime) or (knowledge is not None and knowledge.is_document(name, mime))

        async def read(key: str | None = key, wanted: bool = wanted) -> bytes | None:
            if not key or storage is None or not wanted:
                return None
            return await storage.read_file(key)

        try:
            if knowledge is not None:
                block = await knowledge.stored_block(element.get("id") or "", name, mime, read)
            else:
                block = describe_attachment(name, mime, await read(), max_file_chars)
        except (FileNotFoundError, PermissionError, OSError) as exc:
            logger.warning("attachment %s of message %s could not be read: %s", name, for_id, exc)
            block = f"[Attached file: {name}; it could not be read back.]"
        by_step.setdefault(for_id, []).append(block)
    return by_step


def included_passages(generation: Mapping[str, Any] | None) -> list[str] | None:
    """The labels of the passages the context builder gave the model (None: unknown, all)."""
    context = ((generation or {}).get("metadata") or {}).get("context")
    passages = context.get("passages") if isinstance(context, dict) else None
    included = passages.get("included") if isinstance(passages, dict) else None
    return [label for label in included if isinstance(label, str)] if isinstance(included, list) else None
