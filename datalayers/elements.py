"""Elements (attachments) and their blobs: what every data layer does with storage."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from storage.base import element_object_key

logger = logging.getLogger("chainlit")

if TYPE_CHECKING:
    from chainlit.element import Element

    from storage.base import BlobStorage


async def element_content(element: Element) -> bytes | None:
    """The bytes to store for an element, or None when it only points at an external URL."""
    if element.content is not None and element.content != b"" and element.content != "":
        content = element.content
        return content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if element.path:
        path = element.path

        def read() -> bytes:
            with open(path, "rb") as fh:
                return fh.read()

        return await asyncio.to_thread(read)
    return None


async def upload_element(storage: BlobStorage | None, element: Element, owner: str | None) -> str | None:
    """Write the element's blob (before its row is written) and return its object key.

    Returns None for elements that only reference an external URL. Raises when content
    exists but cannot be stored: a missing attachment must be an error, not a silent gap.
    """
    content = await element_content(element)
    if content is None:
        if not element.url:
            raise ValueError(f"element {element.id} has no content, path or url to store")
        return None
    if storage is None:
        raise RuntimeError(f"element {element.id} has content but no storage client is configured")
    key = element_object_key(owner, element.thread_id, element.id, element.name)
    await storage.upload_file(key, content, mime=element.mime or "application/octet-stream", overwrite=True)
    return key


def element_row(element: Element, object_key: str | None) -> dict[str, Any]:
    """The element as stored: Chainlit's dict without Nones, the object key instead of a URL
    (read URLs are signed on every read, never stored)."""
    row = {k: v for k, v in dict(element.to_dict()).items() if v is not None}
    if object_key is not None:
        row["objectKey"] = object_key
        row.pop("url", None)
    row.setdefault("name", "")
    return row


async def sign_element_urls(storage: BlobStorage | None, element_dicts: list[dict]) -> None:
    """Fill each element's `url` with a freshly signed read URL (URLs are never stored)."""
    keyed = [e for e in element_dicts if e.get("objectKey")]
    if not keyed or storage is None:
        return
    urls = await asyncio.gather(*(storage.get_read_url(e["objectKey"]) for e in keyed), return_exceptions=True)
    for element_dict, url in zip(keyed, urls, strict=True):
        if isinstance(url, BaseException):
            # One unsignable attachment (storage down, key gone) must not hide the whole
            # conversation: the element is listed without a link and the failure logged.
            if not isinstance(url, Exception):
                raise url
            logger.warning("could not sign a read link for element %s of thread %s (%s): %s",
                           element_dict.get("id"), element_dict.get("threadId"), type(url).__name__, url)
            element_dict["url"] = None
        else:
            element_dict["url"] = url
