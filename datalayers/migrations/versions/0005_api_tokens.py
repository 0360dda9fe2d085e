"""API tokens: personal tokens for the HTTP API, stored only as SHA-256 hashes.

The plaintext (`clp_<id>_<secret>`) is shown to the user once; the row keeps its public id
(the primary key: one lookup per API request), its owner's identifier (a user known only
from the users file, or from a login, can hold tokens), the user's label, the hash and the
times. Listed per user, newest first, through the `(userIdentifier, createdAt)` index.

The table is defined here, frozen as it was at this revision, and never taken from the
live schema.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("userIdentifier", sa.String(255), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        # Hex SHA-256 of the whole plaintext token.
        sa.Column("tokenHash", sa.String(64), nullable=False),
        # Fixed-width UTC ISO-8601 text, like every timestamp of this schema.
        sa.Column("createdAt", sa.String(32), nullable=False),
        sa.Column("expiresAt", sa.String(32)),
        sa.Column("lastUsedAt", sa.String(32)),
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_api_tokens_user_created", "api_tokens", ["userIdentifier", "createdAt"])


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables")
