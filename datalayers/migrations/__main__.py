"""`python -m datalayers.migrations upgrade|current|ddl`."""

import argparse
import asyncio

from sqlalchemy.ext.asyncio import create_async_engine

from datalayers.migrations import current_revision_sync, upgrade
from settings import load_settings, redact_url


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m datalayers.migrations")
    parser.add_argument("command", choices=["upgrade", "current"])
    parser.add_argument("--url", help="database URL (default: DATABASE_URL / the embedded SQLite file)")
    args = parser.parse_args()
    from datalayers.sqlalchemy import normalize_database_url

    url = normalize_database_url(args.url or load_settings(export_secret=False).database_url)
    engine = create_async_engine(url)
    try:
        if args.command == "upgrade":
            await upgrade(engine)
        async with engine.connect() as connection:
            revision = await connection.run_sync(current_revision_sync)
        print(f"{redact_url(url)}: revision {revision}")
    finally:
        await engine.dispose()


asyncio.run(main())
