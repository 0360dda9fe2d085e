"""`chainlit-persist users add|list|remove|logout|hash|token ...`: the password users and
their sessions and API tokens — the same parser and code as `python -m chat.users`."""

from __future__ import annotations

import asyncio
import contextlib
import io

from ops.output import Output


def register(subparsers) -> None:
    from chat.users import add_user_commands

    users = subparsers.add_parser("users", help="password users, their sessions and API tokens",
                                  description="Manage the users file (APP_USERS_FILE) and end sessions / "
                                  "issue API tokens in the configured database.")
    add_user_commands(users.add_subparsers(dest="command", required=True, metavar="ACTION"))
    users.set_defaults(run=run)


async def run(args, out: Output) -> int:
    from chat.users import run_command

    # chat.users runs its own event loop for the database (it is also a plain script), so it
    # runs in a worker thread here, where no loop is running.
    if not out.json:
        return await asyncio.to_thread(run_command, args)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = await asyncio.to_thread(run_command, args)
    lines = printed.getvalue().splitlines()
    out.result({"command": f"users {args.command}", "exit_code": code, "output": lines})
    return code
