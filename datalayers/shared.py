"""Pieces every data layer shares: timestamps, the opaque page cursor, the current user,
and turning a Chainlit `Element` into a stored blob. Backend-neutral: no driver imports."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from chainlit.logger import logger as chainlit_logger

from storage.base import element_object_key

if TYPE_CHECKING:
    from chainlit.element import Element

    from storage.base import BlobStorage

#: The identifier of the user making the current HTTP request. Chainlit's `PUT/DELETE
#: /feedback` routes set no Chainlit context, so app.py sets this for those requests.
request_user: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("request_user", default=None)

STEP_FIELDS_NOT_STORED = frozenset({"feedback"})  # lives in its own table / item


def utc_now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


def format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalize_timestamp(value: Any) -> Optional[str]:
    """Any ISO-8601 timestamp (or datetime) as fixed-width UTC text, which sorts as time.

    Naive values are taken as UTC (Chainlit writes UTC with a trailing `Z`).
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, (int, float)):
        return format_timestamp(datetime.fromtimestamp(value, timezone.utc))
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {text[:64]!r}") from None
    return format_timestamp(parsed)


def current_user_identifier() -> Optional[str]:
    """Who is acting, if known: the request's user, else the Chainlit session's user."""
    if (identifier := request_user.get()) is not None:
        return identifier
    try:
        from chainlit.context import context

        user = context.session.user
    except Exception:  # no Chainlit context (scripts, tests, background jobs): unknown
        return None
    return getattr(user, "identifier", None) if user else None


async def check_feedback_owner(thread_id: str, author_of) -> None:
    """Refuse feedback on another user's thread (Chainlit's /feedback routes do not check).

    `author_of()` is the layer's async lookup of the thread author; it is only awaited when
    the acting user is known."""
    actor = current_user_identifier()
    if actor is None:
        return
    author = await author_of()
    if author and author != actor:
        raise PermissionError(f"user {actor!r} may not rate messages in thread {thread_id!r}")


def with_step_defaults(data: dict) -> dict:
    """A stored step as Chainlit's frontend expects it: metadata, input and output present."""
    data.setdefault("metadata", {})
    data.setdefault("input", "")
    data.setdefault("output", "")
    return data


class CursorCodec:
    """Opaque, signed page cursors.

    The cursor names a position in one user's thread list; it is signed so a client cannot
    forge one, and bound to the user so a cursor from one user's listing is refused in
    another's. (The user filter is applied server-side anyway; the signature makes tampering
    an explicit error rather than a silent odd page.)
    """

    def __init__(self, secret: bytes):
        self._secret = secret

    def _sign(self, user: str, body: bytes) -> str:
        mac = hmac.new(self._secret, user.encode() + b"\0" + body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def encode(self, user: str, position: dict) -> str:
        body = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{payload}.{self._sign(user, body)}"

    def decode(self, user: str, cursor: str) -> dict:
        try:
            payload, signature = cursor.split(".", 1)
            body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (ValueError, TypeError):
            raise ValueError("invalid pagination cursor") from None
        if not hmac.compare_digest(signature, self._sign(user, body)):
            raise ValueError("invalid pagination cursor")
        position = json.loads(body)
        if not isinstance(position, dict):
            raise ValueError("invalid pagination cursor")
        return position


async def element_content(element: "Element") -> Optional[bytes]:
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


async def upload_element(storage: Optional["BlobStorage"], element: "Element", owner: Optional[str]) -> Optional[str]:
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


async def sign_element_urls(storage: Optional["BlobStorage"], element_dicts: list[dict]) -> None:
    """Fill each element's `url` with a freshly signed read URL (URLs are never stored)."""
    keyed = [e for e in element_dicts if e.get("objectKey")]
    if not keyed or storage is None:
        return
    urls = await asyncio.gather(*(storage.get_read_url(e["objectKey"]) for e in keyed))
    for element_dict, url in zip(keyed, urls):
        element_dict["url"] = url


def child_logger(name: str):
    return chainlit_logger.getChild(name)


# ---------------------------------------------------------------------- write semantics
# Backend-neutral rules of the contract (design.md §2), used by every data layer.

MAX_PAGE_SIZE = 200
MESSAGE_TYPES = ("user_message", "assistant_message")
STEP_TIMESTAMPS = ("createdAt", "start", "end")


class DataLayerError(RuntimeError):
    """A database operation failed; the message says which one and on what ids."""


def merge_changes(base: Optional[dict], changes: Optional[dict]) -> dict:
    """`base` updated with `changes`, where a `None` value removes the key."""
    merged = dict(base or {})
    for key, value in (changes or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def fill_missing(base: Optional[dict], additions: Optional[dict]) -> dict:
    """`base` with keys from `additions` that it does not have yet (base wins)."""
    merged = {k: v for k, v in (additions or {}).items() if v is not None}
    merged.update(base or {})
    return merged


def is_empty(value: Any) -> bool:
    return value is None or value == ""


def page_size(first: Any) -> int:
    """`pagination.first` checked (a positive int) and capped at MAX_PAGE_SIZE."""
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise ValueError(f"pagination.first must be a positive integer, got {first!r}")
    return min(first, MAX_PAGE_SIZE)
