"""API tokens on SQL (the `api_tokens` table): one INSERT to create (the primary key refuses
a duplicate id), one primary-key lookup per authentication, one indexed query for a user's
list, one conditional UPDATE per recorded use. Mixed into `SQLAlchemyDataLayer`.

Under MySQL/MariaDB's default collation `'alice' = 'ALICE'` and `'alice' = 'alice '` hold,
so the deletes read the candidate rows first (in the same transaction) and delete only
those whose owner is exactly the caller: one user can never delete another's token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import api_tokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class SQLApiTokens:
    """The data layer's `_create_api_token` … `_touch_api_token` on SQL."""

    dialect: str
    if TYPE_CHECKING:
        _run: Callable[..., Awaitable[Any]]

    @property
    def _one_statement(self) -> bool:
        """A single statement needs no BEGIN/COMMIT round trips, where the driver can skip
        them (SQLite's connections always open a transaction)."""
        return self.dialect != "sqlite"

    async def _create_api_token(self, row: dict[str, str | None]) -> None:
        async def work(conn: AsyncConnection):
            await conn.execute(api_tokens.insert().values(**row))

        await self._run("create_api_token", work, autocommit=self._one_statement, token_id=row["id"])

    async def _get_api_token(self, token_id: str) -> dict[str, Any] | None:
        query = select(api_tokens).where(api_tokens.c.id == token_id)

        async def work(conn: AsyncConnection):
            row = (await conn.execute(query)).first()
            return dict(row._mapping) if row else None

        return await self._run("get_api_token", work, autocommit=self._one_statement, token_id=token_id)

    async def _list_api_tokens(self, identifier: str) -> list[dict[str, Any]]:
        query = (select(api_tokens).where(api_tokens.c.userIdentifier == identifier)
                 .order_by(api_tokens.c.createdAt.desc(), api_tokens.c.id.desc()))

        async def work(conn: AsyncConnection):
            return [dict(row._mapping) for row in await conn.execute(query)]

        return await self._run("list_api_tokens", work, identifier=identifier)

    async def _delete_owned(self, operation: str, identifier: str, token_id: str | None) -> int:
        """Delete `identifier`'s tokens (all, or the one with `token_id`); how many went."""
        query = select(api_tokens.c.id, api_tokens.c.userIdentifier).where(api_tokens.c.userIdentifier == identifier)
        if token_id is not None:
            query = query.where(api_tokens.c.id == token_id)

        async def work(conn: AsyncConnection):
            owned = [row.id for row in await conn.execute(query) if row.userIdentifier == identifier
                     and (token_id is None or row.id == token_id)]
            if not owned:
                return 0
            result = await conn.execute(delete(api_tokens).where(api_tokens.c.id.in_(owned),
                                                                 api_tokens.c.userIdentifier == identifier))
            return result.rowcount

        return await self._run(operation, work, identifier=identifier, token_id=token_id)

    async def _delete_api_token(self, identifier: str, token_id: str) -> bool:
        return await self._delete_owned("delete_api_token", identifier, token_id) > 0

    async def _delete_api_tokens(self, identifier: str) -> int:
        return await self._delete_owned("delete_api_tokens", identifier, None)

    async def _touch_api_token(self, token_id: str, used_at: str) -> None:
        # Timestamps are fixed-width UTC text: they compare as time. A later use recorded
        # by another instance (or a clock ahead of ours) stands.
        statement = (update(api_tokens).where(api_tokens.c.id == token_id)
                     .where(or_(api_tokens.c.lastUsedAt.is_(None), api_tokens.c.lastUsedAt < used_at))
                     .values(lastUsedAt=used_at))

        async def work(conn: AsyncConnection):
            await conn.execute(statement)

        await self._run("touch_api_token", work, autocommit=self._one_statement, token_id=token_id)
