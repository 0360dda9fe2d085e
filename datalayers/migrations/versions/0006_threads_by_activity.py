"""Threads by last activity across all users: the retention job (`chainlit-persist purge`
and `APP_RETENTION_DAYS`) lists the threads inactive since a cutoff, oldest first, keyset-
paged on (updatedAt, id). The sidebar's index starts with userId, so without this one
that listing would read the whole table.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_threads_updated", "threads", ["updatedAt", "id"])


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables")
