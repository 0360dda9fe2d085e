"""PostgreSQL: trigram indexes for the sidebar search.

`lower(text) LIKE '%term%'` cannot use a B-tree, so without these a search reads every
message of the user. pg_trgm's GIN indexes answer it from the index, which keeps the
search page flat as history grows. pg_trgm ships with PostgreSQL (contrib) and is a
trusted extension since PostgreSQL 13; where it cannot be created, search still works
(same results) but scans, and a warning says so. Other dialects: nothing to do.

The index statements are frozen here rather than taken from the live schema, so that this
revision does the same thing forever.

Revision ID: 0003
Revises: 0002
"""

import logging

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Not partial on message types: with bound parameters the planner cannot prove a partial
# predicate and scans.
POSTGRES_SEARCH_INDEXES = {
    "ix_steps_output_trgm": (
        'CREATE INDEX IF NOT EXISTS ix_steps_output_trgm ON steps USING gin (lower("output") gin_trgm_ops)'
    ),
    "ix_threads_name_trgm": (
        'CREATE INDEX IF NOT EXISTS ix_threads_name_trgm ON threads USING gin (lower("name") gin_trgm_ops)'
    ),
}

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
