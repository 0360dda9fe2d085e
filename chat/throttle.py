"""Login throttling: a growing delay, then a temporary lock, per user name and per client
address, against password guessing.

What is counted (failed password logins, within a window of `lock_seconds` since the last):

* per (user name, address): after `free` failures each further attempt must wait
  `delay * 2**k` since the last failure; at `max_failures` the pair is locked for
  `lock_seconds`. One address guessing one user's password.
* per address, with five times the allowance (an office behind one NAT address holds many
  users): one address trying passwords on many names.
* per user name, with the address allowance, counted over every address — but applied
  only to an address that has itself failed on that name. Many addresses guessing one
  user each get one free attempt, then the user's count holds them; a correct login from
  an address that has not failed is never delayed, so an attacker cannot lock a user out.

A throttled attempt is answered at once with 429 and `Retry-After`, before its password is
checked: no request is held open (an attacker could otherwise pile up sleeping requests),
no scrypt time is spent on it, and the client is told when to come back. At most one
attempt per name and address is judged at a time once past the free allowance, so
parallel requests do not multiply the guesses.

State is in process memory, bounded (least recently used keys go first). With several app
instances behind a load balancer each counts what it sees: an attacker spread over N
instances gets up to N times the attempts unless the balancer pins clients (sticky
sessions); the lock itself holds on the instance that set it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

ADDRESS_FACTOR = 5
MAX_KEYS = 50_000
NAME_KEY_LENGTH = 128  # names are attacker-chosen: keys and logs keep at most this much
#: A login form is a name and a password: a larger body is refused unread.
MAX_LOGIN_BODY = 64 * 1024


@dataclass
class _Counter:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0
    pending: int = 0


@dataclass(frozen=True)
class Limits:
    free: int
    max_failures: int


@dataclass
class Attempt:
    """One login being judged: `finish` it with the outcome."""

    name: str
    address: str
    keys: list[tuple[str, str]] = field(default_factory=list)


class LoginThrottle:
    def __init__(self, *, max_failures: int = 10, delay_seconds: float = 1.0, lock_seconds: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_failures < 2:
            raise ValueError("max_failures must be at least 2")
        # Delays start after a third of the allowance: a person mistyping a few times is
        # never slowed.
        free = max(1, max_failures // 3)
        self.pair_limits = Limits(free, max_failures)
        self.wide_limits = Limits(free * ADDRESS_FACTOR, max_failures * ADDRESS_FACTOR)
        self.delay_seconds = delay_seconds
        self.lock_seconds = lock_seconds
        self.clock = clock
        self._counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()

    # ------------------------------------------------------------------ judging
    def begin(self, name: str, address: str) -> Attempt | float:
        """An Attempt to finish, or the seconds to wait (the attempt is refused)."""
        name = name[:NAME_KEY_LENGTH]
        now = self.clock()
        pair = self._get(("pair", f"{address}\x00{name}"), now)
        keys = [("pair", f"{address}\x00{name}"), ("address", address), ("name", name)]
        waits = [self._wait(pair, self.pair_limits, now), self._wait(self._get(keys[1], now), self.wide_limits, now)]
        if pair.failures:
            waits.append(self._wait(self._get(keys[2], now), self.wide_limits, now))
        wait = max(waits)
        if wait > 0:
            return wait
        for key in keys:
            self._counter(key).pending += 1
        return Attempt(name, address, keys)

    def finish(self, attempt: Attempt, succeeded: bool | None) -> int:
        """Record the outcome (None: not a password check at all, e.g. a malformed form).
        Returns the failures now counted for this name from this address."""
        now = self.clock()
        for key in attempt.keys:
            counter = self._counter(key)
            counter.pending = max(0, counter.pending - 1)
            if succeeded is False:
                counter.failures += 1
                counter.last = now
                limits = self.pair_limits if key[0] == "pair" else self.wide_limits
                if counter.failures >= limits.max_failures:
                    counter.locked_until = now + self.lock_seconds
        if succeeded:
            # The right password from this address: its guesses on this name are over.
            # The address and name counts stay, or a known account would reset them.
            self._counters.pop(attempt.keys[0], None)
            return 0
        return self._counter(attempt.keys[0]).failures

    def locked(self, attempt: Attempt) -> bool:
        """Whether the last failure locked this name from this address (or the address)."""
        now = self.clock()
        return any(self._counter(key).locked_until > now for key in attempt.keys[:2])

    # ------------------------------------------------------------------ counters
    def _wait(self, counter: _Counter, limits: Limits, now: float) -> float:
        if counter.locked_until > now:
            return counter.locked_until - now
        if counter.failures + counter.pending < limits.free:
            return 0.0
        if counter.pending:  # past the free allowance, one attempt at a time
            return max(self.delay_seconds, 0.1)
        step = counter.failures - limits.free
        if step < 0:
            return 0.0
        # Doubling, but never longer than the lock itself.
        delay = min(self.lock_seconds, self.delay_seconds * 2 ** min(step, 40))
        return max(0.0, counter.last + delay - now)

    def _get(self, key: tuple[str, str], now: float) -> _Counter:
        """The live counter for `key` (an expired one is forgotten), without creating it."""
        counter = self._counters.get(key)
        if counter is None:
            return _Counter()
        expired = counter.locked_until <= now and now - counter.last > self.lock_seconds
        if expired and not counter.pending:
            del self._counters[key]
            return _Counter()
        if counter.locked_until and counter.locked_until <= now and not counter.pending:
            # A lock that ran out starts the count afresh.
            del self._counters[key]
            return _Counter()
        return counter

    def _counter(self, key: tuple[str, str]) -> _Counter:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = _Counter()
            while len(self._counters) > MAX_KEYS:
                self._counters.popitem(last=False)
        else:
            self._counters.move_to_end(key)
        return counter


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class LoginThrottleMiddleware:
    """ASGI middleware in front of Chainlit's `POST /login`: refuses throttled attempts with
    429 before the password is checked, and counts the outcome of the others (200: right,
    401: wrong) with a WARNING for each wrong one. Chainlit's password callback cannot do
    this: it is not given the client's address, and an exception raised in it is logged
    and turned into a 401 by Chainlit."""

    def __init__(self, app, *, throttle: LoginThrottle, path: str, logger: logging.Logger):
        self.app = app
        self.throttle = throttle
        self.path = path
        self.logger = logger

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, MAX_LOGIN_BODY)
        if body is None:
            await _send_json(send, 413, {"detail": "The login form is too large."})
            return
        try:
            name = await _form_username(scope, body)
        except ValueError as exc:
            # Refused here, not handed on: a form this check cannot read must not reach
            # the password check unthrottled.
            await _send_json(send, 400, {"detail": f"Malformed login form: {exc}"})
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        if name is None:  # no user name: Chainlit refuses the form (422), nothing to count
            await self.app(scope, _replay(body, receive), send)
            return
        attempt = self.throttle.begin(name, address)
        if not isinstance(attempt, Attempt):
            wait = retry_after_header(attempt)
            self.logger.info("login as %r from %s refused: throttled for %ss", name[:64], address, wait)
            unit = "second" if wait == "1" else "seconds"
            await _send_json(send, 429, {"detail": f"Too many failed logins. Try again in {wait} {unit}."},
                             ((b"retry-after", wait.encode()),))
            return
        finished = False

        async def count_then_send(message) -> None:
            # Counted (and logged) before the client has its answer: its next attempt is
            # judged with this one included.
            nonlocal finished
            if message["type"] == "http.response.start" and not finished:
                finished = True
                self._finish(attempt, {200: True, 401: False}.get(message["status"]))
            await send(message)

        try:
            await self.app(scope, _replay(body, receive), count_then_send)
        finally:
            if not finished:  # no answer at all (the app failed): not a password check
                self.throttle.finish(attempt, None)

    def _finish(self, attempt: Attempt, outcome: bool | None) -> None:
        failures = self.throttle.finish(attempt, outcome)
        if outcome is False:
            self.logger.warning("failed login as %r from %s (%d in a row from this address)%s", attempt.name[:64],
                                attempt.address, failures, "; locked" if self.throttle.locked(attempt) else "")


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands over the body already read, then the real channel."""
    delivered = False

    async def replay() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _form_username(scope, body: bytes) -> str | None:
    """The form's `username` (None when absent); ValueError when the form cannot be read."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    async def no_more() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    try:
        async with Request(scope, _replay(body, no_more)).form(max_files=0, max_fields=10) as form:
            name = form.get("username")
    except (HTTPException, MultiPartException, ValueError) as exc:
        raise ValueError(getattr(exc, "detail", None) or str(exc) or type(exc).__name__) from exc
    return name if isinstance(name, str) else None


async def _send_json(send, status: int, payload: dict, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body})
