"""Session revocation on SQL (the `session_revocations` table): when each user's login
sessions were last ended. One single-statement upsert to write, one primary-key lookup to
read; mixed into `SQLAlchemyDataLayer`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import case, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import session_revocations

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def revocation_upsert(dialect: str, identifier: str, revoked_at: str, reason: str):
    """Insert the time, or keep the later of the stored and the new one (clocks of app
    instances and the CLI differ a little; a revocation never moves back). Timestamps are
    fixed-width UTC text, so they compare as time."""
    table = session_revocations
    values = {"userIdentifier": identifier, "revokedAt": revoked_at, "reason": reason or None}
    if dialect in ("postgresql", "sqlite"):
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(**values)
        later = insert.excluded.revokedAt > table.c.revokedAt
        return insert.on_conflict_do_update(
            index_elements=[table.c.userIdentifier],
            set_={"revokedAt": case((later, insert.excluded.revokedAt), else_=table.c.revokedAt),
                  "reason": case((later, insert.excluded.reason), else_=table.c.reason)})
    on_mysql = mysql.insert(table).values(**values)
    later = on_mysql.inserted.revokedAt > table.c.revokedAt
    # MySQL applies the assignments in order, each seeing the ones before: `reason` is
    # decided while `revokedAt` still holds the stored time.
    return on_mysql.on_duplicate_key_update([
        ("reason", case((later, on_mysql.inserted.reason), else_=table.c.reason)),
        ("revokedAt", case((later, on_mysql.inserted.revokedAt), else_=table.c.revokedAt)),
    ])


class SQLSessionRevocations:
    """The data layer's `_revoke_sessions` / `_sessions_revoked_at` on SQL."""

    dialect: str
    if TYPE_CHECKING:
        _run: Callable[..., Awaitable[Any]]

    async def _revoke_sessions(self, identifier: str, revoked_at: str, reason: str) -> None:
        async def work(conn: AsyncConnection):
            await conn.execute(revocation_upsert(self.dialect, identifier, revoked_at, reason))

        await self._run("revoke_sessions", work, identifier=identifier)

    async def _sessions_revoked_at(self, identifier: str) -> str | None:
        query = select(session_revocations.c.revokedAt).where(session_revocations.c.userIdentifier == identifier)

        async def work(conn: AsyncConnection):
            return (await conn.execute(query)).scalar()

        # Checked on every authenticated request: no BEGIN/COMMIT round trips where the
        # driver can skip them (SQLite's connections always open a transaction here).
        return await self._run("sessions_revoked_at", work, autocommit=self.dialect != "sqlite",
                               identifier=identifier)
