"""Files of the app are private to the account that runs it: the database (and SQLite's
`-wal` / `-shm` / `-journal`), the write journal, the users file, the auth secret, blobs —
everything under the data folder (`APP_DATA_DIR`).

Two layers: the process umask is 077 from the start, so whatever the app, SQLite, Chainlit
or a library creates is 600 (files) / 700 (folders); and at startup the data folder and the
files the app knows of are tightened, for installs that created them before (a 644
`chainlit.db` in a 755 folder). The data folder's own 700 keeps other accounts out of
everything below it; nothing is walked recursively (the blob folder may be large).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_UMASK = 0o077
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_by_default() -> None:
    """New files 600, new folders 700, for the whole process."""
    os.umask(PRIVATE_UMASK)


def tighten(data_dir: Path, files: Iterable[Path | None] = (), folders: Iterable[Path | None] = (),
            logger: logging.Logger | None = None) -> list[Path]:
    """Create the data folder 700 if missing; make it 700, `folders` 700 and `files` (with
    SQLite's side files) 600 where they are looser. Returns what was changed."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    changed = []
    targets: list[tuple[Path, int]] = [(data_dir, 0o700)]
    targets += [(Path(f), 0o700) for f in folders if f is not None]
    for file in files:
        if file is not None:
            targets += [(Path(f"{file}{suffix}"), 0o600) for suffix in ("", *SQLITE_SIDE_FILES)]
    for path, mode in targets:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & ~mode == 0:
            continue  # not ours to change, or already private
        path.chmod(stat.S_IMODE(info.st_mode) & mode)
        changed.append(path)
    if changed and logger is not None:
        logger.info("made private (no access for other accounts): %s", ", ".join(map(str, changed)))
    return changed


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a `sqlite` URL, else None."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser().resolve()


def local_storage_root(storage_url: str) -> Path | None:
    """The folder of a `file://` storage URL, else None."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(storage_url)
    return Path(unquote(parts.path)).expanduser().resolve() if parts.scheme == "file" else None
