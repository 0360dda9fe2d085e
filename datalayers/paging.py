"""Sidebar paging shared by every data layer: the page size rule and the opaque cursor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from .errors import RequestError

MAX_PAGE_SIZE = 200
#: Longer search terms are refused: nobody types them, and each costs a scan of every
#: message the user has (a trigram index does not help a term that long).
MAX_SEARCH_LENGTH = 1000


def page_size(first: Any) -> int:
    """`pagination.first` checked (a positive int) and capped at MAX_PAGE_SIZE."""
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise RequestError(f"pagination.first must be a positive integer, got {str(first)[:20]!r}")
    return min(first, MAX_PAGE_SIZE)


def search_term(search: Any) -> str | None:
    """The sidebar's search text, checked: None when empty, at most MAX_SEARCH_LENGTH
    characters. Any character is literal, NUL included."""
    if search is None or search == "":
        return None
    if not isinstance(search, str):
        raise RequestError("the search must be text")
    if len(search) > MAX_SEARCH_LENGTH:
        raise RequestError(f"the search is {len(search)} characters long; at most {MAX_SEARCH_LENGTH} are allowed")
    return search


class CursorCodec:
    """Opaque, signed page cursors.

    A cursor names a position in one user's thread list. It is signed so a client cannot
    forge one, and bound to the user so a cursor from one user's listing is refused in
    another's. The secret comes from the settings (derived from the auth secret), so
    cursors stay valid across restarts and across app instances.
    """

    def __init__(self, secret: bytes):
        if not secret:
            raise ValueError("a cursor secret is required")
        self._secret = secret

    def _sign(self, user: str, body: bytes) -> str:
        mac = hmac.new(self._secret, user.encode() + b"\0" + body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def encode(self, user: str, position: dict) -> str:
        body = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{payload}.{self._sign(user, body)}"

    def decode(self, user: str, cursor: str) -> dict:
        """The position in a cursor this codec made for `user`; anything else (forged,
        truncated, another user's, from another secret) is a RequestError."""
        invalid = RequestError("invalid pagination cursor: start again from the first page")
        try:
            payload, signature = cursor.split(".", 1)
            body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (ValueError, TypeError, AttributeError):
            raise invalid from None
        # compare_digest refuses non-ASCII text with a TypeError: compare bytes.
        if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), self._sign(user, body).encode()):
            raise invalid
        try:
            position = json.loads(body)
        except ValueError:
            raise invalid from None
        if not isinstance(position, dict):
            raise invalid
        return position
