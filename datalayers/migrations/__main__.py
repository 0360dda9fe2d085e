"""`python -m datalayers.migrations upgrade|current [--url URL]` (also
`chainlit-persist migrate`)."""

import argparse
import asyncio

from settings import load_settings


def main() -> None:
    from ops.schema_cmd import migrate_sql

    parser = argparse.ArgumentParser(prog="python -m datalayers.migrations")
    parser.add_argument("command", choices=["upgrade", "current"])
    parser.add_argument("--url", help="database URL (default: DATABASE_URL / the embedded SQLite file)")
    args = parser.parse_args()
    shown, revision = asyncio.run(migrate_sql(args.url or load_settings(export_secret=False).database_url,
                                              args.command))
    print(f"{shown}: revision {revision}")


main()
