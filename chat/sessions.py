"""Sessions that end: logout, a password change and removing a user revoke that user's
login tokens at once, on HTTP and on the socket, on every app instance.

A login token is Chainlit's JWT (cookie `access_token`, or `Authorization: Bearer`), valid
until it expires. The data layer keeps, per user, the time their sessions were last
revoked (`revoke_sessions` / `sessions_revoked_at`, in the configured database, so it
survives restarts and is shared by every instance and by `python -m chat.users`). A token
issued (`iat`) before that time is refused:

* `RevokedTokenFilter`, an ASGI middleware, removes a revoked token from every request
  before Chainlit sees it — HTTP routes (including `/auth/jwt`, which would otherwise
  trade an old token for a new one) and the Socket.IO handshake alike, so Chainlit answers
  401 or refuses the socket exactly as for a missing login. It patches nothing in Chainlit:
  it relies only on where Chainlit 2.12 reads tokens (that cookie, that header), which
  tests/security/test_sessions.py checks.
* Sockets already open are closed: at once on this instance on logout, and by a sweep
  every `SWEEP_SECONDS` everywhere (a revocation by another instance or the CLI).

Cost: the check is one primary-key lookup per user, cached for `cache_seconds` (2 s) per
process. This instance's own revocations update its cache at once; one written by another
instance or the CLI is seen here within `cache_seconds` (and open sockets close within
`SWEEP_SECONDS` plus that). Clocks of the hosts must agree (NTP): a token's `iat` comes
from the clock of the instance that issued it.

`iat` has whole-second resolution, so a token issued in the same second as a revocation
cannot be told apart from one issued just before it: such tokens are refused, and a new
login in that second waits for the next one (`before_login`, at most a second).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import jwt
from starlette.requests import cookie_parser

from datalayers.errors import RequestError

SWEEP_SECONDS = 5.0
CACHE_SIZE = 10_000
#: How often a failing lookup is reported (the check goes on with the last value known).
WARN_EVERY_SECONDS = 60.0
#: A lookup slower than this counts as failed: a request never waits long on an outage.
LOOKUP_TIMEOUT_SECONDS = 2.0


class SessionStore(Protocol):
    async def revoke_sessions(self, identifier: str, reason: str = "") -> Any: ...

    async def sessions_revoked_at(self, identifier: str) -> Any: ...


class SessionGuard:
    """Revokes and checks login sessions, with a short per-process cache of the times."""

    def __init__(self, store: SessionStore, *, secret: Callable[[], str | None], cookie_name: str,
                 logger: logging.Logger, cache_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.secret = secret
        self.cookie_name = cookie_name
        self.logger = logger
        self.cache_seconds = cache_seconds
        self.clock = clock
        # identifier -> (revoked at, epoch seconds or None; when it was read, by `clock`)
        self._cache: OrderedDict[str, tuple[float | None, float]] = OrderedDict()
        self._warned_at = -math.inf
        self.disconnect: Callable[[str], Any] | None = None  # set by `watch_sockets`

    # ------------------------------------------------------------------ tokens
    def claims(self, token: str, *, verify_exp: bool = True) -> dict[str, Any] | None:
        """The token's claims if it is one of ours (signed with the auth secret), else None:
        Chainlit refuses such a token itself."""
        secret = self.secret()
        if not token or not secret:
            return None
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_exp": verify_exp})
        except jwt.PyJWTError:
            return None
        return claims if isinstance(claims.get("identifier"), str) else None

    def token_of(self, cookies: dict[str, str], authorization: str | None) -> str | None:
        """Where Chainlit 2.12 reads a login token: its cookie (possibly in chunks), else a
        bearer header."""
        from chainlit.auth.cookie import get_token_from_cookies

        token = get_token_from_cookies(cookies)
        if token:
            return token
        scheme, _, value = (authorization or "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    # ------------------------------------------------------------------ revocation times
    async def revoked_at(self, identifier: str, *, fresh: bool = False) -> float | None:
        """When `identifier`'s sessions were last revoked, as epoch seconds (None: never)."""
        now = self.clock()
        cached = self._cache.get(identifier)
        if cached is not None and not fresh and now - cached[1] < self.cache_seconds:
            return cached[0]
        try:
            stored = await asyncio.wait_for(self.store.sessions_revoked_at(identifier), LOOKUP_TIMEOUT_SECONDS)
        except RequestError:
            return None  # not an identifier the database can hold: nothing was ever revoked for it
        except Exception as exc:
            # The database is unreachable: keep serving with the last time known, as the
            # rest of the app keeps serving (writes are journaled) rather than logging
            # everybody out; and ask again only after `cache_seconds`, so requests do not
            # each wait for a dead database. Said once a minute, not per request.
            if now - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = now
                self.logger.warning("session check cannot read revocations (%s: %s); using the last known times "
                                    "until the database answers", type(exc).__name__, exc)
            known = cached[0] if cached is not None else None
            self._remember(identifier, known, now)
            return known
        value = stored.timestamp() if stored is not None else None
        self._remember(identifier, value, now)
        return value

    def _remember(self, identifier: str, value: float | None, now: float) -> None:
        self._cache[identifier] = (value, now)
        self._cache.move_to_end(identifier)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def is_revoked(self, claims: dict[str, Any]) -> bool:
        revoked = await self.revoked_at(claims["identifier"])
        if revoked is None:
            return False
        issued = claims.get("iat")
        # `iat` is whole seconds (floored): a token of the revocation's own second is refused.
        return not isinstance(issued, (int, float)) or issued < math.ceil(revoked)

    async def revoke(self, identifier: str, reason: str) -> None:
        """End every session of `identifier` now: in the database (for every instance), in
        this instance's cache, and this instance's open sockets of that user."""
        revoked = await self.store.revoke_sessions(identifier, reason)
        self._remember(identifier, revoked.timestamp(), self.clock())
        self.logger.info("sessions of %r ended (%s)", identifier, reason)
        try:
            await self.sweep(only=identifier)
        except Exception:  # the revocation stands; the periodic sweep closes them
            self.logger.exception("closing the open sockets of %r failed; the next sweep retries", identifier)

    async def logout(self, request, response):
        """Chainlit's `on_logout`: it has cleared the cookie in `response`; end every session
        of the user whose token came with the request (all their browsers and devices)."""
        from starlette.responses import JSONResponse

        token = self.token_of(dict(request.cookies), request.headers.get("authorization"))
        claims = self.claims(token) if token else None
        if claims is None:  # no valid login came with it: nothing to end
            return {"success": True}
        try:
            await self.revoke(claims["identifier"], "logout")
        except Exception as exc:
            self.logger.error("logout of %r: the sessions could not be ended (%s: %s); they stay valid until "
                              "a logout succeeds or `python -m chat.users logout` is run", claims["identifier"],
                              type(exc).__name__, exc)
            failed = JSONResponse({"detail": "Logged out in this browser, but your sessions could not be ended "
                                             "everywhere (the database is unreachable). Please log out again later."},
                                  status_code=503)
            failed.raw_headers.extend(h for h in response.raw_headers if h[0] == b"set-cookie")
            return failed
        return {"success": True}

    async def before_login(self, identifier: str) -> None:
        """A login right after a revocation, in the same second, would get a token of that
        second — refused: wait for the next second (at most one)."""
        revoked = await self.revoked_at(identifier, fresh=True)
        if revoked is not None:
            wait = math.ceil(revoked) - time.time()
            if 0 < wait <= 1.0:
                await asyncio.sleep(wait)

    # ------------------------------------------------------------------ open sockets
    async def sweep(self, only: str | None = None) -> int:
        """Close this instance's open sockets whose session was revoked; returns how many."""
        if self.disconnect is None:
            return 0
        from chainlit.session import ws_sessions_id

        closed = 0
        for session in list(ws_sessions_id.values()):
            user, token = session.user, session.token
            if user is None or not token or (only is not None and user.identifier != only):
                continue
            claims = self.claims(token, verify_exp=False)  # Chainlit verified it when the socket opened
            if claims is not None and await self.is_revoked(claims):
                self.logger.info("closing a socket of %r: its session was ended", user.identifier)
                await self.disconnect(session.socket_id)
                closed += 1
        return closed

    def watch_sockets(self, disconnect: Callable[[str], Any]) -> None:
        self.disconnect = disconnect

    async def sweep_forever(self, interval: float = SWEEP_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                self.logger.exception("closing the sockets of ended sessions failed; retrying in %.0fs", interval)


class RevokedTokenFilter:
    """ASGI middleware: an HTTP request carrying a revoked login token goes on without it, so
    Chainlit treats it as not logged in (401 on its routes; the login page still loads). A
    Socket.IO request (handshake or poll) with one is refused here (401, or a websocket
    closed before it opens): Chainlit would refuse it too, with an ERROR in the log."""

    def __init__(self, app, *, guard: SessionGuard, socket_path: str):
        self.app = app
        self.guard = guard
        self.socket_path = socket_path.rstrip("/")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            claims = await self._revoked_claims(scope)
            if claims is not None:
                if (scope["path"] + "/").startswith(self.socket_path + "/"):
                    self.guard.logger.debug("refused a socket request of %r: its session was ended",
                                            claims["identifier"])
                    await _refuse(scope, receive, send)
                    return
                scope = self._without_token(scope)
        await self.app(scope, receive, send)

    async def _revoked_claims(self, scope) -> dict[str, Any] | None:
        cookie_header = "; ".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie")
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        cookies = cookie_parser(cookie_header) if cookie_header else {}
        token = self.guard.token_of(cookies, authorization)
        claims = self.guard.claims(token) if token else None
        return claims if claims is not None and await self.guard.is_revoked(claims) else None

    def _without_token(self, scope) -> dict:
        cookie_header = "; ".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie")
        cookies = cookie_parser(cookie_header) if cookie_header else {}
        name = self.guard.cookie_name
        kept = {k: v for k, v in cookies.items() if not (k == name or k.startswith(f"{name}_"))}
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"cookie", b"authorization")]
        if kept:
            headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in kept.items()).encode("latin-1")))
        return {**scope, "headers": headers}


async def _refuse(scope, receive, send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
        return
    from starlette.responses import JSONResponse

    await JSONResponse({"detail": "Your session has ended: log in again."}, status_code=401)(scope, receive, send)
