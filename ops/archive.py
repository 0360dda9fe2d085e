"""The portable archive: a directory anyone can inspect with `ls`, `jq` and `sha256sum`.

    ARCHIVE/
      manifest.json     format "chainlit-persist-archive", version 1, source (URLs redacted),
                        filters, created time, counts, and the SHA-256 and size of every file below
      users.jsonl       one record per line (records.py)
      threads.jsonl
      steps.jsonl       grouped by thread, in the order of threads.jsonl
      elements.jsonl    likewise; an element with a blob names it by `blobSha256` / `blobSize`
      feedback.jsonl    likewise
      blobs.jsonl       every blob: {"sha256", "size"}, once each
      blobs/ab/abcd…    the bytes, addressed by SHA-256 (identical blobs are stored once)

Every blob's checksum is listed in `blobs.jsonl`, whose own checksum is in the manifest, so
the manifest covers every byte while staying small for a store of a million blobs. The
manifest is written last: a directory without one is an unfinished export and is refused.

Both sides stream: the writer appends lines as threads arrive; the reader walks
`threads.jsonl` and the per-thread files in lockstep (they are in the same order), holding
one thread at a time. `verify()` checks everything before an import writes anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .exporter import BLOB_SHA
from .records import Bundle, sha256_hex

FORMAT = "chainlit-persist-archive"
VERSION = 1
MANIFEST = "manifest.json"
FILES = ("users", "threads", "steps", "elements", "feedback", "blobs")
HASH_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive is incomplete, corrupted or of an unknown format; nothing was imported."""


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n").encode()


def blob_path(root: Path, digest: str) -> Path:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArchiveError(f"not a SHA-256 blob name: {digest[:80]!r}")
    return root / "blobs" / digest[:2] / digest


class _HashedFile:
    def __init__(self, path: Path):
        self.handle: IO[bytes] = open(path, "xb")  # noqa: SIM115 (closed in close())
        self.hash = hashlib.sha256()
        self.size = 0
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        data = _line(record)
        self.handle.write(data)
        self.hash.update(data)
        self.size += len(data)
        self.lines += 1

    def close(self) -> dict[str, Any]:
        self.handle.close()
        return {"sha256": self.hash.hexdigest(), "size": self.size, "lines": self.lines}


class ArchiveWriter:
    def __init__(self, root: Path, source: dict[str, Any], filters: dict[str, Any]):
        self.root = Path(root)
        self.source = source
        self.filters = filters
        self.files: dict[str, _HashedFile] = {}
        self.blob_bytes = 0

    def open(self) -> ArchiveWriter:
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise FileExistsError(f"{self.root} exists and is not an empty directory: export into a new one")
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.files = {kind: _HashedFile(self.root / f"{kind}.jsonl") for kind in FILES}
        return self

    def write_user(self, record: dict[str, Any]) -> None:
        self.files["users"].write(record)

    async def write_bundle(self, bundle: Bundle) -> int:
        """Write one thread; returns the blob bytes it added to the archive."""
        added = 0
        for element in bundle.elements:
            digest = element.get(BLOB_SHA)
            if digest and bundle.read_blob is not None:
                path = blob_path(self.root, digest)
                if not path.exists():  # de-duplicated by name: no set of seen blobs in memory
                    data = await bundle.read_blob(digest, element)
                    await asyncio.to_thread(_write_atomic, path, data)
                    self.files["blobs"].write({"sha256": digest, "size": len(data)})
                    added += len(data)
        self.files["threads"].write(bundle.thread)
        for kind, records in (("steps", bundle.steps), ("elements", bundle.elements), ("feedback", bundle.feedback)):
            for record in records:
                self.files[kind].write(record)
        self.blob_bytes += added
        return added

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        files = {f"{kind}.jsonl": handle.close() for kind, handle in self.files.items()}
        manifest = {
            "format": FORMAT, "version": VERSION,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": self.source, "filters": self.filters,
            "counts": {kind: files[f"{kind}.jsonl"]["lines"] for kind in FILES},
            "blob_bytes": self.blob_bytes,
            "files": files, **(extra or {}),
        }
        _write_atomic(self.root / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n")
        return manifest

    def abort(self) -> None:
        for handle in self.files.values():
            handle.handle.close()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class _Lines:
    """A JSONL file read one record at a time, with one record of look-ahead."""

    def __init__(self, path: Path):
        self.handle = open(path, "rb")  # noqa: SIM115 (closed by the reader)
        self.ahead: dict[str, Any] | None = None
        self._advance()

    def _advance(self) -> None:
        line = self.handle.readline()
        self.ahead = json.loads(line) if line else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.ahead is not None:
            record = self.ahead
            self._advance()
            yield record

    def take_thread(self, thread_id: str) -> list[dict[str, Any]]:
        records = []
        while self.ahead is not None and self.ahead.get("threadId") == thread_id:
            records.append(self.ahead)
            self._advance()
        return records

    def close(self) -> None:
        self.handle.close()


class ArchiveReader:
    def __init__(self, root: Path):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such archive directory")
        if not manifest_path.is_file():
            raise ArchiveError(f"{self.root}: no {MANIFEST} (an unfinished export?); nothing imported")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ArchiveError(f"{manifest_path}: not JSON ({exc}); nothing imported") from exc
        if self.manifest.get("format") != FORMAT:
            raise ArchiveError(f"{self.root}: not a {FORMAT} (format {self.manifest.get('format')!r})")
        if self.manifest.get("version") != VERSION:
            raise ArchiveError(f"{self.root}: archive version {self.manifest.get('version')!r}; this tool reads "
                               f"version {VERSION}")

    @property
    def fingerprint(self) -> str:
        """Identifies this archive's content (the checksums of its files)."""
        return sha256_hex(json.dumps(self.manifest.get("files"), sort_keys=True).encode())

    async def verify(self, advance: Callable[[int], None] | None = None) -> dict[str, int]:
        """Every file's checksum against the manifest, every blob's against its name and
        `blobs.jsonl`, every element's blob present. Raises ArchiveError naming the first
        problem; reads the archive once, in constant memory."""
        files = self.manifest.get("files") or {}
        for kind in FILES:
            name = f"{kind}.jsonl"
            expected = files.get(name) or {}
            path = self.root / name
            if not path.is_file():
                raise ArchiveError(f"{name} is missing from the archive; nothing imported")
            digest, size = await asyncio.to_thread(_hash_file, path)
            if digest != expected.get("sha256") or size != expected.get("size"):
                raise ArchiveError(f"{name} does not match its checksum in the manifest (corrupted or changed); "
                                   "nothing imported")
        blobs = _Lines(self.root / "blobs.jsonl")
        checked = 0
        try:
            for entry in blobs:
                path = blob_path(self.root, str(entry.get("sha256")))
                if not path.is_file():
                    raise ArchiveError(f"blob {entry['sha256']} is missing from the archive; nothing imported")
                digest, size = await asyncio.to_thread(_hash_file, path)
                if digest != entry["sha256"] or size != entry.get("size"):
                    raise ArchiveError(f"blob {entry['sha256']} is corrupted (its bytes have SHA-256 {digest}, "
                                       f"{size} bytes); nothing imported")
                checked += 1
                if advance:
                    advance(1)
        finally:
            blobs.close()
        elements = _Lines(self.root / "elements.jsonl")
        try:
            for element in elements:
                needed = element.get(BLOB_SHA)
                if needed and not blob_path(self.root, str(needed)).is_file():
                    raise ArchiveError(f"element {element.get('id')} needs blob {needed}, which is missing; "
                                       "nothing imported")
        finally:
            elements.close()
        return {"files": len(FILES), "blobs": checked}

    def users(self) -> Iterator[dict[str, Any]]:
        lines = _Lines(self.root / "users.jsonl")
        try:
            yield from lines
        finally:
            lines.close()

    async def read_blob(self, digest: str, element: dict[str, Any]) -> bytes:
        data = await asyncio.to_thread(blob_path(self.root, digest).read_bytes)
        if sha256_hex(data) != digest:  # changed since verify(): refuse rather than import it
            raise ArchiveError(f"blob {digest} changed since the archive was verified")
        return data

    async def threads(self) -> AsyncIterator[Bundle]:
        kinds = ("steps", "elements", "feedback")
        readers = {kind: _Lines(self.root / f"{kind}.jsonl") for kind in (*kinds, "threads")}
        try:
            for thread in readers["threads"]:
                parts = {kind: readers[kind].take_thread(thread["id"]) for kind in kinds}
                yield Bundle(thread, parts["steps"], parts["elements"], parts["feedback"], self.read_blob)
        finally:
            for reader in readers.values():
                reader.close()
