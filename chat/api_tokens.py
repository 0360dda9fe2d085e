"""Personal API tokens: issued to a user, shown once, stored only as a SHA-256 hash in the
configured database (the data layer's `create_api_token` … `touch_api_token`).

A token reads `clp_<id>_<secret>`: `id` is 32 hex digits (the public part, the database
key, what logs and listings show), `secret` is `secrets.token_urlsafe(32)` (256 random
bits; it may contain `_`, so the token is split at the first two separators only). The
hash covers the whole token and is compared in constant time; a 256-bit secret needs no
slow hash. Nothing here logs a token or its hash.

`authenticate` reads the token on every call (one key lookup), so a revoked token stops
working at once on every instance. It records the last use at most once per
`touch_interval_seconds` per token and process, in the background: the request never
waits for that write, and a failed one is a WARNING naming the token id.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from chainlit.logger import logger as chainlit_logger

from datalayers.credentials import MAX_TOKEN_NAME_LENGTH, ApiToken

PREFIX = "clp"
_ID = re.compile(r"^[0-9a-f]{32}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 43 characters
#: Longer input is not a token of ours: refused before it is hashed.
MAX_TOKEN_LENGTH = len(PREFIX) + 1 + 32 + 1 + 43
#: Tokens whose last recorded use this process remembers (for the touch throttle).
TOUCH_MEMORY = 10_000

logger = chainlit_logger.getChild("ApiTokens")


def token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def parse_token(plaintext: Any) -> str | None:
    """The token id of a well-formed token, else None."""
    if not isinstance(plaintext, str) or len(plaintext) > MAX_TOKEN_LENGTH:
        return None
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not _ID.match(parts[1]) or not _SECRET.match(parts[2]):
        return None
    return parts[1]


def check_name(name: Any) -> str:
    """The label, stripped: 1 to 100 characters."""
    label = name.strip() if isinstance(name, str) else ""
    if not 0 < len(label) <= MAX_TOKEN_NAME_LENGTH:
        raise ValueError(f"a token's name must have 1 to {MAX_TOKEN_NAME_LENGTH} characters")
    return label


class ApiTokens:
    """Issues, checks, lists and revokes personal API tokens, on a data layer."""

    def __init__(self, data_layer: Any, *, touch_interval_seconds: float = 60,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] | None = None):
        self.data_layer = data_layer
        self.touch_interval = touch_interval_seconds
        self.clock = clock
        self.now = now or (lambda: datetime.now(UTC))
        self._touched: OrderedDict[str, float] = OrderedDict()  # token id -> `clock` at the last touch
        self._touches: set[asyncio.Task] = set()

    async def issue(self, identifier: str, name: str,
                    expires_in: timedelta | None = None) -> tuple[str, ApiToken]:
        """A new token for the user: (the plaintext, shown once and never stored; the record)."""
        label = check_name(name)
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("a token's lifetime must be positive")
        token_id = secrets.token_hex(16)
        plaintext = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        created = self.now()
        token = ApiToken(id=token_id, user_identifier=identifier, name=label, token_hash=token_hash(plaintext),
                         created_at=created, expires_at=created + expires_in if expires_in is not None else None)
        await self.data_layer.create_api_token(token)
        logger.info("issued API token %s to %r", token_id, identifier)
        return plaintext, token

    async def authenticate(self, plaintext: str) -> ApiToken | None:
        """The stored token if `plaintext` is one that exists, matches and has not expired;
        None otherwise. A failing lookup raises (the caller answers 503)."""
        token_id = parse_token(plaintext)
        if token_id is None:
            return None
        token = await self.data_layer.get_api_token(token_id)
        if token is None or not hmac.compare_digest(token.token_hash, token_hash(plaintext)):
            return None
        now = self.now()
        if token.expired(now):
            return None
        self._touch_soon(token.id, now)
        return token

    async def list(self, identifier: str) -> builtins.list[ApiToken]:
        """The user's tokens, newest first."""
        return await self.data_layer.list_api_tokens(identifier)

    async def revoke(self, identifier: str, token_id: str) -> bool:
        """Delete the user's token; False if they have none with that id."""
        deleted = await self.data_layer.delete_api_token(identifier, token_id)
        if deleted:
            self._touched.pop(token_id, None)
            logger.info("revoked API token %s of %r", token_id, identifier)
        return deleted

    async def revoke_all(self, identifier: str) -> int:
        count = await self.data_layer.delete_api_tokens(identifier)
        if count:
            logger.info("revoked %d API token(s) of %r", count, identifier)
        return count

    # ------------------------------------------------------------------ last use
    def _touch_soon(self, token_id: str, now: datetime) -> None:
        moment = self.clock()
        last = self._touched.get(token_id)
        if last is not None and moment - last < self.touch_interval:
            return
        self._touched[token_id] = moment
        self._touched.move_to_end(token_id)
        while len(self._touched) > TOUCH_MEMORY:
            self._touched.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._touch(token_id, now))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _touch(self, token_id: str, now: datetime) -> None:
        try:
            await self.data_layer.touch_api_token(token_id, now)
        except Exception as exc:  # the request succeeded; only the last-used time is missing
            logger.warning("could not record the use of API token %s (%s: %s)", token_id, type(exc).__name__, exc)

    async def wait_touches(self) -> None:
        """Wait for the last-use writes in flight (shutdown, tests)."""
        while self._touches:
            await asyncio.gather(*list(self._touches), return_exceptions=True)
