"""Session revocations: when each user's login sessions were last ended.

A login token is a signed JWT that the app cannot recall; logout, a password change and
removing a user store the time here, and a token issued before it is refused. Keyed by
the user's identifier (a removed user, or one never persisted, can still hold tokens), in
a table of its own because every login rewrites the users row.

The table is defined here, frozen as it was at this revision, and never taken from the
live schema.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_revocations",
        sa.Column("userIdentifier", sa.String(255), primary_key=True),
        # Fixed-width UTC ISO-8601 text, like every timestamp of this schema.
        sa.Column("revokedAt", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(255)),
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables")
