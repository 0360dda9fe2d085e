"""`python -m datalayers.dynamodb provision|upgrade --url dynamodb://TABLE?region=...`:
create the table from the CloudFormation template, or make a table written by Chainlit's
DynamoDB layer (or by an earlier version of this one) serve this layer."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from datalayers.dynamodb.client import DynamoDBError, parse_dynamodb_url
from datalayers.dynamodb.provision import TEMPLATE_PATH, provision_table, upgrade_table
from datalayers.errors import DataLayerError


async def _admin_command(command: str, url: str, template: Path):
    options = parse_dynamodb_url(url)
    session = aioboto3.Session()
    work = provision_table if command == "provision" else upgrade_table
    try:
        async with session.client("dynamodb", region_name=options["region"], endpoint_url=options["endpoint_url"],
                                  config=Config(retries={"mode": "standard", "max_attempts": 6})) as client:
            return await work(client, str(options["table"]), template)
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable, waiter timeout
        raise DynamoDBError(f"{command} {options['table']!r}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datalayers.dynamodb",
                                     description="Provision or upgrade the table of the DynamoDB data layer.")
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "provision": "create the table from the CloudFormation template (idempotent; waits until ACTIVE)",
        "upgrade": "make a table written by Chainlit's DynamoDB layer or an earlier version of this one usable: "
                   "recreate the UserThread index with the projection a sidebar page reads, count existing "
                   "feedback (scans the table once)",
    }
    for name, text in helps.items():
        command = commands.add_parser(name, help=text)
        command.add_argument("--url", default=os.environ.get("DATABASE_URL"),
                             help="dynamodb://TABLE?region=...&endpoint_url=... (default: $DATABASE_URL)")
        command.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url (or DATABASE_URL) is required")
    try:
        result = asyncio.run(_admin_command(args.command, args.url, args.template))
    except (ValueError, DataLayerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = parse_dynamodb_url(args.url)["table"]
    if args.command == "provision":
        print(f"table {table}: {'created' if result else 'already exists'}; ACTIVE")
    else:
        print(f"table {table}: index {'recreated' if result['index_recreated'] else 'already up to date'}; "
              f"feedback counted on {result['threads_counted']} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
