"""`sweep [--fix]`: blobs no element points to, and elements whose blob is missing
(`ops/sweep.py`)."""

from __future__ import annotations

import argparse

from ops.output import Output

from .sweep import DEFAULT_GRACE_SECONDS, SweepReport, sweep


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the grace period cannot be negative")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="find blobs no element points to and elements whose blob is missing; --fix removes orphans",
        description="Compare every key in storage with every key the database points at. Reports orphan blobs and "
                    "elements whose blob is missing; --fix deletes orphans older than the grace period (an upload "
                    "in flight writes its blob before its row). Missing blobs are reported, never deleted. Exit "
                    "code 1 while something is left to fix.")
    parser.add_argument("--fix", action="store_true", help="delete orphan blobs older than the grace period")
    parser.add_argument("--grace-minutes", type=_minutes, default=DEFAULT_GRACE_SECONDS / 60, metavar="N",
                        help="leave orphans younger than this alone (default %(default)g)")
    parser.set_defaults(run=run)


def summary_text(report: SweepReport) -> str:
    lines = [f"{report.blobs} blob(s) in storage, {report.references} referenced; "
             f"{report.orphans} orphan(s) ({report.orphans_in_grace} younger than {report.grace_seconds / 60:g} min, "
             f"left alone), {report.removed} removed; {report.missing} element(s) with a missing blob"
             + (f", {report.missing_large} large attribute(s) with a missing blob" if report.missing_large else "")]
    if report.orphans and not report.fix:
        lines += [f"  orphan {key}" for key in report.orphan_examples[:20]]
        lines.append("  run with --fix to delete the orphans older than the grace period")
    for item in report.missing_examples[:20]:
        what = f"element {item['element']}" if item["element"] else "large attribute"
        lines.append(f"  missing: thread {item['thread']} {what}: {item['key']}")
    if report.missing or report.missing_large:
        lines.append("  restore these files from a backup of the storage, or delete the attachments in the app")
    return "\n".join(lines)


async def run(args: argparse.Namespace, out: Output) -> int:
    from ops.cli import cli_settings

    from .journal_view import read_journal
    from .stores import open_stores

    settings = cli_settings(args)
    journal = read_journal(settings.journal_path)
    async with open_stores(settings) as stores:
        with out.progress("listing storage") as advance:
            report = await sweep(stores.layer, stores.storage, fix=args.fix, grace_seconds=args.grace_minutes * 60,
                                 journal_keys=journal.pending_blob_keys if journal else (), progress=advance)
    out.result(report.as_dict(), summary_text(report))
    return 0 if report.clean else 1
