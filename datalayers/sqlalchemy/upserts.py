"""Single-statement upserts for SQLite, PostgreSQL and MySQL/MariaDB.

A step write is one `INSERT ... ON CONFLICT DO UPDATE` (`ON DUPLICATE KEY UPDATE` on MySQL)
whose rules run in the database: `create_step` values fill only columns that are still
empty, `update_step` values overwrite, and metadata is merged per key — so Chainlit's
repeated and out-of-order writes need no locked read first. The thread the step belongs to
is created or touched by a second upsert in the same transaction, which also gives an
ownerless thread its owner (never replaces one).

JSON merges are shallow, as everywhere in this project: a key set replaces its value, a
key set to `None` is removed, a filled key is added only when absent. PostgreSQL does it
with `jsonb` operators. SQLite and MySQL have no per-key operator that takes a whole patch,
so they use RFC 7396 merge patch twice — first removing every key the write touches, then
setting the new values — which is the same shallow replace (a `null` nested inside a
new value is dropped by the merge patch); filling uses the stored document as the patch
over the filled keys, so stored keys win.
"""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import String, Text, case, func, literal, null, or_, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import JSON

from ..writes import STEP_DEFAULTS, StepWrite, ThreadWrite, merge_changes
from .schema import elements, steps, threads, users

STEP_COLUMNS = frozenset(c.name for c in steps.columns) - {"extra"}
ELEMENT_COLUMNS = frozenset(c.name for c in elements.columns) - {"extra"}
TEXT_TYPES = (String, Text)


def show_input_to_db(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def show_input_from_db(value: str | None) -> Any:
    return {"true": True, "false": False}.get(value, value) if value is not None else None


def _insert(dialect: str) -> Callable:
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect, mysql.insert)


def upsert(dialect: str, table, values: dict[str, Any], key: list, updates: Callable[[Any], dict]):
    """INSERT `values`; on a key conflict SET `updates(new)`, where `new` names the values
    that were to be inserted. Nothing to update: keep the stored row."""
    statement = _insert(dialect)(table).values(**values)
    if dialect in ("postgresql", "sqlite"):
        changes = updates(statement.excluded)
        if not changes:
            return statement.on_conflict_do_nothing(index_elements=key)
        return statement.on_conflict_do_update(index_elements=key, set_=changes)
    changes = updates(statement.inserted)
    if not changes:  # MySQL has no DO NOTHING: a no-op assignment of the key
        changes = {key[0].name: table.c[key[0].name]}
    return statement.on_duplicate_key_update(changes)


def _json(dialect: str):
    return postgresql.JSONB() if dialect == "postgresql" else JSON()


def json_merge(dialect: str, column, overwrite: dict, fill: dict) -> ColumnElement:
    """The stored JSON object with `overwrite` applied (None deletes) and `fill` added
    where absent — one SQL expression."""
    kind = _json(dialect)
    sets = {k: v for k, v in overwrite.items() if v is not None}
    fills = {k: v for k, v in fill.items() if v is not None and k not in overwrite}
    if dialect == "postgresql":
        expr: ColumnElement = case((func.jsonb_typeof(column) == "object", column), else_=literal({}, kind))
        if overwrite:
            expr = expr.op("-", return_type=kind)(literal(list(overwrite), postgresql.ARRAY(Text)))
        if sets:
            expr = expr.op("||", return_type=kind)(literal(sets, kind))
        if fills:
            expr = literal(fills, kind).op("||", return_type=kind)(expr)
        return expr
    patch = func.json_patch if dialect == "sqlite" else func.JSON_MERGE_PATCH
    expr = func.coalesce(column, literal({}, kind))
    if overwrite:
        expr = patch(expr, literal({k: None for k in overwrite}, kind))
    if sets:
        expr = patch(expr, literal(sets, kind))
    if fills:
        expr = patch(literal(fills, kind), expr)
    return expr


def _filled(column, new_value) -> ColumnElement:
    """Keep the stored value unless it is empty (NULL, or '' for text)."""
    if isinstance(column.type, TEXT_TYPES):
        empty = or_(column.is_(None), column == "")
    else:
        empty = column.is_(None)
    return case((empty, new_value), else_=column)


def step_columns(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split step values into columns and the `extra` keys this schema has no column for."""
    columns: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if key == "metadata":
            continue
        if key in STEP_COLUMNS:
            columns[key] = show_input_to_db(value) if key == "showInput" else value
        else:
            extra[key] = value
    return columns, extra


def step_upsert(dialect: str, write: StepWrite):
    row = write.new_row()
    columns, extra = step_columns(row)
    values = {**STEP_DEFAULTS, **columns, "metadata": row["metadata"], "extra": extra or null()}
    fill_columns, fill_extra = step_columns(write.fill)
    overwrite_columns, overwrite_extra = step_columns(write.overwrite)

    def updates(new) -> dict:
        changes: dict[str, Any] = {}
        for name in overwrite_columns:
            if name not in ("id", "threadId"):
                changes[name] = new[name]
        for name in fill_columns:
            if name not in ("id", "threadId"):
                changes[name] = _filled(steps.c[name], new[name])
        if write.overwrite_metadata or write.fill_metadata:
            changes["metadata"] = json_merge(dialect, steps.c.metadata, write.overwrite_metadata, write.fill_metadata)
        if overwrite_extra or fill_extra:
            changes["extra"] = json_merge(dialect, steps.c.extra, overwrite_extra, fill_extra)
        return changes

    return upsert(dialect, steps, values, [steps.c.id], updates)


def thread_touch(dialect: str, thread_id: str, actor: str | None, now: str, bump: bool):
    """Create the thread a step belongs to if it is missing (steps may arrive first), give it
    the acting user as owner if it has none, and with `bump` mark it active now."""
    owner_id: Any = select(users.c.id).where(users.c.identifier == actor).scalar_subquery() if actor else null()
    values = {"id": thread_id, "createdAt": now, "updatedAt": now, "metadata": {},
              "userIdentifier": actor if actor else null(), "userId": owner_id}

    def updates(new) -> dict:
        changes: dict[str, Any] = {}
        if bump:
            changes["updatedAt"] = new.updatedAt
        if actor:
            changes["userIdentifier"] = func.coalesce(threads.c.userIdentifier, new.userIdentifier)
            changes["userId"] = func.coalesce(threads.c.userId, new.userId)
        return changes

    return upsert(dialect, threads, values, [threads.c.id], updates)


def thread_upsert(dialect: str, write: ThreadWrite, now: str):
    """`update_thread`: create the thread or change what the write names. The owner is
    set once and never replaced (a session cannot take over another user's thread)."""
    values: dict[str, Any] = {"id": write.id, "createdAt": now, "updatedAt": now,
                              "metadata": merge_changes({}, write.metadata)}
    if write.name is not None:
        values["name"] = write.name
    if write.tags is not None:
        values["tags"] = list(write.tags)
    if write.user_id is not None:
        values["userId"] = write.user_id
        values["userIdentifier"] = select(users.c.identifier).where(users.c.id == write.user_id).scalar_subquery()

    def updates(new) -> dict:
        changes: dict[str, Any] = {}
        if write.name is not None:
            changes["name"] = new.name
        if write.tags is not None:
            changes["tags"] = new.tags
        if write.user_id is not None:
            changes["userIdentifier"] = func.coalesce(threads.c.userIdentifier, new.userIdentifier)
            changes["userId"] = func.coalesce(threads.c.userId, new.userId)
        if write.metadata is not None:
            changes["metadata"] = json_merge(dialect, threads.c.metadata, write.metadata, {})
        return changes

    return upsert(dialect, threads, values, [threads.c.id], updates)


def user_upsert(dialect: str, user_id: str, identifier: str, metadata: dict, now: str):
    """Every login: create the user, or refresh its metadata keeping id and createdAt."""
    values = {"id": user_id, "identifier": identifier, "metadata": metadata, "createdAt": now}
    return upsert(dialect, users, values, [users.c.identifier], lambda new: {"metadata": new.metadata})


def element_upsert(dialect: str, row: dict[str, Any]):
    columns = {k: v for k, v in row.items() if k in ELEMENT_COLUMNS}
    extra = {k: v for k, v in row.items() if k not in ELEMENT_COLUMNS}
    values = {**columns, "extra": extra or null()}

    def updates(new) -> dict:
        changes = {name: new[name] for name in columns if name != "id"}
        changes["extra"] = new.extra
        return changes

    return upsert(dialect, elements, values, [elements.c.id], updates)

