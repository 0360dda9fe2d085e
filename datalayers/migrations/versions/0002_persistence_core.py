"""Upgrade Chainlit's documented schema to this project's.

Works on a database that Chainlit created and already holds rows: nothing is dropped and
every value is carried over. On PostgreSQL the UUID id columns become VARCHAR (a bad id in
a request must mean "not found", not a type error), TEXT[] tags become JSONB; everywhere the
columns Chainlit 2.12 writes but its DDL lacks are added (`command`, `modes`, `defaultOpen`,
`autoCollapse`, `props`), plus `threads.updatedAt` and the `extra` columns; timestamps are
rewritten as fixed-width UTC text; the indexes of every access path are created.

The target tables and the timestamp normaliser are defined here, frozen as they were at
this revision, and never taken from the live schema: this revision creates "every column
that is missing", so reading the live tables would make it create the columns of later
revisions too, and their own add_column would then fail on a fresh database.

Revision ID: 0002
Revises: 0001
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.String(255)
TIMESTAMP = sa.String(32)
SHORT = sa.String(255)
# MySQL's TEXT holds only 64 KB; a long LLM answer must not fail the insert.
LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_metadata = sa.MetaData()


def _table(name: str, *items) -> sa.Table:
    # utf8mb4 on MySQL whatever the server default: emoji and every script must fit.
    return sa.Table(name, _metadata, *items, mysql_charset="utf8mb4")


users = _table(
    "users",
    sa.Column("id", ID, primary_key=True),
    sa.Column("identifier", SHORT, nullable=False, unique=True),
    sa.Column("metadata", JSON_DOC, nullable=False),
    sa.Column("createdAt", TIMESTAMP),
)

threads = _table(
    "threads",
    sa.Column("id", ID, primary_key=True),
    sa.Column("createdAt", TIMESTAMP),
    sa.Column("updatedAt", TIMESTAMP),
    sa.Column("name", LONG_TEXT),
    sa.Column("userId", ID, sa.ForeignKey("users.id", ondelete="CASCADE", name="threads_userId_fkey")),
    sa.Column("userIdentifier", SHORT),
    sa.Column("tags", JSON_DOC),
    sa.Column("metadata", JSON_DOC),
    sa.Index("ix_threads_user_updated", "userId", "updatedAt", "id"),
)

steps = _table(
    "steps",
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", LONG_TEXT, nullable=False),
    sa.Column("type", SHORT, nullable=False),
    sa.Column("threadId", ID, nullable=False),
    sa.Column("parentId", ID),
    sa.Column("disableFeedback", sa.Boolean, nullable=False, default=False),
    sa.Column("streaming", sa.Boolean, nullable=False),
    sa.Column("waitForAnswer", sa.Boolean),
    sa.Column("isError", sa.Boolean),
    sa.Column("metadata", JSON_DOC),
    sa.Column("tags", JSON_DOC),
    sa.Column("input", LONG_TEXT),
    sa.Column("output", LONG_TEXT),
    sa.Column("createdAt", TIMESTAMP),
    sa.Column("start", TIMESTAMP),
    sa.Column("end", TIMESTAMP),
    sa.Column("generation", JSON_DOC),
    sa.Column("showInput", SHORT),
    sa.Column("language", SHORT),
    sa.Column("indent", sa.Integer),
    sa.Column("command", SHORT),
    sa.Column("modes", JSON_DOC),
    sa.Column("defaultOpen", sa.Boolean),
    sa.Column("autoCollapse", sa.Boolean),
    sa.Column("extra", JSON_DOC),
    sa.Index("ix_steps_thread_created", "threadId", "createdAt"),
)

elements = _table(
    "elements",
    sa.Column("id", ID, primary_key=True),
    sa.Column("threadId", ID),
    sa.Column("type", SHORT),
    sa.Column("url", LONG_TEXT),
    sa.Column("chainlitKey", SHORT),
    sa.Column("name", LONG_TEXT, nullable=False),
    sa.Column("display", SHORT),
    sa.Column("objectKey", LONG_TEXT),
    sa.Column("size", SHORT),
    sa.Column("page", sa.Integer),
    sa.Column("language", SHORT),
    sa.Column("forId", ID),
    sa.Column("mime", SHORT),
    sa.Column("props", JSON_DOC),
    sa.Column("extra", JSON_DOC),
    sa.Index("ix_elements_thread", "threadId"),
    sa.Index("ix_elements_for", "forId"),
)

feedbacks = _table(
    "feedbacks",
    sa.Column("id", ID, primary_key=True),
    sa.Column("forId", ID, nullable=False),
    sa.Column("threadId", ID, nullable=False),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("comment", LONG_TEXT),
    sa.Index("ix_feedbacks_for", "forId"),
    sa.Index("ix_feedbacks_thread_value", "threadId", "value"),
)

TABLES = (users, threads, steps, elements, feedbacks)


def _format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _normalize_timestamp(value):
    """Any ISO-8601 timestamp (or datetime, or epoch seconds) as fixed-width UTC text;
    naive values are taken as UTC. Raises ValueError for anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _format_timestamp(value)
    if isinstance(value, (int, float)):
        return _format_timestamp(datetime.fromtimestamp(value, UTC))
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {text[:64]!r}") from None
    return _format_timestamp(parsed)


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
                        normalized = _normalize_timestamp(value)
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
        # By name: Table.indexes is a set, and a fixed order gives the same DDL every run.
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
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
