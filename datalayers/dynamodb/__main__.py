"""`python -m datalayers.dynamodb provision|upgrade --url dynamodb://TABLE?region=...`:
create the table from the CloudFormation template, or make a table written by Chainlit's
DynamoDB layer (or by an earlier version of this one) serve this layer. The same as
`chainlit-persist provision|upgrade`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from datalayers.dynamodb.provision import TEMPLATE_PATH
from datalayers.errors import DataLayerError


def main(argv: list[str] | None = None) -> int:
    from ops.schema_cmd import DYNAMODB_HELPS, dynamodb_admin, dynamodb_summary

    parser = argparse.ArgumentParser(prog="python -m datalayers.dynamodb",
                                     description="Provision or upgrade the table of the DynamoDB data layer.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in DYNAMODB_HELPS.items():
        command = commands.add_parser(name, help=text)
        command.add_argument("--url", default=os.environ.get("DATABASE_URL"),
                             help="dynamodb://TABLE?region=...&endpoint_url=... (default: $DATABASE_URL)")
        command.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url (or DATABASE_URL) is required")
    try:
        result = asyncio.run(dynamodb_admin(args.command, args.url, args.template))
    except (ValueError, DataLayerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(dynamodb_summary(args.command, args.url, result)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
