"""Files uploaded over the API for the next message (`POST /conversations/{id}/files`).

Like the browser's uploads, a file waits on this instance's disk until a chat call names
it in `file_ids`; it is then stored as an attachment of that message through the data
layer and the storage client, exactly as the UI stores one, and removed from here. A file
nobody used is removed after `max_age_seconds`. Each file is bound to the user and the
conversation it was uploaded for: another user's or another conversation's id is unknown.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from storage.content_types import OCTET_STREAM, guess_media_type, normalize_media_type

from .problems import Problem

FILE_ID = re.compile(r"^[0-9a-f]{32}$")
NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")


@dataclass(frozen=True)
class PendingFile:
    id: str
    name: str
    mime: str
    size: int
    owner: str
    conversation_id: str
    path: Path


class PendingUploads:
    def __init__(self, folder: Path, *, max_bytes: int, max_age_seconds: float = 24 * 3600):
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds

    def _paths(self, file_id: str) -> tuple[Path, Path]:
        return self.folder / f"{file_id}.bin", self.folder / f"{file_id}.json"

    async def save(self, owner: str, conversation_id: str, name: str | None, mime: str | None, source) -> PendingFile:
        """Copy the upload (a file object) to disk, refusing one over `max_bytes`."""
        clean_name = NAME_CHARS.sub("_", (name or "file").strip())[:255] or "file"
        file_id = uuid.uuid4().hex
        data_path, meta_path = self._paths(file_id)
        size = await asyncio.to_thread(self._copy, source, data_path)
        if size > self.max_bytes:
            data_path.unlink(missing_ok=True)
            raise Problem(413, f"the file is larger than {self.max_bytes} bytes")
        declared = normalize_media_type(mime) if mime else OCTET_STREAM
        kind = declared if declared != OCTET_STREAM else guess_media_type(clean_name)  # curl sends octet-stream
        record = PendingFile(file_id, clean_name, kind, size, owner, conversation_id, data_path)
        meta = {"name": record.name, "mime": record.mime, "size": size, "owner": owner,
                "conversation_id": conversation_id, "created": time.time()}
        await asyncio.to_thread(meta_path.write_text, json.dumps(meta))
        await asyncio.to_thread(self.sweep)
        return record

    def _copy(self, source, target: Path) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        size = 0
        with target.open("wb") as out:
            while chunk := source.read(1 << 20):
                size += len(chunk)
                if size > self.max_bytes:
                    break
                out.write(chunk)
        return size

    async def take(self, owner: str, conversation_id: str, file_ids: list[str]) -> list[PendingFile]:
        """The named files, all of them the caller's and this conversation's (else a 404
        naming the first unknown id); they stay on disk until `discard`."""
        found = []
        for file_id in dict.fromkeys(file_ids):
            record = await asyncio.to_thread(self._load, file_id)
            if record is None or record.owner != owner or record.conversation_id != conversation_id:
                raise Problem(404, f"file {file_id[:64]!r} not found for this conversation (upload it first)")
            found.append(record)
        return found

    def _load(self, file_id: str) -> PendingFile | None:
        if not FILE_ID.match(file_id):
            return None
        data_path, meta_path = self._paths(file_id)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if not data_path.exists():
            return None
        return PendingFile(file_id, meta["name"], meta["mime"], meta["size"], meta["owner"], meta["conversation_id"],
                           data_path)

    def discard(self, files: list[PendingFile]) -> None:
        for record in files:
            self._remove(record.id)

    def _remove(self, file_id: str) -> None:
        for path in self._paths(file_id):
            path.unlink(missing_ok=True)

    def sweep(self) -> None:
        """Remove files older than `max_age_seconds` that no message used."""
        if not self.folder.is_dir():
            return
        limit = time.time() - self.max_age_seconds
        for meta_path in self.folder.glob("*.json"):
            try:
                if meta_path.stat().st_mtime < limit:
                    self._remove(meta_path.stem)
            except FileNotFoundError:
                continue
