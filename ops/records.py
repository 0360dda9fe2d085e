"""The portable records an export writes and an import reads, and their comparable form.

One thread travels as a `Bundle`: the thread row, its steps, elements and ratings. The
record shapes are Chainlit's dicts, so any backend's `get_thread` maps onto them:

* user: `identifier`, `metadata`, `createdAt`, `id` (the source's; ids differ between
  backends, so an import matches users by identifier and remaps)
* thread: `id`, `owner` (the owner's identifier), `name`, `tags`, `metadata`, `createdAt`,
  `updatedAt` (last activity)
* step: Chainlit's step dict without `feedback` (ratings are their own kind)
* element: Chainlit's element dict without `url` (signed per read, never stored), with
  `sha256` and `size` of its blob when it has one (`objectKey`)
* feedback: `id`, `forId`, `threadId`, `value`, `comment`

Comparison (`comparable`) ignores what a backend decides itself and Chainlit never shows:
feedback ids (DynamoDB derives a rating's id from its message) and absent vs `None`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("users", "threads", "steps", "elements", "feedback")


def without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def user_record(row: dict[str, Any]) -> dict[str, Any]:
    return {"identifier": row["identifier"], "metadata": row.get("metadata") or {},
            "createdAt": row.get("createdAt"), "id": row.get("id")}


def thread_record(thread: dict[str, Any], updated_at: str | None) -> dict[str, Any]:
    return {"id": thread["id"], "owner": thread.get("userIdentifier") or None, "name": thread.get("name"),
            "tags": thread.get("tags"), "metadata": thread.get("metadata") or {},
            "createdAt": thread.get("createdAt"), "updatedAt": updated_at or thread.get("createdAt")}


def step_record(step: dict[str, Any], thread_id: str) -> dict[str, Any]:
    record = without_none({k: v for k, v in step.items() if k != "feedback"})
    record["threadId"] = thread_id
    return record


def element_record(element: dict[str, Any], thread_id: str) -> dict[str, Any]:
    record = without_none({k: v for k, v in element.items() if k != "url" or not element.get("objectKey")})
    record["threadId"] = thread_id
    return record


def feedback_record(feedback: dict[str, Any], thread_id: str) -> dict[str, Any]:
    return {"id": feedback.get("id"), "forId": feedback["forId"], "threadId": thread_id,
            "value": feedback.get("value"), "comment": feedback.get("comment")}


@dataclass
class Bundle:
    """One thread and everything in it. `read_blob(sha256, element)` returns the bytes of an
    element's blob (from the source store or the archive), verified against `sha256`."""

    thread: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    elements: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    read_blob: Callable[[str, dict[str, Any]], Awaitable[bytes]] | None = None

    @property
    def id(self) -> str:
        return str(self.thread["id"])

    def counts(self) -> dict[str, int]:
        return {"threads": 1, "steps": len(self.steps), "elements": len(self.elements),
                "feedback": len(self.feedback)}


def bundle_from_thread(thread: dict[str, Any], updated_at: str | None) -> Bundle:
    """A bundle from a `get_thread` dict (blob checksums are added by the exporter)."""
    thread_id = thread["id"]
    steps = [step_record(s, thread_id) for s in thread.get("steps") or []]
    feedback = [feedback_record(s["feedback"], thread_id) for s in thread.get("steps") or []
                if isinstance(s.get("feedback"), dict) and s["feedback"].get("forId")]
    elements = [element_record(e, thread_id) for e in thread.get("elements") or []]
    return Bundle(thread_record(thread, updated_at), steps, elements, feedback)


def comparable(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that an import must reproduce exactly."""
    data = without_none(record)
    if kind == "threads":
        data.pop("updatedAt", None)  # not part of a thread read; moved by every import of it
        data.setdefault("metadata", {})
    elif kind == "feedback":
        data.pop("id", None)
    elif kind == "steps":
        data.setdefault("metadata", {})
        data.setdefault("input", "")
        data.setdefault("output", "")
    elif kind == "users":
        data = {"identifier": data["identifier"], "metadata": data.get("metadata") or {}}
    return data


def keyed(kind: str, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records by the key an import matches them on (ratings: their message)."""
    key = "forId" if kind == "feedback" else "id"
    return {str(r[key]): comparable(kind, r) for r in records}
