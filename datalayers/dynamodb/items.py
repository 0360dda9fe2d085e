"""The table's item layout, the value codec and the expression builder.

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

Extensions, each fixing a failure of Chainlit's layer:

* `UserThreadSK` is the last-activity time (moved when a step is created) plus the id, so
  the `UserThread` index lists most-recently-active first with a total order for cursors.
* The index projects what a sidebar page shows (name, createdAt, owner, tags, metadata,
  `_blobs`) and the `_feedbackUp` / `_feedbackDown` counters: a page, with or without the
  feedback filter, is one Query of the index and nothing else.
* `_rev` on threads and steps: every read-modify-write is a conditional write on it, so
  concurrent and out-of-order writes merge instead of overwriting each other.
* `_blobs` maps attributes moved to blob storage when an item would be too large.
* Locator items make lookups by a bare id strongly consistent, without a second index.
* `_text` on the thread: the search digest (`search.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

INDEX_NAME = "UserThread"
REV, BLOBS, FEEDBACK_UP, FEEDBACK_DOWN = "_rev", "_blobs", "_feedbackUp", "_feedbackDown"
#: The thread's search digest: lowercased step outputs, their size in bytes, whether
#: appending stopped at the cap, and when the digest started (see `search.py`).
TEXT, TEXT_BYTES, TEXT_TRUNCATED, TEXT_SINCE = "_text", "_textBytes", "_textTruncated", "_textSince"
DIGEST_ATTRIBUTES = frozenset({TEXT, TEXT_BYTES, TEXT_TRUNCATED, TEXT_SINCE})
KEY_ATTRIBUTES = frozenset({"PK", "SK", "UserThreadPK", "UserThreadSK"})
#: Never part of a returned dict, and never taken from a dict Chainlit hands us.
INTERNAL_ATTRIBUTES = KEY_ATTRIBUTES | DIGEST_ATTRIBUTES | {
    REV, BLOBS, FEEDBACK_UP, FEEDBACK_DOWN, "updatedAt", "expiresAt"}
#: Small attributes that stay in the item when large ones move to blob storage (keys,
#: what indexes and filters read, what identifies the item).
PINNED_ATTRIBUTES = INTERNAL_ATTRIBUTES | {
    "id", "threadId", "forId", "parentId", "type", "name", "createdAt", "userId", "userIdentifier",
    "feedback", "objectKey", "mime", "streaming",
}
#: What a sidebar page reads from the index (the template projects exactly these).
INDEX_ATTRIBUTES = ("id", "name", "createdAt", "userId", "userIdentifier", "tags", "metadata", BLOBS,
                    FEEDBACK_UP, FEEDBACK_DOWN)
#: DynamoDB's hard limit is 400 KB per item. Items are kept well under it: a write is billed
#: by item size (an update by the size of the whole item), and the thread item and its index
#: copy are rewritten on every new message. Larger attributes go to blob storage.
DEFAULT_INLINE_LIMIT = 48 * 1024
MAX_ITEM_BYTES = 400 * 1024

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


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


def serialize_value(value: Any, path: str) -> dict[str, Any]:
    return _serializer.serialize(_to_dynamo(value, path))


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    """An item in DynamoDB's wire format; top-level `None` means "absent"."""
    return {k: serialize_value(v, k) for k, v in item.items() if v is not None}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def value_size(value: Any) -> int:
    """Approximate stored size in bytes (JSON text; DynamoDB's own encoding is smaller)."""
    return len(json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":")).encode("utf-8"))


def item_size(item: dict[str, Any]) -> int:
    return sum(len(k.encode("utf-8")) + value_size(v) for k, v in item.items() if v is not None)


# ---------------------------------------------------------------------- keys
def remove_prefix(value: Any, prefix: str) -> str | None:
    """The id after `prefix`, or None when `value` does not start with it (never strip())."""
    return value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else None


def thread_key(thread_id: str) -> dict[str, str]:
    return {"PK": f"THREAD#{thread_id}", "SK": "THREAD"}


def step_key(thread_id: str, step_id: str) -> dict[str, str]:
    return {"PK": f"THREAD#{thread_id}", "SK": f"STEP#{step_id}"}


def element_key(thread_id: str, element_id: str) -> dict[str, str]:
    return {"PK": f"THREAD#{thread_id}", "SK": f"ELEMENT#{element_id}"}


def user_key(identifier: str) -> dict[str, str]:
    return {"PK": f"USER#{identifier}", "SK": "USER"}


def locator_key(kind: str, item_id: str) -> dict[str, str]:
    return {"PK": f"{kind}#{item_id}", "SK": "LOCATOR"}


def activity_sort_key(timestamp: str, thread_id: str) -> str:
    return f"TS#{timestamp}#{thread_id}"


def feedback_id_for(thread_id: str, step_id: str) -> str:
    # Chainlit's own format: the id says where the feedback lives, so delete_feedback
    # needs no lookup, and feedback written by Chainlit's layer can still be deleted.
    return f"THREAD#{thread_id}::STEP#{step_id}"


def parse_feedback_id(feedback_id: str) -> tuple[str, str] | None:
    rest = remove_prefix(feedback_id, "THREAD#")
    if rest is None or "::STEP#" not in rest:
        return None
    thread_id, _, step_id = rest.rpartition("::STEP#")
    return (thread_id, step_id) if thread_id and step_id else None


def public(item: dict[str, Any]) -> dict[str, Any]:
    """An item as Chainlit sees it: no keys, index or bookkeeping attributes, no Nones."""
    return {k: v for k, v in item.items() if k not in INTERNAL_ATTRIBUTES and v is not None}


def storable(values: dict[str, Any]) -> dict[str, Any]:
    """Values from a dict Chainlit hands us, without names this layer reserves (a key
    attribute in a step dict would otherwise move or corrupt the item)."""
    return {k: v for k, v in values.items() if k not in INTERNAL_ATTRIBUTES}


class Expression:
    """Collects placeholder names and values for one DynamoDB expression set."""

    def __init__(self):
        self.names: dict[str, str] = {}
        self._placeholders: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        placeholder = self._placeholders.get(attribute)
        if placeholder is None:
            placeholder = self._placeholders[attribute] = f"#n{len(self.names)}"
            self.names[placeholder] = attribute
        return placeholder

    def path(self, *attributes: str) -> str:
        return ".".join(self.name(a) for a in attributes)

    def names_of(self, attributes) -> str:
        return ", ".join(self.name(a) for a in attributes)

    def value(self, value: Any, label: str | None = None) -> str:
        """A value placeholder; `label` names the field in an error about the value."""
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = serialize_value(value, label or placeholder)
        return placeholder

    def bump_rev(self) -> str:
        """The ADD clause moving `_rev` by one. DynamoDB's ADD starts a missing number at 0,
        so this is `SET _rev = if_not_exists(_rev, 0) + 1` without a function to evaluate:
        the same item and the same write units on DynamoDB, less parsing for an emulator."""
        return f"{self.name(REV)} {self.value(1)}"

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.names:
            out["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            out["ExpressionAttributeValues"] = dict(self.values)
        return out


def update_expression(sets: Sequence[str] = (), adds: Sequence[str] = (), removes: Sequence[str] = ()) -> str:
    """An UpdateExpression from its clauses; a kind without clauses is left out."""
    return " ".join(f"{keyword} {', '.join(clauses)}"
                    for keyword, clauses in (("SET", sets), ("ADD", adds), ("REMOVE", removes)) if clauses)
