"""`purge` (retention) and `hold` (legal hold) of `chainlit-persist`."""

from __future__ import annotations

import argparse
from typing import Any

from ops.output import Output

from .retention import LEGAL_HOLD_TAG, cutoff_for, is_held, parse_age, purge, summary_line


def _age(text: str):
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "purge", help="delete threads inactive for longer than a window (not those under legal hold)",
        description="Delete the threads whose last activity is older than --older-than, with their steps, "
                    f"ratings, elements, blobs, search digests and knowledge chunks. Threads tagged {LEGAL_HOLD_TAG!r} "
                    "are kept (see `hold`). --dry-run counts what would go and changes nothing.")
    parser.add_argument("--older-than", required=True, type=_age, metavar="AGE",
                        help="36h, 90d, 12w, 6m (30-day months) or 1y (365 days)")
    parser.add_argument("--user", metavar="NAME", help="only this user's threads (their identifier)")
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    parser.set_defaults(run=run_purge)

    hold = subparsers.add_parser(
        "hold", help=f"put threads under legal hold (the {LEGAL_HOLD_TAG!r} tag) or release them",
        description=f"Tag threads {LEGAL_HOLD_TAG!r}: purge and the app's scheduled retention never delete them, "
                    "and erase-user keeps them unless --override-hold. --release removes the tag.")
    hold.add_argument("thread_ids", nargs="+", metavar="THREAD_ID")
    hold.add_argument("--release", action="store_true", help="remove the hold")
    hold.set_defaults(run=run_hold)


async def run_purge(args: argparse.Namespace, out: Output) -> int:
    from ops.cli import cli_settings

    from .stale import count_threads
    from .stores import open_stores

    settings = cli_settings(args)
    async with open_stores(settings, knowledge=True) as stores:
        total = await count_threads(stores.layer, inactive_before=cutoff_for(args.older_than), owner=args.user)
        label = "counting" if args.dry_run else "purging"
        with out.progress(f"{label} threads", total) as advance:
            report = await purge(stores.layer, older_than=args.older_than, user=args.user, dry_run=args.dry_run,
                                 knowledge=stores.knowledge, progress=advance)
        report.not_finished = await stores.finish()
    if report.not_finished:
        out.info(f"{report.not_finished} blob delete(s) could not be done: the rows are gone, the files are "
                 "orphans now; `chainlit-persist sweep --fix` removes them")
    for error in report.errors:
        out.info(f"failed: {error}")
    out.result(report.as_dict(), summary_line(report))
    return 0 if report.ok else 1


async def run_hold(args: argparse.Namespace, out: Output) -> int:
    from ops.cli import cli_settings

    from .stores import open_stores

    changed: list[str] = []
    unchanged: list[str] = []
    missing: list[str] = []
    async with open_stores(cli_settings(args)) as stores:
        layer: Any = stores.layer
        for thread_id in args.thread_ids:
            thread = await layer.get_thread(thread_id)
            if thread is None:
                missing.append(thread_id)
                continue
            tags = [str(t) for t in thread.get("tags") or []]
            if is_held(tags) != bool(args.release):
                unchanged.append(thread_id)
                continue
            if args.release:
                tags = [t for t in tags if t.lower() != LEGAL_HOLD_TAG]
            else:
                tags.append(LEGAL_HOLD_TAG)
            await layer.update_thread(thread_id, tags=tags)
            changed.append(thread_id)
        not_done = await stores.finish()
    verb = "released" if args.release else "held"
    summary = {verb: changed, "already": unchanged, "not_found": missing, "not_saved": not_done}
    text = f"{verb}: {len(changed)}, already {verb}: {len(unchanged)}, not found: {', '.join(missing) or 'none'}"
    out.result(summary, text)
    return 1 if missing or not_done else 0
