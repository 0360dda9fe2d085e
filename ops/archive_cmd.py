"""`chainlit-persist export | import | copy`: backups and moves between any two backends.

    chainlit-persist export ARCHIVE [--user NAME] [--since TIME] [--from DB,STORAGE]
    chainlit-persist import ARCHIVE [--dry-run] [--to DB,STORAGE] [--restart]
    chainlit-persist copy --from DB,STORAGE --to DB,STORAGE [--user NAME] [--since TIME] [--dry-run]

Without `--from` / `--to` the configured backends (DATABASE_URL, STORAGE_URL) are used. A
database written by Chainlit's own layers is read with `chainlit+` before its URL
(`chainlit+sqlite+aiosqlite:///old.db`, `chainlit+postgresql://…`, `chainlit+dynamodb://TABLE`;
see chainlit_sources.py), read-only. The archive format is in archive.py, what an import
keeps and how it stays idempotent in importer.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from ops.output import Output

from .records import Bundle
from .stores import Endpoint, is_chainlit_source, open_layer

#: The progress file is rewritten after this many finished threads, or this long.
PROGRESS_EVERY_THREADS = 20
PROGRESS_EVERY_SECONDS = 0.5


def register(subparsers) -> None:
    def concurrency(parser) -> None:
        parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                            help="threads read/written at once (default 8)")

    def selection(parser) -> None:
        parser.add_argument("--user", metavar="IDENTIFIER", help="only this user and their threads "
                            "(a subject-access export)")
        parser.add_argument("--since", metavar="TIME", help="only threads active at or after this ISO-8601 time "
                            "(an incremental backup)")

    export = subparsers.add_parser("export", help="write the data and blobs into a portable, verifiable archive",
                                   description="Export users, threads, steps, elements (with blob bytes) and "
                                   "feedback into a new archive directory.")
    export.add_argument("archive", type=Path, metavar="ARCHIVE", help="a new (or empty) directory")
    export.add_argument("--from", dest="source", metavar="DB,STORAGE", help="read these instead of the configured "
                        "backends (a Chainlit database: chainlit+URL)")
    selection(export)
    concurrency(export)
    export.set_defaults(run=run_export)

    load = subparsers.add_parser("import", help="load an archive (verified first; idempotent; resumable)",
                                 description="Verify every checksum of ARCHIVE, then bring the configured "
                                 "backends up to it: new and changed records are written, the rest left alone.")
    load.add_argument("archive", type=Path, metavar="ARCHIVE")
    load.add_argument("--to", dest="target", metavar="DB,STORAGE", help="write these instead of the configured "
                      "backends")
    load.add_argument("--dry-run", action="store_true", help="report per kind what would be created / changed / "
                      "unchanged; write nothing")
    load.add_argument("--restart", action="store_true", help="ignore the progress of an interrupted run "
                      "(re-read every thread; the result is the same)")
    concurrency(load)
    load.set_defaults(run=run_import)

    copy = subparsers.add_parser("copy", help="export piped into import, between any two backends, without a file")
    copy.add_argument("--from", dest="source", metavar="DB,STORAGE", required=True)
    copy.add_argument("--to", dest="target", metavar="DB,STORAGE", required=True)
    copy.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    selection(copy)
    concurrency(copy)
    copy.set_defaults(run=run_copy)


def _endpoint(text: str | None, option: str) -> Endpoint:
    from ops.cli import cli_settings

    return Endpoint.parse(text, option) if text else Endpoint.of(cli_settings())


@asynccontextmanager
async def open_source(endpoint: Endpoint, concurrency: int) -> AsyncIterator[Any]:
    from ops.cli import cli_settings

    from .exporter import Source

    settings = cli_settings()
    if is_chainlit_source(endpoint):
        from .chainlit_sources import open_chainlit_source

        async with open_chainlit_source(settings, endpoint, concurrency) as source:
            yield source
        return
    async with open_layer(settings, endpoint, create=False) as layer:
        yield Source(layer, layer.storage, endpoint.describe(), concurrency)


@asynccontextmanager
async def open_target(endpoint: Endpoint) -> AsyncIterator[Any]:
    from ops.cli import cli_settings

    if is_chainlit_source(endpoint):
        raise ValueError("a chainlit+ URL is a source only: import into this app's schema")
    async with open_layer(cli_settings(), endpoint, create=True) as layer:
        yield layer


def _rates(summary: dict[str, Any], seconds: float, threads: int, blob_bytes: int) -> dict[str, Any]:
    seconds = max(seconds, 1e-9)
    summary.update(seconds=round(seconds, 3), threads_per_second=round(threads / seconds, 1),
                   blob_mb_per_second=round(blob_bytes / seconds / 1e6, 2))
    return summary


def _filters(args) -> dict[str, Any]:
    return {"user": args.user, "since": args.since}


async def run_export(args, out: Output) -> int:
    from .archive import ArchiveWriter

    endpoint = _endpoint(args.source, "--from")
    started = time.monotonic()
    async with open_source(endpoint, args.concurrency) as source:
        writer = ArchiveWriter(args.archive, source.description, _filters(args)).open()
        try:
            async for user in source.users(args.user):
                writer.write_user(user)
            with out.progress("exporting threads") as advance:
                async for bundle in source.threads(args.user, args.since):
                    await writer.write_bundle(bundle)
                    advance(1)
        except BaseException:
            writer.abort()  # no manifest: the directory is refused by import as unfinished
            raise
        manifest = writer.close({"missing_blobs": source.missing_blobs})
    summary = {"archive": str(args.archive), **manifest["counts"], "blob_bytes": manifest["blob_bytes"],
               "missing_blobs": source.missing_blobs}
    _rates(summary, time.monotonic() - started, manifest["counts"]["threads"], manifest["blob_bytes"])
    out.result(summary)
    return 0


def _progress_path(archive: Path, target: Endpoint) -> Path:
    name = hashlib.sha256(f"{target.database_url}\n{target.storage_url}".encode()).hexdigest()[:16]
    return archive / f".import-progress-{name}.json"


class _ProgressFile:
    """How many threads of this archive an earlier run finished into this target."""

    def __init__(self, path: Path, fingerprint: str, enabled: bool):
        self.path, self.fingerprint, self.enabled = path, fingerprint, enabled
        self.last = 0.0
        self.saved = 0

    def load(self) -> int:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return 0
        return int(data.get("threads_done", 0)) if data.get("archive") == self.fingerprint else 0

    def save(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < PROGRESS_EVERY_SECONDS
                                and done - self.saved < PROGRESS_EVERY_THREADS):
            return
        self.last, self.saved = now, done
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"archive": self.fingerprint, "threads_done": done}))
            os.replace(tmp, self.path)
        except OSError:  # a read-only archive: resuming re-reads the finished threads instead
            self.enabled = False

    def clear(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)


async def run_import(args, out: Output) -> int:
    from .archive import ArchiveReader
    from .importer import Importer

    reader = ArchiveReader(args.archive)
    counts = reader.manifest.get("counts") or {}
    with out.progress("verifying blobs", counts.get("blobs")) as advance:
        await reader.verify(advance)
    target = _endpoint(args.target, "--to")
    progress = _ProgressFile(_progress_path(args.archive, target), reader.fingerprint, not args.dry_run)
    skip = 0 if args.restart or args.dry_run else progress.load()
    if skip:
        out.info(f"resuming: {skip} thread(s) were finished by an interrupted run")
    started = time.monotonic()
    async with open_target(target) as layer:
        importer = Importer(layer, layer.storage, dry_run=args.dry_run, concurrency=args.concurrency)
        with out.progress("importing threads", counts.get("threads")) as advance:
            result = await importer.run(reader.users(), reader.threads(), skip=skip, advance=advance,
                                        done=progress.save)
    progress.clear()
    summary = _import_summary(result, args.dry_run, target, skip)
    _rates(summary, time.monotonic() - started, counts.get("threads", 0), result["blobs"]["bytes"])
    out.result(summary, None if out.json else _import_text(summary))
    return 0


def _import_summary(result: dict[str, Any], dry_run: bool, target: Endpoint, skip: int = 0) -> dict[str, Any]:
    changes = sum(result[k]["created"] + result[k]["changed"] for k in ("users", "threads", "steps", "elements",
                                                                       "feedback"))
    return {"target": target.describe(), "dry_run": dry_run, "resumed_after": skip, "changes": changes,
            **{kind: value for kind, value in result.items()}}


def _import_text(summary: dict[str, Any]) -> str:
    verb = "would change" if summary["dry_run"] else "changed"
    lines = [f"{verb}: {summary['changes']} record(s) in {summary['target']['database']}"]
    for kind in ("users", "threads", "steps", "elements", "feedback"):
        c = summary[kind]
        lines.append(f"  {kind:<9} created {c['created']:>8,}  changed {c['changed']:>8,}  unchanged {c['unchanged']:>8,}")
    b = summary["blobs"]
    lines.append(f"  blobs     uploaded {b['uploaded']:>7,}  unchanged {b['unchanged']:>6,}  ({b['bytes']:,} bytes)")
    lines.append(f"  {summary['seconds']:.1f}s, {summary['threads_per_second']:,.1f} threads/s, "
                 f"{summary['blob_mb_per_second']:.2f} MB/s of blobs")
    return "\n".join(lines)


async def run_copy(args, out: Output) -> int:
    from .importer import Importer

    source_endpoint = Endpoint.parse(args.source, "--from")
    target = Endpoint.parse(args.target, "--to")
    if source_endpoint == target:
        raise ValueError("--from and --to are the same backends")
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        source = await stack.enter_async_context(open_source(source_endpoint, args.concurrency))
        layer = await stack.enter_async_context(open_target(target))
        importer = Importer(layer, layer.storage, dry_run=args.dry_run, concurrency=args.concurrency)
        with out.progress("copying threads") as advance:
            bundles: AsyncIterator[Bundle] = source.threads(args.user, args.since)
            result = await importer.run(source.users(args.user), bundles, advance=advance)
    summary = _import_summary(result, args.dry_run, target)
    summary["source"] = source_endpoint.describe()
    summary["missing_blobs"] = source.missing_blobs
    threads = sum(result["threads"].values())
    _rates(summary, time.monotonic() - started, threads, result["blobs"]["bytes"])
    out.result(summary, None if out.json else _import_text(summary))
    return 0
