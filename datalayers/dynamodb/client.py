"""Talking to DynamoDB: the `dynamodb://` URL, `DynamoDBError`, and `Table` — the one shared
aioboto3 client behind a call wrapper (operation and ids on every error, throttling retried
for direct operations, a bound on requests in flight), queries and batch reads/writes."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import DataLayerError
from .items import Expression, deserialize, serialize

BATCH_WRITE_SIZE = 25   # BatchWriteItem's limit per request
BATCH_GET_SIZE = 100    # BatchGetItem's limit per request
BATCH_ATTEMPTS = 8
THROTTLE_ATTEMPTS = 4
CONFLICT_ATTEMPTS = 12
THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable",
})
CONFLICT_CODES = frozenset({"ConditionalCheckFailed", "TransactionConflict"})
UNKNOWN_OUTCOME_CODES = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})
TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
CREDENTIAL_OPTIONS = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
    "access_key_id", "secret_access_key", "session_token", "key", "secret", "token", "password",
})
URL_OPTIONS = frozenset({"region", "endpoint_url"})
#: The code of the error raised when the table cannot serve this layer as it is (it needs
#: `upgrade`): writes wait in the journal until the operator has run it.
INCOMPATIBLE_TABLE = "IncompatibleTable"


class DynamoDBError(DataLayerError):
    """An AWS call failed. `code` is the AWS error code; `reasons` the cancellation reason
    codes of a failed transaction, one per item."""

    def __init__(self, message: str, code: str | None = None, reasons: tuple[str, ...] = ()):
        super().__init__(message)
        self.code = code
        self.reasons = reasons

    @property
    def not_written(self) -> bool:
        """DynamoDB answered and refused the request: nothing was written. (A timeout, a
        lost connection or a 5xx leaves the outcome unknown.)"""
        return self.code is not None and self.code not in UNKNOWN_OUTCOME_CODES

    @property
    def is_conflict(self) -> bool:
        """A conditional write lost a race: re-read and try again."""
        if self.code == "ConditionalCheckFailedException":
            return True
        return self.code == "TransactionCanceledException" and any(r in CONFLICT_CODES for r in self.reasons)

    @property
    def too_large(self) -> bool:
        """The item would exceed DynamoDB's size limit (the caller can move attributes out)."""
        if self.code == "TransactionCanceledException":
            # The reason's message is not kept; the caller's slower path moves large
            # attributes out, or is refused with the message.
            return "ValidationError" in self.reasons
        return self.code == "ValidationException" and "size" in str(self).lower()


class Conflict(Exception):
    """Internal: a concurrent writer got there first; the caller re-reads and retries."""


def parse_dynamodb_url(url: str) -> dict[str, str | None]:
    """`dynamodb://TABLE?region=REGION&endpoint_url=URL` -> {table, region, endpoint_url}.

    Credentials come only from the standard AWS chain (environment, profile, SSO, instance
    or task role): a URL with a user, password or key option is refused, because URLs end
    up in logs, shell history and process listings.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "dynamodb":
        raise ValueError(f"not a dynamodb:// URL: {parts.scheme!r}")
    if "@" in parts.netloc:
        raise ValueError("dynamodb:// URLs must not contain credentials; use the standard AWS "
                         "credential chain (AWS_PROFILE, environment variables, an IAM role)")
    table = parts.netloc or parts.path.lstrip("/")
    if not TABLE_NAME.match(table):
        raise ValueError(f"invalid DynamoDB table name {table!r} (3-255 of A-Z a-z 0-9 _ . -)")
    options: dict[str, str | None] = {"table": table, "region": None, "endpoint_url": None}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)):
        key = name.lower()
        if key in CREDENTIAL_OPTIONS:
            raise ValueError(f"dynamodb:// URLs must not contain credentials ({name!r}); use the "
                             "standard AWS credential chain (AWS_PROFILE, environment variables, an IAM role)")
        if key not in URL_OPTIONS:
            raise ValueError(f"unknown dynamodb:// option {name!r}; known: {', '.join(sorted(URL_OPTIONS))}")
        options[key] = value or None
    endpoint = options["endpoint_url"]
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"endpoint_url must be an http(s) URL, got {endpoint!r}")
    if endpoint and "@" in urlsplit(endpoint).netloc:
        raise ValueError("endpoint_url must not contain credentials")
    return options


def _backoff(attempt: int, base: float = 0.05, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter (AWS's recommendation for contended retries)."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


async def retry_conflicts(operation: str, ids: dict[str, Any], attempt_once: Callable[[], Awaitable[Any]],
                          logger: logging.Logger):
    """Run `attempt_once()` until it commits without a concurrent writer in between."""
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            return await attempt_once()
        except Conflict:
            logger.debug("%s (%s): concurrent write, retrying", operation, ids)
            await asyncio.sleep(_backoff(attempt, base=0.005, cap=0.5))
    raise DynamoDBError(f"{operation} ({ids}): gave up after {CONFLICT_ATTEMPTS} conflicting concurrent writes",
                        "ConditionalCheckFailedException")


class Pacer:
    """Lets at most one request start per event-loop iteration.

    Starting an AWS request costs about a millisecond of CPU on the event loop (botocore
    serialises, resolves the endpoint and signs it before the first byte is sent). When
    many become ready at once — a burst of sessions, a batch of journaled writes woken
    together, responses arriving together — one loop iteration would start them all back to
    back and every other task (other sessions' sockets, timers) would wait for the lot.
    Taking turns keeps each iteration to one start: a request that finds the turn taken
    waits a loop iteration or two. No request is added or delayed by more than the starts
    ahead of it; on DynamoDB, whose round trips take milliseconds, the cost is nil."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taken = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing carries over
            self._loop, self._taken, self._waiters = loop, False, deque()
        if self._taken:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # resolved by _pass: the turn is ours
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    loop.call_soon(self._pass)  # given the turn, then cancelled: pass it on
                raise
        self._taken = True
        loop.call_soon(self._pass)  # the next iteration: the next waiter's turn

    def _pass(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._taken = False


class Table:
    """One table through one lazily opened client (one session and connection pool).

    `prepare(client)` runs once before the first call (create or check the table)."""

    def __init__(self, name: str, client_context: Callable[[], Any], *, client: Any = None,
                 prepare: Callable[[Any], Awaitable[None]] | None = None, max_concurrency: int = 8,
                 logger: logging.Logger):
        self.name = name
        self._client_context = client_context
        self._client = client
        self._stack: AsyncExitStack | None = None
        self._prepare = prepare
        self._ready = prepare is None
        self._open_lock = asyncio.Lock()
        self.logger = logger
        # Requests in flight at once. Each AWS call costs about a millisecond of CPU in
        # botocore (serialising, signing, parsing) on the event loop; with dozens of chat
        # turns at once, unbounded fan-out makes one loop iteration run them all back to
        # back. A small bound keeps every stall short at no cost in throughput worth having.
        self._in_flight = asyncio.Semaphore(max_concurrency)
        # And of those, one starts per loop iteration (see Pacer).
        self._pacer = Pacer()

    async def open(self):
        """The client, opened on first use."""
        if self._client is None:
            async with self._open_lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    client = await stack.enter_async_context(self._client_context())
                    self._client, self._stack = client, stack
        return self._client

    def mark_ready(self) -> None:
        self._ready = True

    async def ready(self):
        """The client, once the table is known to exist with the expected schema."""
        if self._ready:
            return self._client if self._client is not None else await self.open()
        client = await self.open()
        async with self._open_lock:
            if not self._ready:
                try:
                    await self._prepare(client)
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    hint = (" (create it: python -m datalayers.dynamodb provision --url ..., or "
                            "DATABASE_AUTO_MIGRATE=true)") if code == "ResourceNotFoundException" else ""
                    raise DynamoDBError(f"opening table {self.name!r} failed: {exc}{hint}", code) from exc
                except BotoCoreError as exc:
                    raise DynamoDBError(f"opening table {self.name!r} failed: {exc}") from exc
                self._ready = True
        return client

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._client = None
            self._ready = self._prepare is None
            await stack.aclose()

    # ------------------------------------------------------------------ calls
    async def call(self, method: str, operation: str, ids: dict[str, Any], *, journaled: bool = False,
                   **kwargs) -> dict[str, Any]:
        """One AWS call; every error is raised as DynamoDBError with the operation and ids.

        Throttling that outlasts botocore's own retries is retried here with backoff for
        direct operations. A journaled write is tried once: the journal retries it with one
        schedule for all threads, and reports the outage once, so its failures are DEBUG here."""
        client = await self.ready()
        context = ", ".join(f"{k}={v!r}" for k, v in ids.items())
        attempts = 1 if journaled else THROTTLE_ATTEMPTS
        quiet = logging.DEBUG if journaled else logging.ERROR
        for attempt in range(attempts):
            try:
                async with self._in_flight:
                    await self._pacer.turn()
                    return await getattr(client, method)(**kwargs)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = error.get("Code")
                if code in THROTTLING_CODES and attempt < attempts - 1:
                    delay = _backoff(attempt + 2)
                    self.logger.warning("%s (%s): %s from %s, retrying in %.2fs", operation, context, code,
                                        method, delay)
                    await asyncio.sleep(delay)
                    continue
                reasons = tuple(r.get("Code") or "None" for r in exc.response.get("CancellationReasons", []) or [])
                if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                    self.logger.debug("%s (%s): %s %s", operation, context, code, reasons)
                else:
                    self.logger.log(quiet, "%s (%s): %s failed: %s", operation, context, method, code)
                raise DynamoDBError(f"{operation} ({context}): {method} failed: {code}: {error.get('Message', exc)}",
                                    code, reasons) from exc
            except BotoCoreError as exc:
                self.logger.log(quiet, "%s (%s): %s failed: %s", operation, context, method, type(exc).__name__)
                raise DynamoDBError(f"{operation} ({context}): {method} failed: {exc}") from exc
        raise AssertionError("unreachable")

    async def get(self, key: dict[str, str], operation: str, ids: dict[str, Any], *,
                  attributes: Iterable[str] | None = None, consistent: bool = True,
                  journaled: bool = False) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": serialize(key), "ConsistentRead": consistent}
        if attributes is not None:
            expression = Expression()
            kwargs["ProjectionExpression"] = expression.names_of(attributes)
            kwargs.update(expression.kwargs())
        response = await self.call("get_item", operation, ids, journaled=journaled, **kwargs)
        return deserialize(response["Item"]) if "Item" in response else None

    async def query(self, operation: str, ids: dict[str, Any], *, journaled: bool = False,
                    **kwargs) -> AsyncIterator[dict[str, Any]]:
        """Every item of a query, following LastEvaluatedKey."""
        kwargs = {"TableName": self.name, **kwargs}
        while True:
            response = await self.call("query", operation, ids, journaled=journaled, **kwargs)
            for item in response.get("Items", []):
                yield deserialize(item)
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def partition(self, thread_id: str, operation: str, sk_prefix: str | None = None,
                        attributes: Iterable[str] | None = None,
                        filter_expression: Callable[[Expression], str] | None = None,
                        consistent: bool = True, journaled: bool = False) -> list[dict[str, Any]]:
        """The items of one thread, optionally of one kind and filtered. Strongly consistent
        unless told otherwise (search reads at half the cost; a second's lag is harmless there)."""
        expression = Expression()
        condition = f"{expression.name('PK')} = {expression.value(f'THREAD#{thread_id}')}"
        if sk_prefix:
            condition += f" AND begins_with({expression.name('SK')}, {expression.value(sk_prefix)})"
        kwargs: dict[str, Any] = {"KeyConditionExpression": condition, "ConsistentRead": consistent}
        if attributes is not None:
            kwargs["ProjectionExpression"] = expression.names_of(attributes)
        if filter_expression is not None:
            kwargs["FilterExpression"] = filter_expression(expression)
        kwargs.update(expression.kwargs())
        return [item async for item in self.query(operation, {"thread_id": thread_id}, journaled=journaled, **kwargs)]

    async def batch_write(self, requests: list[dict[str, Any]], operation: str, ids: dict[str, Any], *,
                          journaled: bool = False) -> None:
        """BatchWriteItem in chunks of 25, retrying UnprocessedItems with backoff."""
        for start in range(0, len(requests), BATCH_WRITE_SIZE):
            pending: dict[str, Any] = {self.name: requests[start:start + BATCH_WRITE_SIZE]}
            for attempt in range(BATCH_ATTEMPTS):
                response = await self.call("batch_write_item", operation, ids, journaled=journaled,
                                           RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                delay = _backoff(attempt + 1)
                self.logger.warning("%s: %d item(s) unprocessed, retrying in %.2fs", operation,
                                    len(pending.get(self.name, [])), delay)
                await asyncio.sleep(delay)
            else:
                left = len(pending.get(self.name, []))
                raise DynamoDBError(f"{operation} ({ids}): {left} item(s) still unprocessed after "
                                    f"{BATCH_ATTEMPTS} attempts", "UnprocessedItems")

    async def batch_delete(self, keys: list[dict[str, str]], operation: str, ids: dict[str, Any], *,
                           journaled: bool = False) -> None:
        unique = list({(k["PK"], k["SK"]): k for k in keys}.values())  # a batch refuses duplicate keys
        await self.batch_write([{"DeleteRequest": {"Key": serialize(k)}} for k in unique], operation, ids,
                               journaled=journaled)

    async def batch_get(self, keys: list[dict[str, str]], operation: str,
                        attributes: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """BatchGetItem in chunks of 100, retrying UnprocessedKeys with backoff."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), BATCH_GET_SIZE):
            request: dict[str, Any] = {"Keys": [serialize(k) for k in keys[start:start + BATCH_GET_SIZE]]}
            if attributes is not None:
                expression = Expression()
                request["ProjectionExpression"] = expression.names_of(attributes)
                request["ExpressionAttributeNames"] = expression.names
            pending: dict[str, Any] = {self.name: request}
            for attempt in range(BATCH_ATTEMPTS):
                response = await self.call("batch_get_item", operation, {"items": len(keys)}, RequestItems=pending)
                found.extend(deserialize(i) for i in response.get("Responses", {}).get(self.name, []))
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                await asyncio.sleep(_backoff(attempt + 1))
            else:
                raise DynamoDBError(f"{operation}: keys still unprocessed after {BATCH_ATTEMPTS} attempts",
                                    "UnprocessedKeys")
        return found

    async def transact(self, items: list[dict[str, Any]], operation: str, ids: dict[str, Any], *,
                       journaled: bool = False) -> None:
        await self.call("transact_write_items", operation, ids, journaled=journaled, TransactItems=items)
