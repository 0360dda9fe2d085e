"""Which DynamoDB failures are worth retrying: the journal retries transient ones (throttled,
a server error, the endpoint unreachable or slow, a transaction conflict) for as long as
they last, and refuses permanent ones (DynamoDB rejected this input) at once."""

from __future__ import annotations

from collections.abc import Iterator

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from storage.base import ObjectNotFound

from ..writeback import PERMANENT, TRANSIENT, UNKNOWN
from .client import INCOMPATIBLE_TABLE, DynamoDBError

TRANSIENT_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "InternalFailure", "TransactionConflict",
    "TransactionConflictException", "TransactionInProgressException", "LimitExceededException",
    # A conditional write that kept losing races, a batch DynamoDB kept throttling: a
    # later attempt settles both.
    "ConditionalCheckFailedException", "UnprocessedItems", "UnprocessedKeys",
    # The service is unusable as configured (expired credentials, a missing permission, a
    # table being restored): the operator's fix must not find the writes refused meanwhile.
    "ExpiredTokenException", "ExpiredToken", "UnrecognizedClientException", "AccessDeniedException",
    "ResourceNotFoundException", "ResourceInUseException", INCOMPATIBLE_TABLE,
})
#: Cancellation reasons of a transaction worth retrying.
TRANSIENT_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded",
                               "ConditionalCheckFailed"})
PERMANENT_CODES = frozenset({
    "ValidationException", "SerializationException", "ItemCollectionSizeLimitExceededException",
    "DuplicateItemException", "IdempotentParameterMismatchException",
})
TRANSIENT_BOTOCORE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
                      HTTPClientError, NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _code_kind(code: str, reasons: tuple[str, ...]) -> str:
    if code == "TransactionCanceledException":
        if "ValidationError" in reasons:
            return PERMANENT
        return TRANSIENT if any(r in TRANSIENT_REASONS for r in reasons) else UNKNOWN
    if code in TRANSIENT_CODES:
        return TRANSIENT
    return PERMANENT if code in PERMANENT_CODES else UNKNOWN


def failure_kind(exc: BaseException) -> str | None:
    """TRANSIENT, PERMANENT or UNKNOWN; None leaves it to the base's rule."""
    for error in _chain(exc):
        if isinstance(error, DynamoDBError) and error.code is not None:
            return _code_kind(error.code, error.reasons)
        if isinstance(error, ClientError):
            reasons = tuple(r.get("Code") or "None" for r in error.response.get("CancellationReasons", []) or [])
            return _code_kind(error.response.get("Error", {}).get("Code") or "", reasons)
        if isinstance(error, ParamValidationError):
            return PERMANENT
        if isinstance(error, TRANSIENT_BOTOCORE):
            return TRANSIENT
        if isinstance(error, ObjectNotFound):
            # A blob replaced by a concurrent write is found again on the next read; one
            # that is really gone will not be, so the write is refused after a few tries.
            return UNKNOWN
    return None
