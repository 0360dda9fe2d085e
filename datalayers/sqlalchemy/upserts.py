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
setting the new values — which is the same shallow replace (a `null` nested inside a new
value is dropped by the merge patch); filling uses the stored document as the patch over
the filled keys, so stored keys win.

SQLAlchemy cannot cache its dialect-specific INSERT constructs (they recompile on every
execution, which cost more CPU than the database did). So each statement is built once per
*shape* — which columns a write carries, which merges it needs — with named parameters,
compiled to SQL text, and kept: a write only binds its values.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import String, Text, TextClause, bindparam, case, func, or_, select, text
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import JSON

from ..writes import STEP_DEFAULTS, StepWrite, ThreadWrite, merge_changes
from .nul import NulSafeText
from .schema import elements, steps, threads, users

STEP_COLUMNS = frozenset(c.name for c in steps.columns) - {"extra"}
ELEMENT_COLUMNS = frozenset(c.name for c in elements.columns) - {"extra"}
TEXT_TYPES = (String, Text)
#: Dialects that render `:name` parameters: the SQL text is then bound by the real driver.
NAMED = {"postgresql": postgresql.dialect(paramstyle="named"), "sqlite": sqlite.dialect(paramstyle="named"),
         "mysql": mysql.dialect(paramstyle="named"), "mariadb": mysql.dialect(paramstyle="named")}
Prepared = tuple[Hashable, Callable[[], Any], dict[str, Any]]


class StatementCache:
    """Compiled statements by shape, for one dialect."""

    def __init__(self, dialect: str, size: int = 512):
        self.dialect = dialect
        self.size = size
        self._statements: dict[Hashable, TextClause] = {}

    def statement(self, prepared: Prepared) -> tuple[TextClause, dict[str, Any]]:
        key, build, params = prepared
        found = self._statements.get(key)
        if found is None:
            compiled = build().compile(dialect=NAMED[self.dialect])
            # Named parameters keep their names; constants in the statement (an anonymous
            # parameter such as the '' of "is empty") keep their value.
            # A PostgreSQL cast (`:p::JSONB`) is not a parameter to text(): escape its colons.
            found = text(str(compiled).replace("::", "\\:\\:")).bindparams(*[
                bindparam(name, type_=bind.type) if bind.value is None and not bind.callable
                else bindparam(name, bind.value, type_=bind.type)
                for bind, name in compiled.bind_names.items()])
            if len(self._statements) >= self.size:
                self._statements.clear()
            self._statements[key] = found
        return found, params


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


def _values(table, names, prefix: str = "v_") -> dict[str, Any]:
    """Named parameters for these columns, typed as the columns are."""
    return {name: bindparam(f"{prefix}{name}", type_=table.c[name].type) for name in names}


def merge_params(prefix: str, overwrite: dict, fill: dict) -> tuple[tuple[bool, bool, bool], dict[str, Any]]:
    """The shape of a JSON merge (which parts it has) and its parameters."""
    sets = {k: v for k, v in overwrite.items() if v is not None}
    fills = {k: v for k, v in fill.items() if v is not None and k not in overwrite}
    params: dict[str, Any] = {}
    if overwrite:
        params[f"{prefix}_touched"] = list(overwrite)
        params[f"{prefix}_clear"] = {k: None for k in overwrite}
    if sets:
        params[f"{prefix}_set"] = sets
    if fills:
        params[f"{prefix}_fill"] = fills
    return (bool(overwrite), bool(sets), bool(fills)), params


def json_merge(dialect: str, column, prefix: str, shape: tuple[bool, bool, bool]) -> ColumnElement:
    """The stored JSON object with the overwrite applied (None deletes) and the fill added
    where absent — one SQL expression over the parameters of `merge_params`."""
    touched, sets, fills = shape
    kind = _json(dialect)
    if dialect == "postgresql":
        expr: ColumnElement = case((func.jsonb_typeof(column) == "object", column),
                                   else_=bindparam(f"{prefix}_empty", type_=kind))
        if touched:
            # The keys as stored: escaped like the document's (nul.py).
            expr = expr.op("-", return_type=kind)(bindparam(f"{prefix}_touched", type_=postgresql.ARRAY(NulSafeText())))
        if sets:
            expr = expr.op("||", return_type=kind)(bindparam(f"{prefix}_set", type_=kind))
        if fills:
            expr = bindparam(f"{prefix}_fill", type_=kind).op("||", return_type=kind)(expr)
        return expr
    patch = func.json_patch if dialect == "sqlite" else func.JSON_MERGE_PATCH
    expr = func.coalesce(column, bindparam(f"{prefix}_empty", type_=kind))
    if touched:
        expr = patch(expr, bindparam(f"{prefix}_clear", type_=kind))
    if sets:
        expr = patch(expr, bindparam(f"{prefix}_set", type_=kind))
    if fills:
        expr = patch(bindparam(f"{prefix}_fill", type_=kind), expr)
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


def step_upsert(dialect: str, write: StepWrite) -> Prepared:
    row = write.new_row()
    columns, extra = step_columns({**STEP_DEFAULTS, **row})
    inserted = tuple(sorted(columns))
    fill = tuple(sorted(set(step_columns(write.fill)[0]) - {"id", "threadId"}))
    overwrite = tuple(sorted(set(step_columns(write.overwrite)[0]) - {"id", "threadId"}))
    meta_shape, meta_params = merge_params("m", write.overwrite_metadata, write.fill_metadata)
    extra_shape, extra_params = merge_params("x", step_columns(write.overwrite)[1], step_columns(write.fill)[1])
    params: dict[str, Any] = {f"v_{name}": columns[name] for name in inserted}
    params.update(v_metadata=row["metadata"], m_empty={}, x_empty={}, **meta_params, **extra_params)
    if extra:
        params["v_extra"] = extra
    key = ("step", inserted, fill, overwrite, meta_shape, extra_shape, bool(extra))

    def build():
        values = _values(steps, (*inserted, "metadata", *(("extra",) if extra else ())))

        def updates(new) -> dict:
            changes: dict[str, Any] = {name: new[name] for name in overwrite}
            changes.update({name: _filled(steps.c[name], new[name]) for name in fill})
            if any(meta_shape):
                changes["metadata"] = json_merge(dialect, steps.c.metadata, "m", meta_shape)
            if any(extra_shape):
                changes["extra"] = json_merge(dialect, steps.c.extra, "x", extra_shape)
            return changes

        return guarded_step_upsert(dialect, values, updates)

    return key, build, params


def guarded_step_upsert(dialect: str, values: dict[str, Any], updates: Callable[[Any], dict]):
    """The step upsert, which never changes a step stored in another thread: a client chooses
    the ids of the messages it sends, so a write may name another user's step. On SQLite and
    PostgreSQL the statement returns the step's id only when it wrote it; on MySQL the
    caller reads the stored step's thread in the same transaction (no RETURNING there)."""
    statement = _insert(dialect)(steps).values(**values)
    if dialect in ("postgresql", "sqlite"):
        new = statement.excluded
        # Nothing to change still "updates" the id to itself, so the row comes back.
        changes = updates(new) or {"id": steps.c.id}
        return statement.on_conflict_do_update(index_elements=[steps.c.id], set_=changes,
                                               where=steps.c.threadId == new.threadId).returning(steps.c.id)
    new = statement.inserted
    same_thread = steps.c.threadId == new.threadId
    changes = {name: case((same_thread, value), else_=steps.c[name]) for name, value in updates(new).items()}
    return statement.on_duplicate_key_update(changes or {"id": steps.c.id})


def thread_touch(dialect: str, thread_id: str, actor: str | None, now: str, bump: bool) -> Prepared:
    """Create the thread a step belongs to if it is missing (steps may arrive first), give it
    the acting user as owner if it has none, and with `bump` mark it active now. Parameters
    are prefixed `t_` so the statement can share one round trip with the step's."""
    params = {"t_id": thread_id, "t_createdAt": now, "t_updatedAt": now, "t_metadata": {}}
    if actor:
        params["t_actor"] = actor

    def build():
        values: dict[str, Any] = _values(threads, ("id", "createdAt", "updatedAt", "metadata"), "t_")
        if actor:
            actor_param = bindparam("t_actor", type_=users.c.identifier.type)
            values["userIdentifier"] = actor_param
            values["userId"] = select(users.c.id).where(users.c.identifier == actor_param).scalar_subquery()

        def updates(new) -> dict:
            changes: dict[str, Any] = {}
            if bump:
                changes["updatedAt"] = new.updatedAt
            if actor:
                changes["userIdentifier"] = func.coalesce(threads.c.userIdentifier, new.userIdentifier)
                changes["userId"] = func.coalesce(threads.c.userId, new.userId)
            return changes

        return upsert(dialect, threads, values, [threads.c.id], updates)

    return ("touch", bool(actor), bump), build, params


def step_write(dialect: str, write: StepWrite, actor: str | None) -> list[Prepared]:
    """The statements of one step write: the thread touch, then the step upsert. On
    PostgreSQL they are one statement (the touch as a data-modifying WITH), which runs
    atomically on its own: one round trip, no BEGIN/COMMIT."""
    touch = thread_touch(dialect, write.thread_id, actor, write.at, bump=write.created)
    step = step_upsert(dialect, write)
    if dialect != "postgresql":
        return [touch, step]
    (touch_key, build_touch, touch_params), (step_key, build_step, step_params) = touch, step

    def build():
        touched = build_touch().returning(threads.c.id).cte("touched")
        return build_step().add_cte(touched)

    return [(("touch+step", touch_key, step_key), build, {**touch_params, **step_params})]


def thread_upsert(dialect: str, write: ThreadWrite, now: str) -> Prepared:
    """`update_thread`: create the thread or change what the write names. The owner is
    set once and never replaced (a session cannot take over another user's thread)."""
    named = tuple(name for name, value in (("name", write.name), ("tags", write.tags)) if value is not None)
    meta_shape, meta_params = merge_params("m", write.metadata or {}, {})
    params: dict[str, Any] = {"v_id": write.id, "v_createdAt": now, "v_updatedAt": now,
                              "v_metadata": merge_changes({}, write.metadata), "m_empty": {}, **meta_params}
    params.update({f"v_{name}": getattr(write, name) for name in named})
    if write.user_id is not None:
        params["v_userId"] = write.user_id
    key = ("thread", named, write.user_id is not None, write.metadata is not None, meta_shape)

    def build():
        values: dict[str, Any] = _values(threads, ("id", "createdAt", "updatedAt", "metadata", *named))
        if write.user_id is not None:
            owner = bindparam("v_userId", type_=threads.c.userId.type)
            values["userId"] = owner
            values["userIdentifier"] = select(users.c.identifier).where(users.c.id == owner).scalar_subquery()

        def updates(new) -> dict:
            changes: dict[str, Any] = {name: new[name] for name in named}
            if write.user_id is not None:
                changes["userIdentifier"] = func.coalesce(threads.c.userIdentifier, new.userIdentifier)
                changes["userId"] = func.coalesce(threads.c.userId, new.userId)
            if write.metadata is not None and any(meta_shape):
                changes["metadata"] = json_merge(dialect, threads.c.metadata, "m", meta_shape)
            return changes

        return upsert(dialect, threads, values, [threads.c.id], updates)

    return key, build, params


def user_upsert(dialect: str, user_id: str, identifier: str, metadata: dict, now: str) -> Prepared:
    """Every login: create the user, or refresh its metadata keeping id and createdAt."""
    params = {"v_id": user_id, "v_identifier": identifier, "v_metadata": metadata, "v_createdAt": now}

    def build():
        values = _values(users, ("id", "identifier", "metadata", "createdAt"))
        return upsert(dialect, users, values, [users.c.identifier], lambda new: {"metadata": new.metadata})

    return ("user",), build, params


def element_upsert(dialect: str, row: dict[str, Any]) -> Prepared:
    columns = tuple(sorted(k for k in row if k in ELEMENT_COLUMNS))
    extra = {k: v for k, v in row.items() if k not in ELEMENT_COLUMNS}
    params: dict[str, Any] = {f"v_{name}": row[name] for name in columns}
    params["v_extra"] = extra or None

    def build():
        values = _values(elements, columns)
        values["extra"] = bindparam("v_extra", type_=JSON(none_as_null=True))

        def updates(new) -> dict:
            changes = {name: new[name] for name in columns if name != "id"}
            changes["extra"] = new.extra
            return changes

        return upsert(dialect, elements, values, [elements.c.id], updates)

    return ("element", columns), build, params

