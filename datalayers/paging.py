"""Sidebar paging shared by every data layer: the page size rule and the opaque cursor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

MAX_PAGE_SIZE = 200


def page_size(first: Any) -> int:
    """`pagination.first` checked (a positive int) and capped at MAX_PAGE_SIZE."""
    if not isinstance(first, int) or isinstance(first, bool) or first < 1:
        raise ValueError(f"pagination.first must be a positive integer, got {first!r}")
    return min(first, MAX_PAGE_SIZE)


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
        try:
            payload, signature = cursor.split(".", 1)
            body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (ValueError, TypeError):
            raise ValueError("invalid pagination cursor") from None
        if not hmac.compare_digest(signature, self._sign(user, body)):
            raise ValueError("invalid pagination cursor")
        try:
            position = json.loads(body)
        except ValueError:
            raise ValueError("invalid pagination cursor") from None
        if not isinstance(position, dict):
            raise ValueError("invalid pagination cursor")
        return position
