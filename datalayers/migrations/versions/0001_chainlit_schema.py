"""Chainlit's documented schema.

On PostgreSQL this is the DDL Chainlit documents, verbatim in meaning (UUID ids, TEXT[]
tags, TEXT timestamps), so that a fresh install travels the very same upgrade path
(0002) that an existing Chainlit database does. MySQL cannot run that DDL (TEXT cannot be
UNIQUE or a key there) and SQLite has no arrays, so those dialects get the same columns
with the portable types of `datalayers.sql_schema`.

An existing Chainlit database (tables present, no alembic_version) is stamped at this
revision by `datalayers.migrations.upgrade` instead of running it.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from datalayers.sql_schema import CHAINLIT_POSTGRES_DDL, TABLES

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CHAINLIT_COLUMNS = {
    "users": ["id", "identifier", "metadata", "createdAt"],
    "threads": ["id", "createdAt", "name", "userId", "userIdentifier", "tags", "metadata"],
    "steps": [
        "id", "name", "type", "threadId", "parentId", "disableFeedback", "streaming",
        "waitForAnswer", "isError", "metadata", "tags", "input", "output", "createdAt",
        "start", "end", "generation", "showInput", "language", "indent",
    ],
    "elements": [
        "id", "threadId", "type", "url", "chainlitKey", "name", "display", "objectKey",
        "size", "page", "language", "forId", "mime",
    ],
    "feedbacks": ["id", "forId", "threadId", "value", "comment"],
}



def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in CHAINLIT_POSTGRES_DDL:
            op.execute(statement)
        return
    for table in TABLES:
        wanted = CHAINLIT_COLUMNS[table.name]
        constraints = [
            sa.ForeignKeyConstraint(["userId"], ["users.id"], name="threads_userId_fkey", ondelete="CASCADE")
        ] if table.name == "threads" else []
        columns = [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                             unique=c.unique, server_default=c.server_default) for c in (table.c[n] for n in wanted)]
        op.create_table(table.name, *columns, *constraints, mysql_charset="utf8mb4")


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables")
