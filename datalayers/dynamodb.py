"""`DynamoDBDataLayer`: Chainlit's data-layer contract on one DynamoDB table, async (aioboto3).

Key design (Chainlit's own single-table layout, so a table it wrote stays readable):

    item            PK                  SK              notes
    user            USER#{identifier}   USER            id, identifier, metadata, createdAt
    thread          THREAD#{id}         THREAD          UserThreadPK=USER#{identifier},
                                                        UserThreadSK=TS#{updatedAt}#{id}
    step            THREAD#{threadId}   STEP#{id}       the step dict; `feedback` map on it
    element         THREAD#{threadId}   ELEMENT#{id}    the element dict, objectKey (no URL)
    user locator    USERID#{id}         LOCATOR         identifier   (user id -> identifier)
    step locator    STEP#{id}           LOCATOR         threadId     (delete_step, feedback)
    element locator ELEMENT#{id}        LOCATOR         threadId     (delete_element)

Extensions and why (each fixes a failure of Chainlit's layer, design.md §3):

* `UserThreadSK` is the last-activity time (bumped when a step is added) plus the id, so the
  `UserThread` index lists most-recently-active first with a total order for the cursor.
* `_feedbackUp` / `_feedbackDown` counters on the thread, projected into the index, make
  the feedback filter a FilterExpression of the same index query (both values work).
* `_rev` on threads and steps: every read-modify-write is a conditional write on it, so
  concurrent and out-of-order Chainlit writes merge instead of overwriting each other.
* `_blobs` maps attributes moved to blob storage when an item would be too large
  (long outputs, big session metadata); reads put them back.
* Locator items make lookups by a bare id (what Chainlit passes to delete_step,
  delete_element, list_threads' userId) strongly consistent, without a second index.

* `_text` on the thread: a search digest, the lowercased outputs of its user/assistant
  messages (a list, appended in the thread write a new step already makes; capped at
  TEXT_LIMIT, then `_textTruncated`). Never moved to blob storage, never in the index.

Search matches thread names from the index, then the digests of the other threads, read
with BatchGetItem (100 threads a request). Only a thread without a complete digest (written
by Chainlit's layer or before digests existed, or truncated) and without a match in it costs
one Query of its message steps. No Scan anywhere, except in the one-off `upgrade` command
for tables written by Chainlit's layer.

Nothing blocks the event loop; every AWS error is raised as `DynamoDBError` with the
operation and ids; throttling is retried by botocore ("adaptive" mode) and again here,
unprocessed batch items with exponential backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import secrets
import sys
import uuid
from collections import OrderedDict
from contextlib import AsyncExitStack, aclosing
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit

import aioboto3
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User

from storage.base import ObjectNotFound, element_object_key

from .shared import (
    MESSAGE_TYPES,
    STEP_FIELDS_NOT_STORED,
    STEP_TIMESTAMPS,
    CursorCodec,
    DataLayerError,
    check_feedback_owner,
    child_logger,
    current_user_identifier,
    fill_missing,
    is_empty,
    merge_changes,
    normalize_timestamp,
    page_size,
    sign_element_urls,
    upload_element,
    utc_now,
    with_step_defaults,
)

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

    from storage.base import BlobStorage

logger = child_logger("DynamoDB")

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "cloudformation" / "dynamodb-table.json"
INDEX_NAME = "UserThread"
#: Attributes list_threads filters on inside the index: the template must project them.
INDEX_ATTRIBUTES = ("id", "name", "_feedbackUp", "_feedbackDown")

REV, BLOBS, FEEDBACK_UP, FEEDBACK_DOWN = "_rev", "_blobs", "_feedbackUp", "_feedbackDown"
#: The thread's search digest (see `_append_text`): lowercased message outputs, their size
#: in bytes, whether appending stopped at the cap, and when the digest started.
TEXT, TEXT_BYTES, TEXT_TRUNCATED, TEXT_SINCE = "_text", "_textBytes", "_textTruncated", "_textSince"
DIGEST_ATTRIBUTES = frozenset({TEXT, TEXT_BYTES, TEXT_TRUNCATED, TEXT_SINCE})
#: Cap of the digest (UTF-8 bytes of its entries). It is rewritten with the thread item on
#: every new message, so it costs write units: about one per KB it holds.
TEXT_LIMIT = 24 * 1024
KEY_ATTRIBUTES = frozenset({"PK", "SK", "UserThreadPK", "UserThreadSK"})
#: Never part of a returned dict.
INTERNAL_ATTRIBUTES = KEY_ATTRIBUTES | DIGEST_ATTRIBUTES | {
    REV, BLOBS, FEEDBACK_UP, FEEDBACK_DOWN, "updatedAt", "expiresAt"}
#: Small attributes that stay in the item when large ones move to blob storage (keys,
#: what indexes and filters read, what identifies the item).
PINNED_ATTRIBUTES = INTERNAL_ATTRIBUTES | {
    "id", "threadId", "forId", "parentId", "type", "name", "createdAt", "userId", "userIdentifier",
    "feedback", "objectKey", "mime", "streaming",
}
#: DynamoDB's hard limit is 400 KB per item. Items are kept well under it: every update of
#: a thread or step is billed by item size, and a thread item is rewritten on every new
#: message (its activity time), so a 300 KB session in the item would cost 300 write units
#: per message. Larger attributes go to blob storage.
DEFAULT_INLINE_LIMIT = 48 * 1024
MAX_ITEM_BYTES = 400 * 1024

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

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class DynamoDBError(DataLayerError):
    """An AWS call failed. `code` is the AWS error code; `reasons` the cancellation reason
    codes of a failed transaction."""

    def __init__(self, message: str, code: Optional[str] = None, reasons: Tuple[str, ...] = ()):
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


class Conflict(Exception):
    """Internal: a concurrent writer got there first; the caller re-reads and retries."""


# ---------------------------------------------------------------------- URL
def parse_dynamodb_url(url: str) -> Dict[str, Optional[str]]:
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
    options: Dict[str, Optional[str]] = {"table": table, "region": None, "endpoint_url": None}
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


# ---------------------------------------------------------------------- values
def _to_dynamo(value: Any, path: str) -> Any:
    """A JSON-like value as DynamoDB accepts it: floats as exact Decimals, keys as text."""
    if value is None or isinstance(value, (bool, str, int, Decimal)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: DynamoDB cannot store {value!r}")
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {str(k): _to_dynamo(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_dynamo(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{path}: cannot store a {type(value).__name__} in DynamoDB")


def _from_dynamo(value: Any) -> Any:
    """Back to plain Python: integral numbers as int (DynamoDB keeps no int/float
    distinction and trims trailing zeros), others as float; binary as bytes; sets as lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_from_dynamo(v) for v in value), key=repr)
    if isinstance(value, Binary):
        return bytes(value.value)
    return value


def serialize(item: Dict[str, Any]) -> Dict[str, Any]:
    """An item in DynamoDB's wire format; top-level `None` means "absent"."""
    return {k: _serializer.serialize(_to_dynamo(v, k)) for k, v in item.items() if v is not None}


def deserialize(item: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def _value_size(value: Any) -> int:
    """Approximate stored size in bytes (JSON text; DynamoDB's own encoding is smaller)."""
    return len(json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":")).encode("utf-8"))


def item_size(item: Dict[str, Any]) -> int:
    return sum(len(k.encode("utf-8")) + _value_size(v) for k, v in item.items() if v is not None)


def remove_prefix(value: str, prefix: str) -> Optional[str]:
    """The id after `prefix`, or None when `value` does not start with it (never strip())."""
    return value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else None


def thread_key(thread_id: str) -> Dict[str, str]:
    return {"PK": f"THREAD#{thread_id}", "SK": "THREAD"}


def step_key(thread_id: str, step_id: str) -> Dict[str, str]:
    return {"PK": f"THREAD#{thread_id}", "SK": f"STEP#{step_id}"}


def element_key(thread_id: str, element_id: str) -> Dict[str, str]:
    return {"PK": f"THREAD#{thread_id}", "SK": f"ELEMENT#{element_id}"}


def user_key(identifier: str) -> Dict[str, str]:
    return {"PK": f"USER#{identifier}", "SK": "USER"}


def locator_key(kind: str, item_id: str) -> Dict[str, str]:
    return {"PK": f"{kind}#{item_id}", "SK": "LOCATOR"}


def activity_sort_key(timestamp: str, thread_id: str) -> str:
    return f"TS#{timestamp}#{thread_id}"


def feedback_id_for(thread_id: str, step_id: str) -> str:
    # Chainlit's own format: the id says where the feedback lives, so delete_feedback
    # needs no lookup, and feedback written by Chainlit's layer can still be deleted.
    return f"THREAD#{thread_id}::STEP#{step_id}"


def parse_feedback_id(feedback_id: str) -> Optional[Tuple[str, str]]:
    rest = remove_prefix(feedback_id, "THREAD#")
    if rest is None or "::STEP#" not in rest:
        return None
    thread_id, _, step_id = rest.rpartition("::STEP#")
    return (thread_id, step_id) if thread_id and step_id else None


def public(item: Dict[str, Any]) -> Dict[str, Any]:
    """An item as Chainlit sees it: no keys, index or bookkeeping attributes, no Nones."""
    return {k: v for k, v in item.items() if k not in INTERNAL_ATTRIBUTES and v is not None}


class _Expression:
    """Collects placeholder names and values for one DynamoDB expression set."""

    def __init__(self):
        self.names: Dict[str, str] = {}
        self.values: Dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        for placeholder, existing in self.names.items():
            if existing == attribute:
                return placeholder
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def path(self, *attributes: str) -> str:
        return ".".join(self.name(a) for a in attributes)

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = _serializer.serialize(_to_dynamo(value, placeholder))
        return placeholder

    def kwargs(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.names:
            out["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            out["ExpressionAttributeValues"] = dict(self.values)
        return out


def _backoff(attempt: int, base: float = 0.05, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter (AWS's recommendation for contended retries)."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


# ---------------------------------------------------------------------- provisioning
def load_table_template(path: Path = TEMPLATE_PATH) -> Dict[str, Any]:
    """The `Properties` of the one `AWS::DynamoDB::Table` resource in the template."""
    with open(path, encoding="utf-8") as fh:
        template = json.load(fh)
    tables = [r for r in template.get("Resources", {}).values() if r.get("Type") == "AWS::DynamoDB::Table"]
    if len(tables) != 1:
        raise ValueError(f"{path}: expected exactly one AWS::DynamoDB::Table resource, found {len(tables)}")
    return tables[0]["Properties"]


def create_table_request(properties: Dict[str, Any], table_name: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Translate CloudFormation table properties into a CreateTable request, plus the
    settings that need their own API calls after creation (PITR, TTL).

    Unknown properties are an error, so the template and this code cannot drift apart."""
    request: Dict[str, Any] = {"TableName": table_name}
    after: Dict[str, Any] = {}
    copied = ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "LocalSecondaryIndexes",
              "BillingMode", "ProvisionedThroughput", "TableClass", "DeletionProtectionEnabled", "Tags")
    for name, value in properties.items():
        if name == "TableName":
            continue  # a {"Ref": ...} in the template; the URL names the table
        if name in copied:
            request[name] = value
        elif name == "SSESpecification":
            sse = {"Enabled": bool(value.get("SSEEnabled", False))}
            if value.get("SSEType"):
                sse["SSEType"] = value["SSEType"]
            if value.get("KMSMasterKeyId"):
                sse["KMSMasterKeyId"] = value["KMSMasterKeyId"]
            request["SSESpecification"] = sse
        elif name == "StreamSpecification":
            request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": value["StreamViewType"]}
        elif name == "PointInTimeRecoverySpecification":
            after["PointInTimeRecoveryEnabled"] = bool(value.get("PointInTimeRecoveryEnabled"))
        elif name == "TimeToLiveSpecification":
            after["TimeToLive"] = {"AttributeName": value["AttributeName"], "Enabled": bool(value.get("Enabled"))}
        else:
            raise ValueError(f"template property {name!r} is not supported by the provisioning command")
    return request, after


def check_table_description(table: Dict[str, Any]) -> None:
    """Raise when an existing table cannot serve this layer (e.g. a table made by
    Chainlit's layer, whose UserThread index lacks the feedback counters)."""
    keys = {k["AttributeName"]: k["KeyType"] for k in table.get("KeySchema", [])}
    if keys != {"PK": "HASH", "SK": "RANGE"}:
        raise DynamoDBError(f"table {table.get('TableName')!r} must have the key PK (hash), SK (range)")
    index = next((i for i in table.get("GlobalSecondaryIndexes", []) if i["IndexName"] == INDEX_NAME), None)
    if index is None:
        raise DynamoDBError(f"table {table.get('TableName')!r} has no {INDEX_NAME!r} index; see cloudformation/")
    projection = index.get("Projection", {})
    if projection.get("ProjectionType") != "ALL":
        missing = set(INDEX_ATTRIBUTES) - set(projection.get("NonKeyAttributes", []))
        if missing:
            raise DynamoDBError(
                f"index {INDEX_NAME!r} of table {table.get('TableName')!r} does not project {sorted(missing)}; "
                "recreate the index: python -m datalayers.dynamodb upgrade --url dynamodb://TABLE?region=..."
            )


async def provision_table(client, table_name: str, template: Path = TEMPLATE_PATH, wait_seconds: int = 600) -> bool:
    """Create the table from the CloudFormation template unless it exists, wait until it
    is ACTIVE, and apply point-in-time recovery and TTL. Idempotent. True if created."""
    request, after = create_table_request(load_table_template(template), table_name)
    created = False
    try:
        await client.describe_table(TableName=table_name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise DynamoDBError(f"provision: describe_table {table_name!r} failed: {exc}") from exc
        try:
            await client.create_table(**request)
            created = True
            logger.info("provision: creating table %s", table_name)
        except ClientError as create_exc:
            if create_exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise DynamoDBError(f"provision: create_table {table_name!r} failed: {create_exc}") from create_exc
    waiter = client.get_waiter("table_exists")
    await waiter.wait(TableName=table_name, WaiterConfig={"Delay": 2, "MaxAttempts": max(1, wait_seconds // 2)})
    description = (await client.describe_table(TableName=table_name))["Table"]
    check_table_description(description)
    try:
        if "PointInTimeRecoveryEnabled" in after:
            backups = await client.describe_continuous_backups(TableName=table_name)
            status = (backups["ContinuousBackupsDescription"].get("PointInTimeRecoveryDescription", {})
                      .get("PointInTimeRecoveryStatus"))
            if (status == "ENABLED") != after["PointInTimeRecoveryEnabled"]:
                await client.update_continuous_backups(
                    TableName=table_name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": after["PointInTimeRecoveryEnabled"]},
                )
        if "TimeToLive" in after:
            ttl = (await client.describe_time_to_live(TableName=table_name))["TimeToLiveDescription"]
            enabled = ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
            if enabled != after["TimeToLive"]["Enabled"]:
                await client.update_time_to_live(TableName=table_name, TimeToLiveSpecification=after["TimeToLive"])
    except ClientError as exc:
        raise DynamoDBError(f"provision: configuring table {table_name!r} failed: {exc}") from exc
    return created


async def _wait_for_index(client, table_name: str, present: bool, wait_seconds: int) -> None:
    """Poll until the UserThread index is ACTIVE (present=True) or gone."""
    for _ in range(max(1, wait_seconds // 5)):
        indexes = (await client.describe_table(TableName=table_name))["Table"].get("GlobalSecondaryIndexes", [])
        index = next((i for i in indexes if i["IndexName"] == INDEX_NAME), None)
        if (index is None and not present) or (index is not None and present and index.get("IndexStatus") == "ACTIVE"):
            return
        await asyncio.sleep(5)
    raise DynamoDBError(f"upgrade: index {INDEX_NAME!r} of {table_name!r} did not become "
                        f"{'ACTIVE' if present else 'deleted'} within {wait_seconds}s")


async def upgrade_table(client, table_name: str, template: Path = TEMPLATE_PATH,
                        wait_seconds: int = 3600) -> Dict[str, int]:
    """Make a table written by Chainlit's DynamoDB layer serve this one. Idempotent.

    1. Recreate the UserThread index with the template's projection (DynamoDB cannot
       change the projection of an existing index). The sidebar is empty while the new
       index builds.
    2. Count the feedback Chainlit's layer stored on steps into each thread's counters,
       so the feedback filter finds those threads. This reads the whole table once (a
       Scan, the only one in this module): run it once, off-peak.
    """
    properties = load_table_template(template)
    wanted = next(i for i in properties["GlobalSecondaryIndexes"] if i["IndexName"] == INDEX_NAME)
    recreated = 0
    try:
        table = (await client.describe_table(TableName=table_name))["Table"]
        try:
            check_table_description(table)
        except DynamoDBError:
            if any(i["IndexName"] == INDEX_NAME for i in table.get("GlobalSecondaryIndexes", [])):
                logger.warning("upgrade: deleting index %s of %s to recreate it", INDEX_NAME, table_name)
                await client.update_table(TableName=table_name,
                                          GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": INDEX_NAME}}])
                await _wait_for_index(client, table_name, present=False, wait_seconds=wait_seconds)
            key_names = {k["AttributeName"] for k in wanted["KeySchema"]}
            create = {k: v for k, v in wanted.items() if k in ("IndexName", "KeySchema", "Projection")}
            if table.get("BillingModeSummary", {}).get("BillingMode") == "PROVISIONED":
                create["ProvisionedThroughput"] = wanted.get("ProvisionedThroughput") or {
                    "ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
            await client.update_table(
                TableName=table_name,
                AttributeDefinitions=[a for a in properties["AttributeDefinitions"] if a["AttributeName"] in key_names],
                GlobalSecondaryIndexUpdates=[{"Create": create}],
            )
            await _wait_for_index(client, table_name, present=True, wait_seconds=wait_seconds)
            recreated = 1

        counted: set = set()
        counts: Dict[str, Dict[int, int]] = {}
        kwargs: Dict[str, Any] = {"TableName": table_name, "ProjectionExpression": "PK, SK, feedback, #up",
                                  "ExpressionAttributeNames": {"#up": FEEDBACK_UP}}
        while True:
            page = await client.scan(**kwargs)
            for raw in page.get("Items", []):
                item = deserialize(raw)
                thread_id = remove_prefix(item["PK"], "THREAD#")
                if thread_id is None:
                    continue
                if item["SK"] == "THREAD" and FEEDBACK_UP in item:
                    counted.add(thread_id)
                feedback = item.get("feedback")
                if remove_prefix(item["SK"], "STEP#") is not None and isinstance(feedback, dict) \
                        and feedback.get("value") in (0, 1):
                    counts.setdefault(thread_id, {0: 0, 1: 0})[int(feedback["value"])] += 1
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        updated = 0
        for thread_id, values in counts.items():
            if thread_id in counted:
                continue
            try:
                await client.update_item(
                    TableName=table_name, Key=serialize(thread_key(thread_id)),
                    UpdateExpression="SET #up = :up, #down = :down",
                    ConditionExpression="attribute_exists(PK) AND attribute_not_exists(#up)",
                    ExpressionAttributeNames={"#up": FEEDBACK_UP, "#down": FEEDBACK_DOWN},
                    ExpressionAttributeValues=serialize({":up": values[1], ":down": values[0]}),
                )
                updated += 1
            except ClientError as exc:
                # The thread is gone, or the running layer counted it meanwhile (it
                # recounts from the steps itself): either way there is nothing to set.
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                logger.info("upgrade: thread %s already counted or deleted", thread_id)
    except ClientError as exc:
        raise DynamoDBError(f"upgrade {table_name!r} failed: {exc}", exc.response.get("Error", {}).get("Code")) from exc
    return {"index_recreated": recreated, "threads_counted": updated}


# ---------------------------------------------------------------------- the layer
class DynamoDBDataLayer(BaseDataLayer):
    """Chainlit data layer on one DynamoDB table. Public constructor; or `from_url`."""

    def __init__(
        self,
        table_name: str,
        *,
        region: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        storage: Optional["BlobStorage"] = None,
        auto_migrate: bool = False,
        cursor_secret: Optional[bytes] = None,
        client: Any = None,
        verify_table: bool = True,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        template: Path = TEMPLATE_PATH,
        retry_mode: str = "adaptive",
        max_attempts: int = 6,
        max_concurrency: int = 8,
    ):
        if not TABLE_NAME.match(table_name):
            raise ValueError(f"invalid DynamoDB table name {table_name!r}")
        if not 1024 <= inline_limit <= MAX_ITEM_BYTES - 32 * 1024:
            raise ValueError("inline_limit must be between 1 KB and 368 KB")
        self.table_name = table_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.storage = storage
        self.auto_migrate = auto_migrate
        self.verify_table = verify_table
        self.inline_limit = inline_limit
        self.template = template
        secret = cursor_secret or (os.environ.get("CHAINLIT_AUTH_SECRET") or "").encode() or secrets.token_bytes(32)
        self.cursors = CursorCodec(secret)
        self._config = Config(retries={"mode": retry_mode, "max_attempts": max_attempts}, max_pool_connections=64)
        self._client = client
        self._stack: Optional[AsyncExitStack] = None
        self._ready = client is not None and not verify_table and not auto_migrate
        self._open_lock = asyncio.Lock()
        # Requests in flight at once. Each AWS call costs about a millisecond of CPU in
        # botocore (serialising, signing, parsing) on the event loop; with dozens of chat
        # turns at once, unbounded fan-out makes one loop iteration run them all back to
        # back. A small bound keeps every stall short at no cost in throughput worth having.
        self._in_flight = asyncio.Semaphore(max_concurrency)
        # user id -> identifier never changes once written; caching it saves a read per
        # sidebar page.
        self._identifiers: "OrderedDict[str, str]" = OrderedDict()
        # Threads whose digest is known to be truncated: their next messages skip the
        # append (and its failed conditional write).
        self._truncated: "OrderedDict[str, None]" = OrderedDict()

    @classmethod
    def from_url(cls, url: str, *, storage=None, auto_migrate: bool = False, **kwargs) -> "DynamoDBDataLayer":
        options = parse_dynamodb_url(url)
        return cls(options["table"], region=options["region"], endpoint_url=options["endpoint_url"],
                   storage=storage, auto_migrate=auto_migrate, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table_name!r}, region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    # ------------------------------------------------------------------ plumbing
    def _new_client_context(self):
        session = aioboto3.Session()
        return session.client("dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=self._config)

    async def _open(self):
        """The shared client, opened on first use (one session and connection pool)."""
        if self._client is None:
            async with self._open_lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    client = await stack.enter_async_context(self._new_client_context())
                    self._client, self._stack = client, stack
        return self._client

    async def _get_client(self):
        """The client, once the table is known to exist with the expected schema."""
        if self._ready:
            return self._client
        await self._open()
        async with self._open_lock:
            if not self._ready:
                try:
                    if self.auto_migrate:
                        await provision_table(self._client, self.table_name, self.template)
                    elif self.verify_table:
                        description = (await self._client.describe_table(TableName=self.table_name))["Table"]
                        check_table_description(description)
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    hint = (" (create it: python -m datalayers.dynamodb provision --url ..., or "
                            "DATABASE_AUTO_MIGRATE=true)") if code == "ResourceNotFoundException" else ""
                    raise DynamoDBError(f"opening table {self.table_name!r} failed: {exc}{hint}", code) from exc
                except BotoCoreError as exc:
                    raise DynamoDBError(f"opening table {self.table_name!r} failed: {exc}") from exc
                self._ready = True
        return self._client

    async def provision(self) -> bool:
        """Create the table from the template if missing (see `provision_table`)."""
        created = await provision_table(await self._open(), self.table_name, self.template)
        self._ready = True
        return created

    async def _call(self, method: str, operation: str, ids: Dict[str, Any], **kwargs) -> Dict[str, Any]:
        """One AWS call. Throttling that outlasts botocore's own retries is retried here
        with backoff; every other error is raised with the operation and ids."""
        client = await self._get_client()
        context = ", ".join(f"{k}={v!r}" for k, v in ids.items())
        for attempt in range(THROTTLE_ATTEMPTS):
            try:
                async with self._in_flight:
                    return await getattr(client, method)(**kwargs)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = error.get("Code")
                if code in THROTTLING_CODES and attempt < THROTTLE_ATTEMPTS - 1:
                    delay = _backoff(attempt + 2)
                    logger.warning("%s (%s): %s from %s, retrying in %.2fs", operation, context, code, method, delay)
                    await asyncio.sleep(delay)
                    continue
                reasons = tuple(r.get("Code", "None") for r in exc.response.get("CancellationReasons", []) or [])
                if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                    logger.debug("%s (%s): %s %s", operation, context, code, reasons)
                else:
                    logger.error("%s (%s): %s failed: %s", operation, context, method, code)
                raise DynamoDBError(f"{operation} ({context}): {method} failed: {code}: {error.get('Message', exc)}",
                                    code, reasons) from exc
            except BotoCoreError as exc:
                logger.error("%s (%s): %s failed: %s", operation, context, method, type(exc).__name__)
                raise DynamoDBError(f"{operation} ({context}): {method} failed: {exc}") from exc
        raise AssertionError("unreachable")

    async def _get(self, key: Dict[str, str], operation: str, ids: Dict[str, Any], *,
                   attributes: Optional[Iterable[str]] = None, consistent: bool = True) -> Optional[Dict[str, Any]]:
        kwargs: Dict[str, Any] = {"TableName": self.table_name, "Key": serialize(key), "ConsistentRead": consistent}
        if attributes is not None:
            expression = _Expression()
            kwargs["ProjectionExpression"] = ", ".join(expression.name(a) for a in attributes)
            kwargs.update(expression.kwargs())
        response = await self._call("get_item", operation, ids, **kwargs)
        return deserialize(response["Item"]) if "Item" in response else None

    async def _query(self, operation: str, ids: Dict[str, Any], **kwargs) -> AsyncIterator[Dict[str, Any]]:
        """Every item of a query, following LastEvaluatedKey."""
        kwargs = {"TableName": self.table_name, **kwargs}
        while True:
            response = await self._call("query", operation, ids, **kwargs)
            for item in response.get("Items", []):
                yield deserialize(item)
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def _partition(self, thread_id: str, operation: str, sk_prefix: Optional[str] = None,
                         attributes: Optional[Iterable[str]] = None,
                         filter_expression: Optional[Callable[["_Expression"], str]] = None,
                         consistent: bool = True) -> List[Dict[str, Any]]:
        """The items of one thread, optionally of one kind and filtered. Strongly consistent
        unless told otherwise (search reads at half the cost; a second's lag is harmless there)."""
        expression = _Expression()
        condition = f"{expression.name('PK')} = {expression.value(f'THREAD#{thread_id}')}"
        if sk_prefix:
            condition += f" AND begins_with({expression.name('SK')}, {expression.value(sk_prefix)})"
        kwargs: Dict[str, Any] = {"KeyConditionExpression": condition, "ConsistentRead": consistent}
        if attributes is not None:
            kwargs["ProjectionExpression"] = ", ".join(expression.name(a) for a in attributes)
        if filter_expression is not None:
            kwargs["FilterExpression"] = filter_expression(expression)
        kwargs.update(expression.kwargs())
        return [item async for item in self._query(operation, {"thread_id": thread_id}, **kwargs)]

    async def _batch_write(self, requests: List[Dict[str, Any]], operation: str, ids: Dict[str, Any]) -> None:
        """BatchWriteItem in chunks of 25, retrying UnprocessedItems with backoff."""
        for start in range(0, len(requests), BATCH_WRITE_SIZE):
            pending: Dict[str, Any] = {self.table_name: requests[start:start + BATCH_WRITE_SIZE]}
            for attempt in range(BATCH_ATTEMPTS):
                response = await self._call("batch_write_item", operation, ids, RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                delay = _backoff(attempt + 1)
                logger.warning("%s: %d item(s) unprocessed, retrying in %.2fs", operation,
                               len(pending.get(self.table_name, [])), delay)
                await asyncio.sleep(delay)
            else:
                left = len(pending.get(self.table_name, []))
                raise DynamoDBError(f"{operation} ({ids}): {left} item(s) still unprocessed after "
                                    f"{BATCH_ATTEMPTS} attempts", "UnprocessedItems")

    async def _batch_delete(self, keys: List[Dict[str, str]], operation: str, ids: Dict[str, Any]) -> None:
        unique = list({(k["PK"], k["SK"]): k for k in keys}.values())  # a batch refuses duplicate keys
        await self._batch_write([{"DeleteRequest": {"Key": serialize(k)}} for k in unique], operation, ids)

    async def _batch_get(self, keys: List[Dict[str, str]], operation: str,
                         attributes: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
        """BatchGetItem in chunks of 100, retrying UnprocessedKeys with backoff."""
        found: List[Dict[str, Any]] = []
        for start in range(0, len(keys), BATCH_GET_SIZE):
            request: Dict[str, Any] = {"Keys": [serialize(k) for k in keys[start:start + BATCH_GET_SIZE]]}
            if attributes is not None:
                expression = _Expression()
                request["ProjectionExpression"] = ", ".join(expression.name(a) for a in attributes)
                request.update({k: v for k, v in expression.kwargs().items() if k == "ExpressionAttributeNames"})
            pending: Dict[str, Any] = {self.table_name: request}
            for attempt in range(BATCH_ATTEMPTS):
                response = await self._call("batch_get_item", operation, {"items": len(keys)}, RequestItems=pending)
                found.extend(deserialize(i) for i in response.get("Responses", {}).get(self.table_name, []))
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
                await asyncio.sleep(_backoff(attempt + 1))
            else:
                raise DynamoDBError(f"{operation}: keys still unprocessed after {BATCH_ATTEMPTS} attempts",
                                    "UnprocessedKeys")
        return found

    async def _transact(self, items: List[Dict[str, Any]], operation: str, ids: Dict[str, Any]) -> None:
        await self._call("transact_write_items", operation, ids, TransactItems=items)

    async def _delete_blobs(self, keys: Iterable[str], operation: str) -> None:
        keys = [k for k in keys if k]
        if keys and self.storage is not None:
            try:
                await self.storage.delete_files(keys)
            except Exception:
                logger.error("%s: items deleted but %d blob(s) could not be removed", operation, len(keys))
                raise

    # ------------------------------------------------------------------ large attributes
    async def _offload(self, item: Dict[str, Any], owner: Optional[str], thread_id: str, label: str,
                       previous: Dict[str, Any], previous_blobs: Dict[str, str]) -> Tuple[Dict[str, Any], List[str]]:
        """The item to write, with its largest attributes moved to blob storage while it is
        over `inline_limit`; and the keys of blobs uploaded for it (to clean up on failure).

        An attribute that is unchanged and already in a blob keeps that blob. New blobs get
        fresh keys, so a concurrent writer can never overwrite the blob of a committed item.
        """
        stored = {k: v for k, v in item.items() if v is not None and k != BLOBS}
        # The search digest has its own cap (TEXT_LIMIT) and never moves: it does not
        # count toward the inline limit, so it cannot push other attributes out either.
        digest = item_size({k: v for k, v in stored.items() if k in DIGEST_ATTRIBUTES})
        total = item_size(stored) - digest
        if total <= self.inline_limit:
            return stored, []
        sizes = {k: len(k.encode()) + _value_size(v) for k, v in stored.items() if k not in PINNED_ATTRIBUTES}
        blobs: Dict[str, str] = {}
        moves: List[Tuple[str, Any]] = []
        for attribute in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= self.inline_limit:
                break
            value = stored.pop(attribute)
            total -= sizes[attribute]
            if attribute in previous_blobs and previous.get(attribute) == value:
                blobs[attribute] = previous_blobs[attribute]
            else:
                moves.append((attribute, value))
        if total + digest > MAX_ITEM_BYTES - 16 * 1024:
            raise ValueError(f"{label} of thread {thread_id!r} is too large for DynamoDB even without its "
                             f"large attributes ({total + digest} bytes)")
        if moves and self.storage is None:
            raise RuntimeError(f"{label} of thread {thread_id!r} exceeds {self.inline_limit} bytes and no "
                               "storage client is configured to hold its large attributes")
        uploaded: List[str] = []
        try:
            for attribute, value in moves:
                key = element_object_key(owner, thread_id, f"_{label}", f"{attribute}.{uuid.uuid4().hex}.json")
                body = json.dumps(value, ensure_ascii=False).encode("utf-8")
                await self.storage.upload_file(key, body, mime="application/json", overwrite=False)
                uploaded.append(key)
                blobs[attribute] = key
        except BaseException:
            await self._delete_blobs(uploaded, f"{label} (cleanup)")
            raise
        stored[BLOBS] = blobs
        return stored, uploaded

    async def _hydrate(self, item: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """The item with its blob-stored attributes read back, and the blob map."""
        blobs = item.pop(BLOBS, None) or {}
        if blobs:
            if self.storage is None:
                raise RuntimeError(f"item {item.get('PK')}/{item.get('SK')} has attributes in blob storage "
                                   "but no storage client is configured")
            bodies = await asyncio.gather(*(self.storage.read_file(k) for k in blobs.values()))
            for attribute, body in zip(blobs, bodies):
                item[attribute] = json.loads(body)
        return item, blobs

    async def _put_versioned(self, operation: str, ids: Dict[str, Any], item: Dict[str, Any],
                             old: Optional[Dict[str, Any]], old_blobs: Dict[str, str], *, owner: Optional[str],
                             thread_id: str, label: str) -> None:
        """Write `item` if nobody changed it since `old` was read (else raise Conflict)."""
        previous_rev = old.get(REV) if old else None
        item[REV] = int(previous_rev or 0) + 1
        stored, uploaded = await self._offload(item, owner, thread_id, label, old or {}, old_blobs)
        expression = _Expression()
        if old is None:
            condition = f"attribute_not_exists({expression.name('PK')})"
        elif previous_rev is None:  # written by Chainlit's layer: no revision yet
            condition = f"attribute_exists({expression.name('PK')}) AND attribute_not_exists({expression.name(REV)})"
        else:
            condition = f"{expression.name(REV)} = {expression.value(previous_rev)}"
        try:
            put = {"TableName": self.table_name, "Item": serialize(stored), "ConditionExpression": condition,
                   **expression.kwargs()}
        except BaseException:
            await self._delete_blobs(uploaded, f"{operation} (cleanup)")
            raise
        try:
            await self._call("put_item", operation, ids, **put)
        except BaseException as exc:
            await self._forget_uploads(exc, uploaded, operation)
            if isinstance(exc, DynamoDBError) and exc.is_conflict:
                raise Conflict() from exc
            raise
        kept = set(stored.get(BLOBS, {}).values())
        await self._delete_blobs([k for k in old_blobs.values() if k not in kept], operation)

    async def _forget_uploads(self, exc: BaseException, uploaded: List[str], operation: str) -> None:
        """After a failed item write: delete the blobs uploaded for it only when the item
        was certainly not written. When the outcome is unknown (timeout, cancellation), the
        item may point at them: an orphaned blob is better than a broken item."""
        if not uploaded:
            return
        if isinstance(exc, DynamoDBError) and exc.not_written:
            await self._delete_blobs(uploaded, f"{operation} (cleanup)")
        else:
            logger.warning("%s: write outcome unknown (%s); keeping %d new blob(s)", operation,
                           type(exc).__name__, len(uploaded))

    async def _retry_conflicts(self, operation: str, ids: Dict[str, Any], attempt_once):
        """Run `attempt_once()` until it commits without a concurrent writer in between."""
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                return await attempt_once()
            except Conflict:
                logger.debug("%s (%s): concurrent write, retrying", operation, ids)
                await asyncio.sleep(_backoff(attempt, base=0.005, cap=0.5))
        raise DynamoDBError(f"{operation} ({ids}): gave up after {CONFLICT_ATTEMPTS} conflicting concurrent writes",
                            "ConditionalCheckFailedException")

    # ------------------------------------------------------------------ users
    @staticmethod
    def _persisted_user(item: Dict[str, Any]) -> PersistedUser:
        metadata = item.get("metadata") or {}
        return PersistedUser(
            id=item["id"], identifier=item["identifier"], createdAt=item.get("createdAt"), metadata=metadata,
            display_name=metadata.get("display_name") if isinstance(metadata, dict) else None,
        )

    async def get_user(self, identifier: str) -> Optional[PersistedUser]:
        item = await self._get(user_key(identifier), "get_user", {"identifier": identifier})
        return self._persisted_user(item) if item else None

    async def create_user(self, user: User) -> Optional[PersistedUser]:
        metadata = dict(user.metadata or {})
        if user.display_name and "display_name" not in metadata:
            metadata["display_name"] = user.display_name
        ids = {"identifier": user.identifier}
        # One atomic upsert: concurrent first logins agree on one id, and later logins
        # refresh the metadata without touching id or createdAt.
        expression = _Expression()
        update = (
            f"SET {expression.name('identifier')} = {expression.value(user.identifier)}, "
            f"{expression.name('metadata')} = {expression.value(metadata)}, "
            f"{expression.name('id')} = if_not_exists({expression.name('id')}, {expression.value(str(uuid.uuid4()))}), "
            f"{expression.name('createdAt')} = if_not_exists({expression.name('createdAt')}, {expression.value(utc_now())})"
        )
        response = await self._call(
            "update_item", "create_user", ids, TableName=self.table_name, Key=serialize(user_key(user.identifier)),
            UpdateExpression=update, ReturnValues="ALL_NEW", **expression.kwargs(),
        )
        item = deserialize(response["Attributes"])
        # Idempotent; written on every login so an interrupted first login heals itself.
        await self._call("put_item", "create_user", ids, TableName=self.table_name,
                         Item=serialize({**locator_key("USERID", item["id"]), "identifier": user.identifier}))
        self._remember(item["id"], user.identifier)
        return self._persisted_user(item)

    def _remember(self, user_id: str, identifier: str) -> None:
        self._identifiers[user_id] = identifier
        self._identifiers.move_to_end(user_id)
        while len(self._identifiers) > 10_000:
            self._identifiers.popitem(last=False)

    async def _user_identifier(self, user_id: Optional[str]) -> Optional[str]:
        """The identifier of a persisted user id. Users written by Chainlit's layer have
        id == identifier and no locator item."""
        if not user_id:
            return None
        if user_id in self._identifiers:
            return self._identifiers[user_id]
        ids = {"user_id": user_id}
        locator = await self._get(locator_key("USERID", user_id), "user lookup", ids)
        identifier = locator.get("identifier") if locator else None
        if identifier is None:
            legacy = await self._get(user_key(user_id), "user lookup", ids, attributes=("id", "identifier"))
            if legacy and legacy.get("id") == user_id:
                identifier = legacy.get("identifier")
        if identifier:
            self._remember(user_id, identifier)
        return identifier

    # ------------------------------------------------------------------ threads
    async def _author(self, thread: Dict[str, Any]) -> Optional[str]:
        return thread.get("userIdentifier") or await self._user_identifier(thread.get("userId"))

    async def get_thread_author(self, thread_id: str) -> str:
        thread = await self._get(thread_key(thread_id), "get_thread_author", {"thread_id": thread_id},
                                 attributes=("userId", "userIdentifier"))
        return (await self._author(thread) or "") if thread else ""

    async def update_thread(
        self,
        thread_id: str,
        name: Optional[str] = None,
        user_id: Optional[str] = None,
        metadata: Optional[Dict] = None,
        tags: Optional[List[str]] = None,
    ):
        ids = {"thread_id": thread_id}
        identifier = None
        if user_id is not None:
            identifier = await self._user_identifier(user_id)
            if identifier is None:
                raise ValueError(f"update_thread: unknown user id {user_id!r}")

        async def attempt():
            old = await self._get(thread_key(thread_id), "update_thread", ids)
            old_blobs: Dict[str, str] = {}
            if old is None:
                now = utc_now()
                item: Dict[str, Any] = {**thread_key(thread_id), "id": thread_id, "createdAt": now, "updatedAt": now,
                                        "UserThreadSK": activity_sort_key(now, thread_id),
                                        "metadata": merge_changes({}, metadata),
                                        TEXT: [], TEXT_BYTES: 0, TEXT_SINCE: now}
            else:
                old, old_blobs = await self._hydrate(old)
                item = dict(old)
                if metadata is not None:
                    item["metadata"] = merge_changes(old.get("metadata"), metadata)
            if name is not None:
                item["name"] = name
            if tags is not None:
                item["tags"] = list(tags)
            if identifier is not None:
                item.update(userId=user_id, userIdentifier=identifier, UserThreadPK=f"USER#{identifier}")
            if old is not None and item == old:
                return
            owner = item.get("userIdentifier") or current_user_identifier()
            await self._put_versioned("update_thread", ids, item, old, old_blobs, owner=owner,
                                      thread_id=thread_id, label="thread")

        await self._retry_conflicts("update_thread", ids, attempt)

    async def _touch_thread(self, thread_id: str, operation: str, ids: Dict[str, Any],
                            text: Optional[str] = None) -> None:
        """Mark the thread active now, creating it when a step arrives before
        update_thread, and append `text` (a new message) to its search digest in the same
        write. Bumps `_rev` so a concurrent update_thread re-reads."""
        now = utc_now()

        def touch(e: _Expression) -> str:
            # `_textSince` equals `createdAt` only when the digest started with the thread
            # (both set here from the same value, or by update_thread): a thread written by
            # Chainlit's layer or before digests existed gets a later one, and search does
            # not trust its digest to be complete.
            zero, one = e.value(0), e.value(1)
            return (
                f"SET {e.name('updatedAt')} = {e.value(now)}, "
                f"{e.name('UserThreadSK')} = {e.value(activity_sort_key(now, thread_id))}, "
                f"{e.name('id')} = if_not_exists({e.name('id')}, {e.value(thread_id)}), "
                f"{e.name('createdAt')} = if_not_exists({e.name('createdAt')}, {e.value(now)}), "
                f"{e.name(TEXT_SINCE)} = if_not_exists({e.name(TEXT_SINCE)}, {e.value(now)}), "
                f"{e.name('metadata')} = if_not_exists({e.name('metadata')}, {e.value({})}), "
                f"{e.name(REV)} = if_not_exists({e.name(REV)}, {zero}) + {one}"
            )

        await self._write_thread(thread_id, operation, ids, touch, text, must_exist=False)

    async def _append_text(self, thread_id: str, text: str, operation: str, ids: Dict[str, Any]) -> None:
        """Append a changed message output to the thread's digest (an update_step that
        rewrites a message; a new step does it in `_touch_thread`). The previous text stays:
        a search may also match words edited away. Bumps `_rev` like every thread write, so
        a concurrent update_thread re-reads instead of writing back the digest it read."""

        def rev(e: _Expression) -> str:
            return f"SET {e.name(REV)} = if_not_exists({e.name(REV)}, {e.value(0)}) + {e.value(1)}"

        await self._write_thread(thread_id, operation, ids, rev, text, must_exist=True)

    async def _write_thread(self, thread_id: str, operation: str, ids: Dict[str, Any],
                            update: Callable[["_Expression"], str], text: Optional[str], must_exist: bool) -> None:
        """One update of the thread item: `update` (a SET clause), with `text` appended to
        the search digest when it fits under TEXT_LIMIT. When it does not, or the digest is
        already truncated, the same update marks the digest truncated instead (search then
        reads this thread's messages). `must_exist`: never create the thread item; nothing
        is written when it is gone."""
        request = {"TableName": self.table_name, "Key": serialize(thread_key(thread_id))}
        if text is not None and thread_id not in self._truncated:
            e = _Expression()
            appended = self._digest_append(e, text)
            if appended is not None:
                set_text, add_bytes, condition = appended
                if must_exist:
                    condition = f"attribute_exists({e.name('PK')}) AND {condition}"
                try:
                    await self._call("update_item", operation, ids, **request, ConditionExpression=condition,
                                     UpdateExpression=f"{update(e)}, {set_text} {add_bytes}", **e.kwargs())
                    return
                except DynamoDBError as exc:
                    if exc.code != "ConditionalCheckFailedException":
                        raise
        e = _Expression()
        expression = update(e)
        if text is not None:
            self._remember_truncated(thread_id)
            expression += f", {e.name(TEXT_TRUNCATED)} = {e.value(True)}"
        if must_exist:
            request["ConditionExpression"] = f"attribute_exists({e.name('PK')})"
        try:
            await self._call("update_item", operation, ids, **request, UpdateExpression=expression, **e.kwargs())
        except DynamoDBError as exc:
            if not (must_exist and exc.code == "ConditionalCheckFailedException"):  # gone: nothing to mark
                raise

    @staticmethod
    def _digest_append(e: _Expression, text: str) -> Optional[Tuple[str, str, str]]:
        """The SET and ADD clauses appending `text` to the digest, and the condition that
        keeps it under TEXT_LIMIT and stops at truncation; None when it cannot fit."""
        size = len(text.encode("utf-8"))
        if size > TEXT_LIMIT:
            return None
        # DynamoDB cannot concatenate strings in an update: the digest is a list.
        set_text = f"{e.name(TEXT)} = list_append(if_not_exists({e.name(TEXT)}, {e.value([])}), {e.value([text])})"
        add_bytes = f"ADD {e.name(TEXT_BYTES)} {e.value(size)}"
        condition = (f"(attribute_not_exists({e.name(TEXT_BYTES)}) OR {e.name(TEXT_BYTES)} <= "
                     f"{e.value(TEXT_LIMIT - size)}) AND attribute_not_exists({e.name(TEXT_TRUNCATED)})")
        return set_text, add_bytes, condition

    def _remember_truncated(self, thread_id: str) -> None:
        self._truncated[thread_id] = None
        self._truncated.move_to_end(thread_id)
        while len(self._truncated) > 10_000:
            self._truncated.popitem(last=False)

    async def _put_locator(self, kind: str, item_id: str, thread_id: str, operation: str, ids: Dict[str, Any]) -> None:
        await self._call("put_item", operation, ids, TableName=self.table_name,
                         Item=serialize({**locator_key(kind, item_id), "threadId": thread_id}))

    async def _locate(self, kind: str, item_id: str) -> Optional[str]:
        locator = await self._get(locator_key(kind, item_id), f"locate {kind.lower()}", {"id": item_id})
        return locator.get("threadId") if locator else None

    async def delete_thread(self, thread_id: str):
        ids = {"thread_id": thread_id}
        items = await self._partition(thread_id, "delete_thread", attributes=("PK", "SK", "objectKey", BLOBS))
        if not items:
            return
        children: List[Dict[str, str]] = []
        blob_keys: List[str] = []
        thread_item = None
        for item in items:
            key = {"PK": item["PK"], "SK": item["SK"]}
            blob_keys.extend((item.get(BLOBS) or {}).values())
            if item.get("objectKey"):
                blob_keys.append(item["objectKey"])
            if item["SK"] == "THREAD":
                thread_item = key
                continue
            children.append(key)
            for kind in ("STEP", "ELEMENT"):
                child_id = remove_prefix(item["SK"], f"{kind}#")
                if child_id is not None:
                    children.append(locator_key(kind, child_id))
        # Children first, the thread last: a failure half-way leaves a visible thread the
        # user can delete again, never invisible orphans.
        await self._batch_delete(children, "delete_thread", ids)
        if thread_item:
            await self._batch_delete([thread_item], "delete_thread", ids)
        await self._delete_blobs(blob_keys, "delete_thread")

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        first = page_size(pagination.first)
        if not filters.userId:
            # Listing every user's threads would need a table Scan; Chainlit always sets it.
            raise ValueError("list_threads on DynamoDB needs filters.userId")
        owner = filters.userId
        start_key = None
        if pagination.cursor:
            position = self.cursors.decode(owner, pagination.cursor)
            sort_key, last_id = position.get("s"), position.get("t")
            if not isinstance(sort_key, str) or not isinstance(last_id, str):
                raise ValueError("invalid pagination cursor")
            start_key = (sort_key, last_id)
        empty = PaginatedResponse(pageInfo=PageInfo(hasNextPage=False, startCursor=None, endCursor=None), data=[])
        identifier = await self._user_identifier(owner)
        if identifier is None:
            return empty
        term = filters.search.lower() if filters.search else None
        ids = {"user_id": owner}

        e = _Expression()
        kwargs: Dict[str, Any] = {
            "IndexName": INDEX_NAME,
            "KeyConditionExpression": f"{e.name('UserThreadPK')} = {e.value(f'USER#{identifier}')}",
            "ScanIndexForward": False,
            # Without filters one page of the index is the answer; with filters, read ahead
            # in bigger slices so a page fills in fewer round trips.
            "Limit": first + 1 if term is None and filters.feedback is None else max(50, first + 1),
        }
        if filters.feedback is not None:
            counter = FEEDBACK_UP if int(filters.feedback) == 1 else FEEDBACK_DOWN
            kwargs["FilterExpression"] = f"{e.name(counter)} > {e.value(0)}"
        kwargs.update(e.kwargs())
        if start_key:
            kwargs["ExclusiveStartKey"] = serialize({"UserThreadPK": f"USER#{identifier}", "UserThreadSK": start_key[0],
                                                     **thread_key(start_key[1])})

        matches: List[Dict[str, Any]] = []
        # Keep reading the index until first+1 matches (a full page and proof of a next
        # one) or its end: filters never produce short or empty pages.
        async with aclosing(self._index_batches(kwargs, ids)) as batches:
            async for batch in batches:
                if term is not None:
                    batch = await self._search_filter(batch, term)
                matches.extend(batch)
                if len(matches) > first:
                    break
        has_next = len(matches) > first
        matches = matches[:first]
        threads = await self._threads_for_page(matches)
        cursor_of = lambda item: self.cursors.encode(owner, {"s": item["UserThreadSK"], "t": item["id"]})  # noqa: E731
        page = PageInfo(
            hasNextPage=has_next,
            startCursor=cursor_of(matches[0]) if matches else None,
            endCursor=cursor_of(matches[-1]) if matches else None,
        )
        return PaginatedResponse(pageInfo=page, data=threads)

    async def _index_batches(self, kwargs: Dict[str, Any], ids: Dict[str, Any]) -> AsyncIterator[List[Dict[str, Any]]]:
        """Pages of the UserThread index query (each at most `Limit` items evaluated)."""
        kwargs = {"TableName": self.table_name, **kwargs}
        while True:
            response = await self._call("query", "list_threads", ids, **kwargs)
            batch = []
            for raw in response.get("Items", []):
                item = deserialize(raw)
                thread_id = remove_prefix(item.get("PK", ""), "THREAD#")
                if thread_id is None or item.get("SK") != "THREAD":
                    continue
                item["id"] = thread_id
                batch.append(item)
            yield batch
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def _search_filter(self, batch: List[Dict[str, Any]], term: str) -> List[Dict[str, Any]]:
        """The threads of `batch` whose name or a user/assistant message contains `term`
        (case-insensitive, literal). Names are checked from the index; messages from the
        threads' digests, read with BatchGetItem; a thread without a complete digest and
        no match in it costs one query of its messages, run concurrently.

        The digest keeps the text of edited and deleted messages (it is only appended
        to), so a search may also find a thread by words no longer in it."""
        semaphore = asyncio.Semaphore(16)
        unnamed = [item["id"] for item in batch if term not in str(item.get("name") or "").lower()]
        digests: Dict[str, Dict[str, Any]] = {}
        if unnamed:
            for digest in await self._batch_get([thread_key(t) for t in unnamed], "list_threads search",
                                                ("PK", "createdAt", TEXT, TEXT_TRUNCATED, TEXT_SINCE)):
                digests[remove_prefix(digest["PK"], "THREAD#")] = digest

        async def matches(item: Dict[str, Any]) -> bool:
            if term in str(item.get("name") or "").lower():
                return True
            digest = digests.get(item["id"]) or {}  # none: deleted since the index query, or not yet readable
            if any(term in str(text) for text in digest.get(TEXT) or ()):
                return True
            complete = (TEXT in digest and not digest.get(TEXT_TRUNCATED)
                        and digest.get(TEXT_SINCE) is not None and digest.get(TEXT_SINCE) == digest.get("createdAt"))
            if complete:
                return False
            async with semaphore:
                return await self._messages_contain(item["id"], term)

        flags = await asyncio.gather(*(matches(item) for item in batch))
        return [item for item, keep in zip(batch, flags) if keep]

    async def _messages_contain(self, thread_id: str, term: str) -> bool:
        def only_messages(e: _Expression) -> str:
            return f"{e.name('type')} IN ({', '.join(e.value(t) for t in MESSAGE_TYPES)})"

        for item in await self._partition(thread_id, "list_threads search", "STEP#",
                                          attributes=("output", BLOBS), filter_expression=only_messages,
                                          consistent=False):
            if "output" in (item.get(BLOBS) or {}):
                item, _ = await self._hydrate(item)
            if term in str(item.get("output") or "").lower():
                return True
        return False

    async def _threads_for_page(self, matches: List[Dict[str, Any]]) -> List[ThreadDict]:
        if not matches:
            return []
        attributes = ("PK", "id", "createdAt", "name", "userId", "userIdentifier", "tags", "metadata", BLOBS)
        items = await self._batch_get([thread_key(m["id"]) for m in matches], "list_threads", attributes)
        hydrated = await asyncio.gather(*(self._hydrate(item) for item in items))
        by_id = {remove_prefix(item["PK"], "THREAD#"): item for item, _ in hydrated}
        result = []
        for match in matches:
            item = by_id.get(match["id"])
            if item is None:  # deleted between the index query and the read
                continue
            result.append(ThreadDict(
                id=match["id"], createdAt=item.get("createdAt"), name=item.get("name"), userId=item.get("userId"),
                userIdentifier=await self._author(item), tags=item.get("tags"), metadata=item.get("metadata") or {},
                steps=[], elements=[],
            ))
        return result

    async def get_thread(self, thread_id: str) -> Optional[ThreadDict]:
        for attempt in range(2):
            try:
                return await self._read_thread(thread_id)
            except ObjectNotFound:
                # A concurrent write replaced a blob between our query and its read: the
                # item now points at a new one. Read again once.
                if attempt:
                    raise
        return None

    async def _read_thread(self, thread_id: str) -> Optional[ThreadDict]:
        items = await self._partition(thread_id, "get_thread")
        thread = next((i for i in items if i["SK"] == "THREAD"), None)
        if thread is None:
            return None
        hydrated = await asyncio.gather(*(self._hydrate(i) for i in items))
        steps, elements = [], []
        for item, _ in hydrated:
            if remove_prefix(item["SK"], "STEP#") is not None:
                steps.append(self._step_dict(item))
            elif remove_prefix(item["SK"], "ELEMENT#") is not None:
                elements.append(public(item))
        steps.sort(key=lambda s: (s.get("createdAt") is None, s.get("createdAt") or "", s.get("id") or ""))
        await sign_element_urls(self.storage, elements)
        return ThreadDict(
            id=thread_id, createdAt=thread.get("createdAt"), name=thread.get("name"), userId=thread.get("userId"),
            userIdentifier=await self._author(thread), tags=thread.get("tags"), metadata=thread.get("metadata") or {},
            steps=steps, elements=elements,
        )

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _step_dict(item: Dict[str, Any], with_feedback: bool = True) -> "StepDict":
        data = public(item)
        feedback = data.pop("feedback", None)
        if with_feedback and isinstance(feedback, dict) and feedback.get("value") is not None:
            data["feedback"] = {"id": feedback.get("id"), "forId": feedback.get("forId", data.get("id")),
                                "threadId": feedback.get("threadId"), "value": int(feedback["value"]),
                                "comment": feedback.get("comment")}
        return with_step_defaults(data)  # type: ignore[return-value]

    async def _upsert_step(self, step_dict: "StepDict", overwrite: bool) -> None:
        step_id, thread_id = step_dict.get("id"), step_dict.get("threadId")
        if not step_id or not thread_id:
            raise ValueError("a step needs an 'id' and a 'threadId'")
        values: Dict[str, Any] = {}
        for key, value in step_dict.items():
            if value is None or key in STEP_FIELDS_NOT_STORED or key in INTERNAL_ATTRIBUTES or key == BLOBS:
                continue
            values[key] = normalize_timestamp(value) if key in STEP_TIMESTAMPS else value
        operation = "update_step" if overwrite else "create_step"
        ids = {"step_id": step_id, "thread_id": thread_id}
        key = step_key(thread_id, step_id)
        digested: set = set()  # texts this call put in the digest (a retry does not repeat them)

        async def attempt():
            old = await self._get(key, operation, ids)
            old_blobs: Dict[str, str] = {}
            if old is None:
                item = {"name": "", "type": "undefined", "streaming": False, "disableFeedback": False,
                        **values, **key, "id": step_id, "threadId": thread_id,
                        "metadata": merge_changes({}, values.get("metadata"))}
                # New step: the thread becomes active (or is created), its digest gets the
                # message's text, and the step gets its locator. Written before the step and
                # not in one transaction (half the write cost): if the step write then
                # fails, a touched thread (or a digest that may match one message too many)
                # or a locator without its step is harmless, while a step without its
                # thread could not be.
                text = self._digest_text(item)
                await self._touch_thread(thread_id, operation, ids, None if text in digested else text)
                digested.add(text)
                await self._put_locator("STEP", step_id, thread_id, operation, ids)
            else:
                old, old_blobs = await self._hydrate(old)
                item = dict(old)
                for name, value in values.items():
                    if name in ("id", "threadId"):
                        continue
                    current = old.get(name)
                    if name == "metadata":
                        item[name] = merge_changes(current, value) if overwrite else fill_missing(current, value)
                    elif overwrite or is_empty(current):
                        item[name] = value
                if item == old:
                    return
                # A message's output is new or changed: append it to the digest before
                # the step write, for the same reason as above.
                text = self._digest_text(item)
                if text is not None and text != self._digest_text(old) and text not in digested:
                    await self._append_text(thread_id, text, operation, ids)
                    digested.add(text)
            await self._put_versioned(operation, ids, item, old, old_blobs, owner=current_user_identifier(),
                                      thread_id=thread_id, label=f"step-{step_id}")

        await self._retry_conflicts(operation, ids, attempt)

    @staticmethod
    def _digest_text(step: Dict[str, Any]) -> Optional[str]:
        """What a step adds to its thread's search digest: the lowercased output of a
        user/assistant message, or None."""
        output = step.get("output")
        if step.get("type") not in MESSAGE_TYPES or output is None or output == "":
            return None
        return str(output).lower()

    @queue_until_user_message()
    async def create_step(self, step_dict: "StepDict"):
        # Chainlit may deliver update_step first: only fill what is still empty.
        await self._upsert_step(step_dict, overwrite=False)

    @queue_until_user_message()
    async def update_step(self, step_dict: "StepDict"):
        await self._upsert_step(step_dict, overwrite=True)

    async def _thread_of(self, kind: str, item_id: str) -> Optional[str]:
        """The thread holding a step/element: its locator, else (items written by
        Chainlit's layer) the current session's thread if the item is there."""
        thread_id = await self._locate(kind, item_id)
        if thread_id is not None:
            return thread_id
        try:
            from chainlit.context import context

            session_thread = context.session.thread_id
        except Exception:  # no Chainlit context (scripts, background jobs)
            return None
        key = step_key(session_thread, item_id) if kind == "STEP" else element_key(session_thread, item_id)
        found = await self._get(key, f"locate {kind.lower()}", {"id": item_id}, attributes=("PK",))
        return session_thread if found else None

    @queue_until_user_message()
    async def delete_step(self, step_id: str):
        ids: Dict[str, Any] = {"step_id": step_id}
        thread_id = await self._thread_of("STEP", step_id)
        if thread_id is None:
            return
        ids["thread_id"] = thread_id

        async def attempt():
            step = await self._get(step_key(thread_id, step_id), "delete_step", ids)
            if step is None:
                return []
            e = _Expression()
            condition = (f"{e.name(REV)} = {e.value(step[REV])}" if REV in step
                         else f"attribute_exists({e.name('PK')}) AND attribute_not_exists({e.name(REV)})")
            delete = {"Delete": {"TableName": self.table_name, "Key": serialize(step_key(thread_id, step_id)),
                                 "ConditionExpression": condition, **e.kwargs()}}
            items = [delete]
            old_value = self._feedback_value(step)
            if old_value is not None:
                items.append(await self._counter_update(thread_id, step_id, old_value, None))
            try:
                await self._transact(items, "delete_step", ids)
            except DynamoDBError as exc:
                if exc.is_conflict:
                    raise Conflict() from exc
                raise
            return list((step.get(BLOBS) or {}).values())

        blob_keys = await self._retry_conflicts("delete_step", ids, attempt)

        def for_this_step(e: _Expression) -> str:
            return f"{e.name('forId')} = {e.value(step_id)}"

        elements = await self._partition(thread_id, "delete_step", "ELEMENT#",
                                         attributes=("PK", "SK", "objectKey", BLOBS), filter_expression=for_this_step)
        keys = [locator_key("STEP", step_id)]
        for element in elements:
            keys += [{"PK": element["PK"], "SK": element["SK"]},
                     locator_key("ELEMENT", remove_prefix(element["SK"], "ELEMENT#"))]
            blob_keys += [element.get("objectKey"), *(element.get(BLOBS) or {}).values()]
        await self._batch_delete(keys, "delete_step", ids)
        await self._delete_blobs(blob_keys, "delete_step")

    async def get_favorite_steps(self, user_id: str) -> List["StepDict"]:
        identifier = await self._user_identifier(user_id)
        if identifier is None:
            return []
        ids = {"user_id": user_id}
        e = _Expression()
        thread_ids = []
        async for item in self._query("get_favorite_steps", ids, IndexName=INDEX_NAME,
                                      KeyConditionExpression=f"{e.name('UserThreadPK')} = {e.value(f'USER#{identifier}')}",
                                      ProjectionExpression=e.name("PK"), **e.kwargs()):
            thread_id = remove_prefix(item.get("PK", ""), "THREAD#")
            if thread_id is not None:
                thread_ids.append(thread_id)

        def favorite(ex: _Expression) -> str:
            # Steps whose metadata went to blob storage are checked after reading it.
            return (f"{ex.path('metadata', 'favorite')} = {ex.value(True)} "
                    f"OR attribute_exists({ex.path(BLOBS, 'metadata')})")

        semaphore = asyncio.Semaphore(16)

        async def favorites_in(thread_id: str) -> List["StepDict"]:
            async with semaphore:
                items = await self._partition(thread_id, "get_favorite_steps", "STEP#", filter_expression=favorite)
            found = []
            for item in items:
                item, _ = await self._hydrate(item)
                if (item.get("metadata") or {}).get("favorite") is True:
                    found.append(self._step_dict(item, with_feedback=False))
            return found

        steps = [s for group in await asyncio.gather(*(favorites_in(t) for t in thread_ids)) for s in group]
        steps.sort(key=lambda s: s.get("createdAt") or "", reverse=True)
        return steps

    # ------------------------------------------------------------------ feedback
    @staticmethod
    def _feedback_value(step: Dict[str, Any]) -> Optional[int]:
        feedback = step.get("feedback")
        if isinstance(feedback, dict) and feedback.get("value") is not None:
            return int(feedback["value"])
        return None

    async def _counter_update(self, thread_id: str, step_id: str, old: Optional[int], new: Optional[int]) -> Dict[str, Any]:
        """Transaction item keeping the thread's feedback counters right when one step's
        rating goes from `old` to `new` (None = unrated). A thread without counters (new,
        or written by Chainlit's layer) gets them counted from its steps first."""
        thread = await self._get(thread_key(thread_id), "feedback counters", {"thread_id": thread_id},
                                 attributes=(FEEDBACK_UP, FEEDBACK_DOWN, "PK"))
        if thread is None:
            raise ValueError(f"feedback: thread {thread_id!r} does not exist")
        e = _Expression()
        rev = f"{e.name(REV)} = if_not_exists({e.name(REV)}, {e.value(0)}) + {e.value(1)}"
        if FEEDBACK_UP in thread and FEEDBACK_DOWN in thread:
            up = (new == 1) - (old == 1)
            down = (new == 0) - (old == 0)
            update = f"SET {rev} ADD {e.name(FEEDBACK_UP)} {e.value(up)}, {e.name(FEEDBACK_DOWN)} {e.value(down)}"
            condition = f"attribute_exists({e.name(FEEDBACK_UP)})"
        else:
            counts = {0: 0, 1: 0}
            for step in await self._partition(thread_id, "feedback counters", "STEP#", attributes=("SK", "feedback")):
                value = self._feedback_value(step)
                if value in counts and step["SK"] != f"STEP#{step_id}":
                    counts[value] += 1
            if new in counts:
                counts[new] += 1
            update = f"SET {rev}, {e.name(FEEDBACK_UP)} = {e.value(counts[1])}, {e.name(FEEDBACK_DOWN)} = {e.value(counts[0])}"
            condition = f"attribute_exists({e.name('PK')}) AND attribute_not_exists({e.name(FEEDBACK_UP)})"
        return {"Update": {"TableName": self.table_name, "Key": serialize(thread_key(thread_id)),
                           "UpdateExpression": update, "ConditionExpression": condition, **e.kwargs()}}

    async def _set_feedback(self, thread_id: str, step_id: str, feedback: Optional[Dict[str, Any]],
                            operation: str) -> bool:
        """Set (or with None remove) a step's feedback and the thread's counters in one
        transaction. False when the step (or its feedback, for removal) does not exist."""
        ids = {"step_id": step_id, "thread_id": thread_id}

        async def attempt() -> bool:
            step = await self._get(step_key(thread_id, step_id), operation, ids, attributes=("PK", REV, "feedback"))
            if step is None:
                return False
            old = self._feedback_value(step)
            if feedback is None and step.get("feedback") is None:
                return False
            new = None if feedback is None else int(feedback["value"])
            e = _Expression()
            rev = f"{e.name(REV)} = {e.value(int(step.get(REV) or 0) + 1)}"
            update = (f"SET {e.name('feedback')} = {e.value(feedback)}, {rev}" if feedback is not None
                      else f"SET {rev} REMOVE {e.name('feedback')}")
            condition = (f"{e.name(REV)} = {e.value(step[REV])}" if REV in step
                         else f"attribute_exists({e.name('PK')}) AND attribute_not_exists({e.name(REV)})")
            items = [{"Update": {"TableName": self.table_name, "Key": serialize(step_key(thread_id, step_id)),
                                 "UpdateExpression": update, "ConditionExpression": condition, **e.kwargs()}}]
            if old != new:
                items.append(await self._counter_update(thread_id, step_id, old, new))
            try:
                await self._transact(items, operation, ids)
            except DynamoDBError as exc:
                if exc.is_conflict:
                    raise Conflict() from exc
                raise
            return True

        return await self._retry_conflicts(operation, ids, attempt)

    async def upsert_feedback(self, feedback: Feedback) -> str:
        if feedback.value not in (0, 1):
            raise ValueError(f"feedback value must be 0 or 1, got {feedback.value!r}")
        if not feedback.forId:
            raise ValueError("feedback needs forId (the rated step)")
        # The step decides the thread; a client-sent threadId is only a fallback (steps
        # written by Chainlit's layer have no locator).
        thread_id = await self._locate("STEP", feedback.forId) or feedback.threadId
        if not thread_id:
            raise ValueError(f"feedback for unknown step {feedback.forId!r} and no threadId")
        await check_feedback_owner(thread_id, lambda: self.get_thread_author(thread_id))
        feedback_id = feedback_id_for(thread_id, feedback.forId)
        stored = {"id": feedback_id, "forId": feedback.forId, "threadId": thread_id,
                  "value": int(feedback.value), "comment": feedback.comment}
        if not await self._set_feedback(thread_id, feedback.forId, stored, "upsert_feedback"):
            raise ValueError(f"feedback for unknown step {feedback.forId!r} in thread {thread_id!r}")
        return feedback_id

    async def delete_feedback(self, feedback_id: str) -> bool:
        parsed = parse_feedback_id(feedback_id)
        if parsed is None:
            return False
        thread_id, step_id = parsed
        step = await self._get(step_key(thread_id, step_id), "delete_feedback", {"feedback_id": feedback_id},
                               attributes=("feedback",))
        if not step or not step.get("feedback"):
            return False
        await check_feedback_owner(thread_id, lambda: self.get_thread_author(thread_id))
        return await self._set_feedback(thread_id, step_id, None, "delete_feedback")

    # ------------------------------------------------------------------ elements
    async def get_element(self, thread_id: str, element_id: str) -> Optional["ElementDict"]:
        ids = {"thread_id": thread_id, "element_id": element_id}
        item = await self._get(element_key(thread_id, element_id), "get_element", ids)
        if item is None:
            return None
        item, _ = await self._hydrate(item)
        element = public(item)
        await sign_element_urls(self.storage, [element])
        return element  # type: ignore[return-value]

    @queue_until_user_message()
    async def create_element(self, element: "Element"):
        ids = {"element_id": element.id, "thread_id": element.thread_id}
        owner = current_user_identifier() or await self.get_thread_author(element.thread_id) or None
        object_key = await upload_element(self.storage, element, owner)
        stored: Dict[str, Any] = {}
        writing = False
        try:
            values = {k: v for k, v in dict(element.to_dict()).items()
                      if v is not None and k not in INTERNAL_ATTRIBUTES and k != BLOBS}
            if object_key is not None:
                values["objectKey"] = object_key
                values.pop("url", None)  # read URLs are signed on every read, never stored
            values.setdefault("name", "")
            key = element_key(element.thread_id, element.id)
            previous = await self._get(key, "create_element", ids, attributes=("objectKey", BLOBS))
            previous_blobs = (previous or {}).get(BLOBS) or {}
            stored, _ = await self._offload({**values, **key}, owner, element.thread_id,
                                            f"element-{element.id}", {}, {})
            item = serialize(stored)
            # Locator first: if the element write then fails, a stray locator is harmless.
            await self._put_locator("ELEMENT", element.id, element.thread_id, "create_element", ids)
            writing = True
            await self._call("put_item", "create_element", ids, TableName=self.table_name, Item=item)
        except BaseException as exc:
            # No item points at the new blobs (unless the write's outcome is unknown): do
            # not leave them behind.
            new_blobs = [k for k in (object_key, *stored.get(BLOBS, {}).values()) if k]
            if writing:
                await self._forget_uploads(exc, new_blobs, "create_element")
            else:
                await self._delete_blobs(new_blobs, "create_element (cleanup)")
            raise
        replaced = [k for k in previous_blobs.values()]
        if previous and previous.get("objectKey") and previous["objectKey"] != object_key:
            replaced.append(previous["objectKey"])
        await self._delete_blobs(replaced, "create_element")

    @queue_until_user_message()
    async def delete_element(self, element_id: str, thread_id: Optional[str] = None):
        thread_id = thread_id or await self._thread_of("ELEMENT", element_id)
        if thread_id is None:
            return
        ids = {"element_id": element_id, "thread_id": thread_id}
        item = await self._get(element_key(thread_id, element_id), "delete_element", ids,
                               attributes=("objectKey", BLOBS))
        await self._batch_delete([element_key(thread_id, element_id), locator_key("ELEMENT", element_id)],
                                 "delete_element", ids)
        if item:
            await self._delete_blobs([item.get("objectKey"), *(item.get(BLOBS) or {}).values()], "delete_element")

    # ------------------------------------------------------------------ misc
    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._client = None
            self._ready = False
            await stack.aclose()
        if self.storage is not None:
            await self.storage.close()


# ---------------------------------------------------------------------- command line
async def _admin_command(command: str, url: str, template: Path):
    options = parse_dynamodb_url(url)
    session = aioboto3.Session()
    work = provision_table if command == "provision" else upgrade_table
    try:
        async with session.client("dynamodb", region_name=options["region"], endpoint_url=options["endpoint_url"],
                                  config=Config(retries={"mode": "standard", "max_attempts": 6})) as client:
            return await work(client, options["table"], template)
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable, waiter timeout
        raise DynamoDBError(f"{command} {options['table']!r}: {exc}") from exc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datalayers.dynamodb",
                                     description="Provision or upgrade the table of the DynamoDB data layer.")
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "provision": "create the table from the CloudFormation template (idempotent; waits until ACTIVE)",
        "upgrade": "make a table written by Chainlit's DynamoDB layer usable: recreate the UserThread index, "
                   "count existing feedback (scans the table once)",
    }
    for name, text in helps.items():
        command = commands.add_parser(name, help=text)
        command.add_argument("--url", default=os.environ.get("DATABASE_URL"),
                             help="dynamodb://TABLE?region=...&endpoint_url=... (default: $DATABASE_URL)")
        command.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url (or DATABASE_URL) is required")
    try:
        result = asyncio.run(_admin_command(args.command, args.url, args.template))
    except (ValueError, DataLayerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = parse_dynamodb_url(args.url)["table"]
    if args.command == "provision":
        print(f"table {table}: {'created' if result else 'already exists'}; ACTIVE")
    else:
        print(f"table {table}: index {'recreated' if result['index_recreated'] else 'already up to date'}; "
              f"feedback counted on {result['threads_counted']} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
