"""PostgreSQL: trigram indexes for the sidebar search.

`lower(text) LIKE '%term%'` cannot use a B-tree, so without these a search reads every
message of the user. pg_trgm's GIN indexes answer it from the index, which keeps the
search page flat as history grows. pg_trgm ships with PostgreSQL (contrib) and is a
trusted extension since PostgreSQL 13; where it cannot be created, search still works
(same results) but scans, and a warning says so. Other dialects: nothing to do.

Revision ID: 0003
Revises: 0002
"""

import logging

from alembic import op

from datalayers.sql_schema import POSTGRES_SEARCH_INDEXES

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("chainlit").getChild("SQLAlchemy")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    savepoint = bind.begin_nested()
    try:
        bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for statement in POSTGRES_SEARCH_INDEXES.values():
            bind.exec_driver_sql(statement)
        savepoint.commit()
    except Exception as exc:  # a missing extension degrades speed, never data or results
        savepoint.rollback()
        log.warning("pg_trgm unavailable, thread search will scan messages: %s", exc)


def downgrade() -> None:
    raise NotImplementedError("this project never drops schema objects")
