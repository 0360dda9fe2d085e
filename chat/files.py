"""Attached files: as text for the model, and where Chainlit keeps them until they are saved.

Text-like files (by MIME type, else by extension, and only if they decode as UTF-8 without
NUL bytes) are passed to the model, cut to `CHAT_MAX_FILE_CHARS`; other files are named
with their type and size so the model knows they exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path, PurePosixPath

logger = logging.getLogger("chainlit")

#: An instance's upload folder untouched this long belongs to an instance that is gone.
STALE_UPLOADS_SECONDS = 24 * 3600

TEXT_MIME_TYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-sh",
        "application/x-python",
        "application/x-python-code",
        "application/sql",
        "application/csv",
        "application/x-ndjson",
        "image/svg+xml",
    }
)
TEXT_EXTENSIONS = frozenset(
    """txt md markdown rst csv tsv json jsonl ndjson yaml yml toml ini cfg conf log xml html htm
    css js mjs ts tsx jsx py pyi rb go rs java kt c h cpp hpp cs php sh bash zsh sql r swift
    scala lua pl tex env properties gradle dockerfile makefile""".split()
)


def is_text_like(name: str | None, mime: str | None) -> bool:
    mime = (mime or "").split(";")[0].strip().lower()
    if mime.startswith("text/") or mime in TEXT_MIME_TYPES or mime.endswith(("+json", "+xml")):
        return True
    suffix = PurePosixPath(name or "").suffix.lower().lstrip(".")
    stem = PurePosixPath(name or "").name.lower()
    return suffix in TEXT_EXTENSIONS or stem in TEXT_EXTENSIONS


def decode_text(data: bytes) -> str | None:
    """The UTF-8 text of `data`, or None when it is binary."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def describe_attachment(name: str, mime: str | None, data: bytes | None, max_chars: int) -> str:
    """The block the model receives for one attached file."""
    label = name or "file"
    text = decode_text(data) if data is not None and is_text_like(name, mime) else None
    if text is None:
        size = f", {len(data)} bytes" if data is not None else ""
        return f"[Attached file: {label} ({mime or 'unknown type'}{size}); its content is not text and is not shown.]"
    note = ""
    if len(text) > max_chars:
        text = text[:max_chars]
        note = f"\n[... file truncated to its first {max_chars} characters ...]"
    return f"--- Attached file: {label} ---\n{text}{note}\n--- End of {label} ---"


async def read_path(path: str | Path) -> bytes:
    return await asyncio.to_thread(Path(path).read_bytes)


def keep_uploads_in(folder: Path) -> Path:
    """Give this instance its own folder for uploads not yet saved, under `folder`.

    Chainlit keeps an uploaded file in `<app folder>/.files/<session>/` until the message is
    handled, and deletes the whole `.files` when it shuts down — with it the uploads of any
    other instance started from the same folder, whose next upload then fails (500). Here
    each instance has a folder of its own (which Chainlit still deletes at its shutdown);
    folders left by instances that crashed are removed once they are a day old."""
    import chainlit.config
    import chainlit.server

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in folder.iterdir():
        try:
            if stale.is_dir() and time.time() - stale.stat().st_mtime > STALE_UPLOADS_SECONDS:
                shutil.rmtree(stale)
        except OSError as exc:  # another instance's cleanup got there first, or it is not ours
            logger.debug("left the old upload folder %s: %s", stale, exc)
    own = folder / f"{os.getpid()}-{secrets.token_hex(4)}"
    own.mkdir(mode=0o700)
    # Sessions read `chainlit.config.FILES_DIRECTORY` on each upload; the server's shutdown
    # removes the one it imported.
    chainlit.config.FILES_DIRECTORY = own
    chainlit.server.FILES_DIRECTORY = own
    return own
