"""`Credentials`: what ends or grants access, stored in the configured database — when each
user's login sessions were last revoked, and personal API tokens (stored only as hashes).
Mixed into `PersistentDataLayer`; a backend implements the small `_` methods at the end.

Direct writes, never journaled: a logout or a token revocation must be in the database,
for every app instance, before it is reported done, and a new token must work at once.

Rows pass between these methods and a backend as plain dicts of text (`TOKEN_FIELDS`),
timestamps as fixed-width UTC text (`timestamps.format_timestamp`), which sorts as time.
A backend's lookup may be looser than Python's `==` (MySQL/MariaDB compare text
case-insensitively and ignore trailing spaces), so every row it returns is checked here
for an exact match of the id or user asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import RequestError
from .timestamps import format_timestamp
from .writes import check_id

#: A token id is part of the plaintext token; a name is the user's label for it.
MAX_TOKEN_ID_LENGTH = 64
MAX_TOKEN_NAME_LENGTH = 100
TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")
#: The columns (SQL) / attributes of a stored token, as the backends exchange them.
TOKEN_FIELDS = ("id", "userIdentifier", "name", "tokenHash", "createdAt", "expiresAt", "lastUsedAt")


@dataclass(frozen=True)
class ApiToken:
    """A personal API token as stored: never the plaintext, only its hash."""

    id: str                 # public token id (part of the plaintext token), at most 64 chars
    user_identifier: str
    name: str               # the label the user gave, at most 100 chars
    token_hash: str = field(repr=False)  # hex SHA-256 of the whole plaintext token; kept out of logs
    created_at: datetime    # aware UTC
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def is_valid_token_id(value: Any) -> bool:
    """What every backend can store and look up as a token id."""
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_ID_LENGTH and "\x00" not in value


def _aware(moment: Any, what: str) -> str:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise RequestError(f"{what} must be a timezone-aware datetime")
    return format_timestamp(moment)


def _optional_time(stored: str | None) -> datetime | None:
    return datetime.fromisoformat(stored) if stored else None


def token_row(token: ApiToken) -> dict[str, str | None]:
    """The record as a backend stores it, checked."""
    if not is_valid_token_id(token.id):
        raise RequestError(f"an API token id is 1 to {MAX_TOKEN_ID_LENGTH} characters without NUL")
    check_id(token.user_identifier, "user identifier")
    if not isinstance(token.name, str) or not 0 < len(token.name) <= MAX_TOKEN_NAME_LENGTH:
        raise RequestError(f"an API token's name is 1 to {MAX_TOKEN_NAME_LENGTH} characters")
    if not isinstance(token.token_hash, str) or not TOKEN_HASH.match(token.token_hash):
        raise RequestError("an API token's hash is 64 lowercase hex digits (SHA-256)")
    return {
        "id": token.id, "userIdentifier": token.user_identifier, "name": token.name, "tokenHash": token.token_hash,
        "createdAt": _aware(token.created_at, "created_at"),
        "expiresAt": None if token.expires_at is None else _aware(token.expires_at, "expires_at"),
        "lastUsedAt": None if token.last_used_at is None else _aware(token.last_used_at, "last_used_at"),
    }


def token_from_row(row: dict[str, Any]) -> ApiToken:
    return ApiToken(id=row["id"], user_identifier=row["userIdentifier"], name=row["name"],
                    token_hash=row["tokenHash"], created_at=datetime.fromisoformat(row["createdAt"]),
                    expires_at=_optional_time(row.get("expiresAt")),
                    last_used_at=_optional_time(row.get("lastUsedAt")))


class Credentials:
    """Session revocations and API tokens: the public methods, and what a backend implements."""

    # ------------------------------------------------------------------ sessions
    # Login tokens are stateless JWTs; what ends them early is a per-user time stored here:
    # a token issued before it is refused.
    async def revoke_sessions(self, identifier: str, reason: str = "") -> datetime:
        """End every session of `identifier` issued until now (logout, password change,
        removal). The stored time only moves forward; returns the time now in force."""
        check_id(identifier, "user identifier")
        now = datetime.now(UTC)
        await self._revoke_sessions(identifier, format_timestamp(now), reason[:255])
        return max(now, await self.sessions_revoked_at(identifier) or now)

    async def sessions_revoked_at(self, identifier: str) -> datetime | None:
        """When `identifier`'s sessions were last revoked (None: never): one key lookup."""
        check_id(identifier, "user identifier")
        stored = await self._sessions_revoked_at(identifier)
        return datetime.fromisoformat(stored) if stored else None

    # ------------------------------------------------------------------ API tokens
    async def create_api_token(self, token: ApiToken) -> None:
        """Store a new token; an id that is stored already raises (`DataLayerError`)."""
        await self._create_api_token(token_row(token))

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        """The token with this id (one strongly consistent key lookup), None if there is
        none or no such id can be stored."""
        if not is_valid_token_id(token_id):
            return None
        row = await self._get_api_token(token_id)
        return token_from_row(row) if row is not None and row["id"] == token_id else None

    async def list_api_tokens(self, identifier: str) -> list[ApiToken]:
        """The user's tokens, newest first (one indexed query)."""
        check_id(identifier, "user identifier")
        return [token_from_row(row) for row in await self._list_api_tokens(identifier)
                if row["userIdentifier"] == identifier]

    async def delete_api_token(self, identifier: str, token_id: str) -> bool:
        """Delete the token if it is `identifier`'s; False for a missing one and for another
        user's (which stays)."""
        check_id(identifier, "user identifier")
        if not is_valid_token_id(token_id):
            return False
        return await self._delete_api_token(identifier, token_id)

    async def delete_api_tokens(self, identifier: str) -> int:
        """Delete every token of the user (removal, erasure); returns how many there were."""
        check_id(identifier, "user identifier")
        return await self._delete_api_tokens(identifier)

    async def touch_api_token(self, token_id: str, used_at: datetime) -> None:
        """Record a use of the token; the stored time only moves forward, and a token that is
        gone is no error."""
        stamp = _aware(used_at, "used_at")
        if is_valid_token_id(token_id):
            await self._touch_api_token(token_id, stamp)

    # ------------------------------------------------------------------ for backends
    async def _revoke_sessions(self, identifier: str, revoked_at: str, reason: str) -> None:
        """Store `revoked_at` for the user unless a later time is stored already."""
        raise NotImplementedError

    async def _sessions_revoked_at(self, identifier: str) -> str | None:
        raise NotImplementedError

    async def _create_api_token(self, row: dict[str, str | None]) -> None:
        """Insert the row (`TOKEN_FIELDS`); raise if its id exists."""
        raise NotImplementedError

    async def _get_api_token(self, token_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    async def _list_api_tokens(self, identifier: str) -> list[dict[str, Any]]:
        """The user's rows, newest `createdAt` first (ties: greater id first)."""
        raise NotImplementedError

    async def _delete_api_token(self, identifier: str, token_id: str) -> bool:
        """Delete the row only if its userIdentifier is exactly `identifier`."""
        raise NotImplementedError

    async def _delete_api_tokens(self, identifier: str) -> int:
        """Delete the rows whose userIdentifier is exactly `identifier`; return how many."""
        raise NotImplementedError

    async def _touch_api_token(self, token_id: str, used_at: str) -> None:
        """Set lastUsedAt to `used_at` unless a later time is stored; nothing if the row is gone."""
        raise NotImplementedError
