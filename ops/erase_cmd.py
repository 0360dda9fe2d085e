"""`erase-user NAME`: erase everything of one person, with a receipt (`ops/erase.py`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from ops.output import Output

from .erase import audit, erase_user, log_receipt, receipt_text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "erase-user", help="erase one user: threads, blobs, knowledge chunks, API tokens, sessions, the user",
        description="Erase everything stored about one user and print a receipt (counts per kind and the times; "
                    "logged at INFO under chainlit.Audit). Threads under legal hold are kept, with the user record, "
                    "unless --override-hold. Asks for the name again on a terminal; without one, --yes is required.")
    parser.add_argument("name", metavar="NAME", help="the user's identifier")
    parser.add_argument("--dry-run", action="store_true", help="count what would be erased, change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--override-hold", action="store_true", help="erase threads under legal hold too")
    parser.add_argument("--receipt", type=Path, metavar="PATH", help="also write the receipt to PATH as JSON")
    parser.set_defaults(run=run)


async def _confirmed(args: argparse.Namespace, out: Output) -> bool:
    if args.yes or args.dry_run:
        return True
    # Never wait for an answer nobody can give (CI, cron, a pipe, --json for a script).
    if out.json or not sys.stdin.isatty():
        raise ValueError(f"refusing to erase {args.name!r} without confirmation: pass --yes "
                         "(no terminal to ask on)")
    print(f"This erases every thread, file, token and the account of {args.name!r}. "
          "Type the name again to go on: ", end="", file=sys.stderr, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    return answer.strip() == args.name


async def run(args: argparse.Namespace, out: Output) -> int:
    from chat.users import UserStore
    from ops.cli import cli_settings

    from .stores import open_stores

    if not await _confirmed(args, out):
        out.info("not confirmed: nothing erased")
        return 1
    settings = cli_settings(args)
    async with open_stores(settings, knowledge=True) as stores:
        with out.progress(f"erasing {args.name}" if not args.dry_run else f"counting {args.name}") as advance:
            receipt = await erase_user(stores.layer, args.name, user_store=UserStore.from_env(settings.data_dir),
                                       knowledge=stores.knowledge, dry_run=args.dry_run,
                                       override_hold=args.override_hold, progress=advance)
        receipt.not_finished = await stores.finish()
    if not receipt.dry_run:
        # The audit trail is kept whatever -v says (the CLI logs only warnings by default).
        if not audit.level:
            audit.setLevel(logging.INFO)
        log_receipt(receipt)
    if args.receipt is not None:
        args.receipt.write_text(json.dumps(receipt.as_dict(), indent=2) + "\n", encoding="utf-8")
    if not receipt.found:
        out.info(f"nothing stored for {args.name!r}: no threads, files, tokens or account")
    out.result(receipt.as_dict(), receipt_text(receipt))
    return 1 if receipt.not_finished else 0
