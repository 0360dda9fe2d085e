"""Alembic environment. Migrations run on a connection handed over by
`datalayers.migrations.upgrade` (the app and the tests), or, from the `alembic` CLI, on an
engine built from `DATABASE_URL`."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from datalayers.sqlalchemy.schema import metadata

config = context.config


def run_on_connection(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on_connection(connection)
        return
    from datalayers.sqlalchemy.url import normalize_database_url
    from settings import load_settings

    url = normalize_database_url(load_settings(export_secret=False).database_url)

    async def main():
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(run_on_connection)
        await engine.dispose()

    asyncio.run(main())


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the DDL of each dialect is in sql/")
run_online()
