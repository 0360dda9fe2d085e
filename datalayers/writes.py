"""The writes a data layer journals, and how writes to the same item coalesce.

Chainlit hands the data layer `create_step` (fill what is still empty: it may arrive after
an update) and `update_step` (overwrite what it provides), fired as background tasks, so
they can arrive in any order and more than once. A `StepWrite` holds both rules at once —
`fill` and `overwrite`, with disjoint keys — so several pending writes of one step become
one database write with the same result as applying them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError
from .timestamps import normalize_timestamp, utc_now

STEP_TIMESTAMPS = ("createdAt", "start", "end")
#: Kept elsewhere (feedback has its own table / attribute) or never stored.
STEP_FIELDS_NOT_STORED = frozenset({"feedback", "id", "threadId"})
#: What a step row gets when it is created by a write that does not say.
STEP_DEFAULTS: dict[str, Any] = {"name": "", "type": "undefined", "streaming": False, "disableFeedback": False}
MAX_ID_LENGTH = 255


def merge_changes(base: dict | None, changes: dict | None) -> dict:
    """`base` updated with `changes`, where a `None` value removes the key."""
    merged = dict(base or {})
    for key, value in (changes or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def fill_missing(base: dict | None, additions: dict | None) -> dict:
    """`base` with keys from `additions` that it does not have yet (base wins)."""
    merged = {k: v for k, v in (additions or {}).items() if v is not None}
    merged.update(base or {})
    return merged


def is_empty(value: Any) -> bool:
    return value is None or value == ""


def with_step_defaults(data: dict) -> dict:
    """A stored step as Chainlit's frontend expects it: metadata, input and output present."""
    data.setdefault("metadata", {})
    data.setdefault("input", "")
    data.setdefault("output", "")
    return data


def is_valid_id(value: Any) -> bool:
    """Ids (threads, steps, elements, feedback) are non-empty strings of at most
    MAX_ID_LENGTH characters without NUL: what every backend can store and look up."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and "\x00" not in value


def check_id(value: Any, what: str) -> str:
    """An id Chainlit sent, checked before it is journaled: a bad one is the caller's error."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"{what} must be a non-empty string")
    if not is_valid_id(value):
        raise RequestError(f"{what} is not a valid id (at most {MAX_ID_LENGTH} characters, no NUL)")
    return value


@dataclass
class StepWrite:
    """Pending changes to one step. `fill` applies only where the stored value is empty,
    `overwrite` always; the metadata patches likewise per key (`None` deletes a key)."""

    id: str
    thread_id: str
    fill: dict[str, Any] = field(default_factory=dict)
    overwrite: dict[str, Any] = field(default_factory=dict)
    fill_metadata: dict[str, Any] = field(default_factory=dict)
    overwrite_metadata: dict[str, Any] = field(default_factory=dict)
    #: A create_step is part of it: the thread's activity time moves (not on updates, so
    #: rating or favouriting an old message does not reorder the sidebar).
    created: bool = False
    #: When the write was made (not when the database got it: that may be after an outage).
    at: str = field(default_factory=utc_now)

    @classmethod
    def from_step(cls, step_dict: dict, overwrite: bool) -> StepWrite:
        step_id = check_id(step_dict.get("id"), "step id")
        thread_id = check_id(step_dict.get("threadId"), "step threadId")
        values: dict[str, Any] = {}
        for key, value in step_dict.items():
            if value is None or key in STEP_FIELDS_NOT_STORED:
                continue
            values[key] = normalize_timestamp(value) if key in STEP_TIMESTAMPS else value
        metadata = values.pop("metadata", None)
        if metadata is not None and not isinstance(metadata, dict):
            raise RequestError(f"step metadata must be an object, got {type(metadata).__name__}")
        if overwrite:
            return cls(step_id, thread_id, overwrite=values, overwrite_metadata=dict(metadata or {}))
        fill_meta = {k: v for k, v in (metadata or {}).items() if v is not None}
        return cls(step_id, thread_id, fill=values, fill_metadata=fill_meta, created=True)

    def merge(self, later: StepWrite) -> None:
        """Fold a later write of the same step into this one (same result as both in order)."""
        for key, value in later.overwrite.items():
            self.overwrite[key] = value
            self.fill.pop(key, None)
        for key, value in later.overwrite_metadata.items():
            self.overwrite_metadata[key] = value
            self.fill_metadata.pop(key, None)
        for key, value in later.fill.items():
            if key in self.overwrite:
                if is_empty(self.overwrite[key]) and not is_empty(value):
                    self.overwrite[key] = value  # it was set empty, so the fill applies
            elif key not in self.fill or is_empty(self.fill[key]):
                self.fill[key] = value
        for key, value in later.fill_metadata.items():
            if key in self.overwrite_metadata:
                if self.overwrite_metadata[key] is None:
                    self.overwrite_metadata[key] = value  # deleted, then filled again
            elif key not in self.fill_metadata:
                self.fill_metadata[key] = value
        self.created = self.created or later.created
        self.at = max(self.at, later.at)

    def apply_to(self, stored: dict | None) -> dict:
        """The step after this write, given the stored one (or None): the same rules the
        database-side upserts implement, for backends that merge in the application."""
        row = dict(STEP_DEFAULTS) if stored is None else dict(stored)
        row.update(id=self.id, threadId=self.thread_id)
        for key, value in self.fill.items():
            if stored is None or is_empty(row.get(key)):
                row[key] = value
        row.update(self.overwrite)
        metadata = merge_changes(row.get("metadata"), self.overwrite_metadata)
        row["metadata"] = fill_missing(metadata, self.fill_metadata)
        return row

    def values(self) -> dict[str, Any]:
        """Every value this write carries (overwrite wins), metadata excluded."""
        return {**self.fill, **self.overwrite}

    def new_row(self) -> dict[str, Any]:
        """The step as inserted when it does not exist yet."""
        return self.apply_to(None)

    def to_json(self) -> dict:
        return {"id": self.id, "threadId": self.thread_id, "fill": self.fill, "overwrite": self.overwrite,
                "fillMetadata": self.fill_metadata, "overwriteMetadata": self.overwrite_metadata,
                "created": self.created, "at": self.at}

    @classmethod
    def from_json(cls, data: dict) -> StepWrite:
        return cls(data["id"], data["threadId"], data.get("fill") or {}, data.get("overwrite") or {},
                   data.get("fillMetadata") or {}, data.get("overwriteMetadata") or {}, bool(data.get("created")),
                   data.get("at") or utc_now())


@dataclass
class ThreadWrite:
    """Pending changes to one thread (`update_thread`): `None` leaves a field unchanged; the
    metadata patch is merged into the stored metadata (`None` values delete keys)."""

    id: str
    name: str | None = None
    user_id: str | None = None
    metadata: dict | None = None
    tags: list | None = None
    at: str = field(default_factory=utc_now)

    @classmethod
    def from_call(cls, thread_id: str, name: str | None, user_id: str | None, metadata: dict | None,
                  tags: list | None) -> ThreadWrite:
        check_id(thread_id, "thread id")
        if metadata is not None and not isinstance(metadata, dict):
            raise RequestError(f"thread metadata must be an object, got {type(metadata).__name__}")
        if name is None and metadata and isinstance(metadata.get("name"), str):
            # Apps keep the thread's name in the user session, which Chainlit saves as
            # thread metadata; Chainlit's own SQL layers rename the thread from it.
            name = metadata["name"]
        return cls(thread_id, name, user_id, dict(metadata) if metadata is not None else None,
                   list(tags) if tags is not None else None)

    def merge(self, later: ThreadWrite) -> None:
        self.name = later.name if later.name is not None else self.name
        self.user_id = later.user_id if later.user_id is not None else self.user_id
        self.tags = later.tags if later.tags is not None else self.tags
        if later.metadata is not None:
            self.metadata = {**(self.metadata or {}), **later.metadata}
        self.at = max(self.at, later.at)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "userId": self.user_id, "metadata": self.metadata,
                "tags": self.tags, "at": self.at}

    @classmethod
    def from_json(cls, data: dict) -> ThreadWrite:
        return cls(data["id"], data.get("name"), data.get("userId"), data.get("metadata"), data.get("tags"),
                   data.get("at") or utc_now())
