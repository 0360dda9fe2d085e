"""Schema migrations (Alembic), runnable from code and from the command line.

    python -m datalayers.migrations upgrade      # DATABASE_URL from the environment / .env
    python -m datalayers.migrations current

A database that Chainlit created from its documented DDL (tables present, no
`alembic_version`) is stamped at revision 0001 and upgraded in place.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

SCRIPT_LOCATION = str(Path(__file__).parent)
HEAD = "head"


def _config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def upgrade_sync(connection, revision: str = HEAD) -> None:
    from alembic import command

    config = _config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "threads" in tables:
        command.stamp(config, "0001")
    command.upgrade(config, revision)


def current_revision_sync(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine, revision: str = HEAD) -> None:
    """Bring the database behind `engine` (an AsyncEngine) to `revision`."""
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_sync, revision)
