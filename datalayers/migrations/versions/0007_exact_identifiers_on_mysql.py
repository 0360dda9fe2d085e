"""Exact identifiers on MySQL/MariaDB: every table gets a binary, no-pad collation.

Their default collations compare text case-insensitively and ignore trailing spaces, so
`'Alice' = 'alice'` and `'alice ' = 'alice'` held in every lookup and unique index: a second
person whose user name differed from the first's only in case (user names are case-
sensitive, and so are OAuth and proxy identities) logged in as the first and saw their
conversations, and ids differing only in case were one row. SQLite, PostgreSQL and DynamoDB
compare exactly; now MySQL/MariaDB do too:

* MariaDB: `utf8mb4_nopad_bin`;
* MySQL 8: `utf8mb4_0900_bin` (no pad);
* MySQL 5.7, which has no binary no-pad collation: `utf8mb4_bin` (case-exact; trailing
  spaces are still ignored there).

Search stays case-insensitive: it compares lower() of the text with lower() of the term.
Users merged before this revision (a login as 'Alice' that found 'alice') stay one user:
nothing in the rows tells them apart. Tables added by later revisions must be created
with the same collation (`exact_collation`).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The tables at this revision (frozen: never taken from the live schema).
TABLES = ("users", "threads", "steps", "elements", "feedbacks", "session_revocations", "api_tokens")


def exact_collation(bind) -> str:
    """The binary collation of utf8mb4 on this server, without padding where it has one."""
    version = str(bind.execute(sa.text("SELECT VERSION()")).scalar() or "")
    available = {row[0] for row in bind.execute(sa.text("SHOW COLLATION WHERE Charset = 'utf8mb4'"))}
    preferred = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin") if "mariadb" in version.lower() else ("utf8mb4_0900_bin",)
    return next((name for name in preferred if name in available), "utf8mb4_bin")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "mysql":
        return
    collation = exact_collation(bind)
    inspector = sa.inspect(bind)
    present = [table for table in TABLES if table in set(inspector.get_table_names())]
    # A foreign key joins two columns that must share a collation, and MariaDB refuses to
    # change a column a key uses (even with the checks off): the keys are dropped, the
    # tables converted, and the same keys created again.
    keys = [(table, key) for table in present for key in inspector.get_foreign_keys(table)]
    for table, key in keys:
        op.drop_constraint(str(key["name"]), table, type_="foreignkey")  # MySQL names every key
    for table in present:
        op.execute(f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}")
    for table, key in keys:
        options = key.get("options") or {}
        op.create_foreign_key(str(key["name"]), table, key["referred_table"], key["constrained_columns"],
                              key["referred_columns"], ondelete=options.get("ondelete"), onupdate=options.get("onupdate"))


def downgrade() -> None:
    raise NotImplementedError("this project never drops tables")
