"""`doctor`: check the configuration end to end and say what to fix (`ops/doctor.py`)."""

from __future__ import annotations

import argparse

from ops.output import Output

from .doctor import DEFAULT_TIMEOUT, FAILED, as_dict, run_checks


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check settings, database, storage, model endpoint and write journal; say what to fix",
        description="Check the configuration end to end: settings parse, database reachable and migrated, storage "
                    "writable and signing, the model endpoint answering, the write journal empty. Changes nothing "
                    "(a probe object under doctor/ is written and deleted). Exit code 1 if a check failed.")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="the longest wait for each service (default %(default)g)")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, out: Output) -> int:
    from ops.cli import cli_settings

    checks = await run_checks(args.timeout, load=lambda: cli_settings(args))
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<7} {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"{'':<7} {'':<{width}}  fix: {check.fix}")
    failed = [c.name for c in checks if c.status == FAILED]
    lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed")
    out.result(as_dict(checks), "\n".join(lines))
    return 1 if failed else 0
