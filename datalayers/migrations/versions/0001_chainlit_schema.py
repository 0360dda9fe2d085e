"""Chainlit's documented schema.

On PostgreSQL this is the DDL Chainlit documents, verbatim in meaning (UUID ids, TEXT[]
tags, TEXT timestamps), so that a fresh install travels the very same upgrade path
(0002) that an existing Chainlit database does. MySQL cannot run that DDL (TEXT cannot be
UNIQUE or a key there) and SQLite has no arrays, so those dialects get the same columns
with portable types (VARCHAR ids, JSON, LONGTEXT on MySQL).

The tables are defined here, frozen as they were at this revision, and never taken from
the live schema: a revision must create the same thing forever, whatever later revisions
add to the live tables.

An existing Chainlit database (tables present, no alembic_version) is stamped at this
revision by `datalayers.migrations.upgrade` instead of running it.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from datalayers.migrations.chainlit_reference import CHAINLIT_POSTGRES_DDL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(255)
TIMESTAMP = sa.String(32)
SHORT = sa.String(255)
# MySQL's TEXT holds only 64 KB; a long LLM answer must not fail the insert.
LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_metadata = sa.MetaData()

# Chainlit's documented columns, in its order, with the portable types above.
TABLES = (
    sa.Table(
        "users", _metadata,
        sa.Column("id", ID, primary_key=True),
        sa.Column("identifier", SHORT, nullable=False, unique=True),
        sa.Column("metadata", JSON_DOC, nullable=False),
        sa.Column("createdAt", TIMESTAMP),
    ),
    sa.Table(
        "threads", _metadata,
        sa.Column("id", ID, primary_key=True),
        sa.Column("createdAt", TIMESTAMP),
        sa.Column("name", LONG_TEXT),
        sa.Column("userId", ID),
        sa.Column("userIdentifier", SHORT),
        sa.Column("tags", JSON_DOC),
        sa.Column("metadata", JSON_DOC),
    ),
    sa.Table(
        "steps", _metadata,
        sa.Column("id", ID, primary_key=True),
        sa.Column("name", LONG_TEXT, nullable=False),
        sa.Column("type", SHORT, nullable=False),
        sa.Column("threadId", ID, nullable=False),
        sa.Column("parentId", ID),
        sa.Column("disableFeedback", sa.Boolean, nullable=False),
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
    ),
    sa.Table(
        "elements", _metadata,
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
    ),
    sa.Table(
        "feedbacks", _metadata,
        sa.Column("id", ID, primary_key=True),
        sa.Column("forId", ID, nullable=False),
        sa.Column("threadId", ID, nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("comment", LONG_TEXT),
    ),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in CHAINLIT_POSTGRES_DDL:
            op.execute(statement)
        return
    for table in TABLES:
        constraints = [
            sa.ForeignKeyConstraint(["userId"], ["users.id"], name="threads_userId_fkey", ondelete="CASCADE")
        ] if table.name == "threads" else []
        # Fresh Column objects: a Column belongs to one Table, and op.create_table builds its own.
        columns = [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                             unique=c.unique, server_default=c.server_default) for c in table.columns]
        op.create_table(table.name, *columns, *constraints, mysql_charset="utf8mb4")


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables")
