"""Upgrade Chainlit's documented schema to this project's (see datalayers/sql_schema.py).

Works on a database that Chainlit created and already holds rows: nothing is dropped and
every value is carried over. On PostgreSQL the UUID id columns become VARCHAR (a bad id in
a request must mean "not found", not a type error), TEXT[] tags become JSONB; everywhere the
columns Chainlit 2.12 writes but its DDL lacks are added (`command`, `modes`, `defaultOpen`,
`autoCollapse`, `props`), plus `threads.updatedAt` and the `extra` columns; timestamps are
rewritten as fixed-width UTC text; the indexes of every access path are created.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from datalayers.shared import normalize_timestamp
from datalayers.sql_schema import TABLES, steps, threads, users

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP_COLUMNS = {"users": ["createdAt"], "threads": ["createdAt"], "steps": ["createdAt", "start", "end"]}
BATCH = 1000


def _convert_postgres_types(bind, inspector) -> None:
    """UUID -> VARCHAR, TEXT[] -> JSONB, TEXT -> VARCHAR where the target is a String."""
    foreign_keys = [(fk["name"], fk) for fk in inspector.get_foreign_keys("threads") if fk.get("name")]
    for name, _ in foreign_keys:
        op.drop_constraint(name, "threads", type_="foreignkey")
    for table in TABLES:
        reflected = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            current = reflected.get(column.name)
            if current is None:
                continue
            target = column.type
            current_sql = current.compile(dialect=bind.dialect)
            target_sql = target.compile(dialect=bind.dialect)  # honours with_variant()
            if current_sql == target_sql:
                continue
            if isinstance(current, sa.ARRAY):
                using = f'to_jsonb("{column.name}")'
            elif target_sql == "JSONB":
                using = f'"{column.name}"::jsonb'
            else:
                using = f'"{column.name}"::text'
            op.alter_column(table.name, column.name, type_=target, postgresql_using=using)
    op.create_foreign_key(
        "threads_userId_fkey", "threads", "users", ["userId"], ["id"], ondelete="CASCADE"
    )


def _add_missing_columns(inspector) -> None:
    for table in TABLES:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                op.add_column(table.name, column._copy())


def _normalize_timestamps(bind) -> None:
    """Rewrite stored timestamps as fixed-width UTC, in batches (keyset on id)."""
    tables = {t.name: t for t in TABLES}
    for name, columns in TIMESTAMP_COLUMNS.items():
        table = tables[name]
        last_id = None
        while True:
            query = sa.select(table.c.id, *[table.c[c] for c in columns]).order_by(table.c.id).limit(BATCH)
            if last_id is not None:
                query = query.where(table.c.id > last_id)
            rows = bind.execute(query).all()
            if not rows:
                break
            for row in rows:
                changes = {}
                for column in columns:
                    value = row._mapping[column]
                    try:
                        normalized = normalize_timestamp(value)
                    except ValueError:
                        continue  # keep an unparseable legacy value rather than lose it
                    if normalized != value:
                        changes[column] = normalized
                if changes:
                    bind.execute(sa.update(table).where(table.c.id == row.id).values(**changes))
            last_id = rows[-1].id


def _backfill_updated_at(bind) -> None:
    latest_step = (
        sa.select(sa.func.max(steps.c.createdAt)).where(steps.c.threadId == threads.c.id).scalar_subquery()
    )
    bind.execute(
        sa.update(threads)
        .where(threads.c.updatedAt.is_(None))
        .values(updatedAt=sa.func.coalesce(latest_step, threads.c.createdAt))
    )
    bind.execute(sa.update(users).where(users.c.metadata.is_(None)).values(metadata={}))


def _create_indexes(inspector) -> None:
    for table in TABLES:
        existing = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in existing:
                op.create_index(index.name, table.name, [c.name for c in index.columns])


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _convert_postgres_types(bind, sa.inspect(bind))
    _add_missing_columns(sa.inspect(bind))
    _normalize_timestamps(bind)
    _backfill_updated_at(bind)
    _create_indexes(sa.inspect(bind))


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables or columns")
