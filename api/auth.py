"""Who calls the API: `Authorization: Bearer <personal API token>` (the token management
routes also take the browser's Chainlit login, so a user can manage tokens from the UI),
and how often they may.

A token is looked up in the configured database on every request (one key read), so a
revoked token stops working at once on every instance; the user record must still exist
(removing a user revokes their tokens too). The rate limit is a token bucket per API
token, per process.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from chainlit.user import PersistedUser
from fastapi import Request

from chat.api_tokens import ApiTokens
from datalayers.actor import request_user

from .problems import Problem

BEARER_REALM = 'Bearer realm="api"'


@dataclass(frozen=True)
class Caller:
    user: PersistedUser
    token_id: str | None  # None: the browser's login (token management only)

    @property
    def identifier(self) -> str:
        return self.user.identifier


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": BEARER_REALM})


class RateLimiter:
    """At most `per_minute` requests per key, in bursts of up to `per_minute` (a token
    bucket); remembers the `max_keys` most recent keys."""

    def __init__(self, per_minute: int, max_keys: int = 10_000, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = self.clock()
        tokens, stamp = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class Authenticator:
    def __init__(self, data_layer: Any, tokens: ApiTokens, limiter: RateLimiter, browser_login=None):
        self.data_layer = data_layer
        self.tokens = tokens
        self.limiter = limiter
        # Decodes Chainlit's login cookie to an identifier (None: not logged in); the app
        # passes Chainlit's own decoder, which also honours session revocation.
        self.browser_login = browser_login

    async def caller(self, request: Request, *, allow_browser: bool = False) -> Caller:
        scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            token = await self.tokens.authenticate(credentials.strip())
            if token is None:
                raise unauthorized("the API token is invalid, expired or revoked")
            wait = self.limiter.take(token.id)
            if wait > 0:
                raise Problem(429, "too many requests for this API token; slow down",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
            return await self._caller(token.user_identifier, token.id)
        if allow_browser and self.browser_login is not None:
            identifier = await self.browser_login(request)
            if identifier:
                return await self._caller(identifier, None)
        raise unauthorized("send 'Authorization: Bearer <API token>'")

    async def _caller(self, identifier: str, token_id: str | None) -> Caller:
        user = await self.data_layer.get_user(identifier)
        if user is None:
            raise unauthorized("this user no longer exists")
        # The data layer checks ownership against the acting user of every read and write.
        request_user.set(identifier)
        return Caller(user=user, token_id=token_id)
