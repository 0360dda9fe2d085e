"""`chainlit-persist migrate|provision|upgrade`: the schema of the configured database.

* `migrate [upgrade|current] [--url]`: the Alembic migrations of a SQL database
  (`datalayers/migrations`); a database Chainlit created is upgraded in place.
* `provision` / `upgrade [--url] [--template]`: create the DynamoDB table from the
  CloudFormation template, or make a table written by Chainlit's DynamoDB layer usable.

`python -m datalayers.migrations` and `python -m datalayers.dynamodb` are thin wrappers
of these.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ops.output import Output

DYNAMODB_HELPS = {
    "provision": "create the DynamoDB table from the CloudFormation template (idempotent; waits until ACTIVE)",
    "upgrade": "make a DynamoDB table written by Chainlit's layer or an earlier version of this one usable: "
               "recreate the UserThread index with the projection a sidebar page reads, count existing "
               "feedback (scans the table once)",
}


def register(subparsers) -> None:
    migrate = subparsers.add_parser("migrate", help="run the SQL schema migrations (or show the revision)")
    migrate.add_argument("action", nargs="?", choices=["upgrade", "current"], default="upgrade")
    migrate.add_argument("--url", help="database URL (default: DATABASE_URL / the embedded SQLite file)")
    migrate.set_defaults(run=run_migrate)
    for name, text in DYNAMODB_HELPS.items():
        command = subparsers.add_parser(name, help=text)
        command.add_argument("--url", default=None,
                             help="dynamodb://TABLE?region=...&endpoint_url=... (default: $DATABASE_URL)")
        command.add_argument("--template", type=Path, default=None)
        command.set_defaults(run=run_dynamodb, dynamodb_command=name)


async def migrate_sql(url: str, action: str) -> tuple[str, str | None]:
    """(redacted URL, revision after `action`)."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    from datalayers.errors import DataLayerError
    from datalayers.migrations import current_revision_sync, upgrade
    from datalayers.sqlalchemy import normalize_database_url
    from settings import redact_url

    url = normalize_database_url(url)
    engine = create_async_engine(url)
    try:
        if action == "upgrade":
            await upgrade(engine)
        async with engine.connect() as connection:
            revision = await connection.run_sync(current_revision_sync)
    except SQLAlchemyError as exc:  # unreachable, refused, not a database: the operator's to fix
        raise DataLayerError(f"migrate {action} on {redact_url(url)}: {exc}") from exc
    finally:
        await engine.dispose()
    return str(redact_url(url)), revision


async def run_migrate(args, out: Output) -> int:
    from ops.cli import cli_settings

    url = args.url or cli_settings(args).database_url
    if url.startswith("dynamodb"):
        raise ValueError("migrate is for SQL databases; a DynamoDB table is `provision`ed or `upgrade`d")
    shown, revision = await migrate_sql(url, args.action)
    out.result({"database": shown, "action": args.action, "revision": revision}, f"{shown}: revision {revision}")
    return 0


async def dynamodb_admin(command: str, url: str, template: Path | None = None) -> Any:
    import aioboto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    from datalayers.dynamodb.client import DynamoDBError, parse_dynamodb_url
    from datalayers.dynamodb.provision import TEMPLATE_PATH, provision_table, upgrade_table

    options = parse_dynamodb_url(url)
    work = provision_table if command == "provision" else upgrade_table
    try:
        async with aioboto3.Session().client(
                "dynamodb", region_name=options["region"], endpoint_url=options["endpoint_url"],
                config=Config(retries={"mode": "standard", "max_attempts": 6})) as client:
            return await work(client, str(options["table"]), template or TEMPLATE_PATH)
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable, waiter timeout
        raise DynamoDBError(f"{command} {options['table']!r}: {exc}") from exc


def dynamodb_summary(command: str, url: str, result: Any) -> tuple[dict[str, Any], str]:
    from datalayers.dynamodb.client import parse_dynamodb_url

    table = parse_dynamodb_url(url)["table"]
    if command == "provision":
        return ({"table": table, "created": bool(result), "status": "ACTIVE"},
                f"table {table}: {'created' if result else 'already exists'}; ACTIVE")
    return ({"table": table, **result},
            f"table {table}: index {'recreated' if result['index_recreated'] else 'already up to date'}; "
            f"feedback counted on {result['threads_counted']} thread(s)")


async def run_dynamodb(args, out: Output) -> int:
    url = args.url or os.environ.get("DATABASE_URL")
    if not url:
        raise ValueError("--url (or DATABASE_URL) is required")
    result = await dynamodb_admin(args.dynamodb_command, url, args.template)
    summary, text = dynamodb_summary(args.dynamodb_command, url, result)
    out.result(summary, text)
    return 0
