"""A read-only look at the app's write journal (`<APP_DATA_DIR>/journal.sqlite3`), for the
doctor (is it empty?) and the sweep (blobs whose element row is still waiting there).

Opened read-only, without the journal's lock: the running app holds that lock and must
keep it; reading a WAL database beside its writer is safe and sees committed entries.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JournalState:
    path: Path
    exists: bool
    pending: int = 0
    rejected: int = 0
    oldest_seconds: float = 0.0
    pending_blob_keys: set[str] = field(default_factory=set)


def read_journal(path: Path | None) -> JournalState | None:
    """The journal's counts (None: the app keeps its journal in memory). Raises OSError
    (sqlite3.Error wrapped) when the file exists but cannot be read."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return JournalState(path, exists=False)
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise OSError(f"cannot open the write journal {path}: {exc}") from exc
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "entries" not in tables:
            return JournalState(path, exists=True)
        state = JournalState(path, exists=True)
        state.pending, oldest = db.execute("SELECT count(*), min(created) FROM entries").fetchone()
        if oldest is not None:
            state.oldest_seconds = max(0.0, time.time() - float(oldest))
        if "rejected" in tables:
            state.rejected = db.execute("SELECT count(*) FROM rejected").fetchone()[0]
        for (payload,) in db.execute("SELECT payload FROM entries WHERE kind = 'element'"):
            try:
                key = (json.loads(payload).get("row") or {}).get("objectKey")
            except (ValueError, AttributeError):
                continue
            if key:
                state.pending_blob_keys.add(key)
        return state
    except sqlite3.Error as exc:
        raise OSError(f"cannot read the write journal {path}: {exc}") from exc
    finally:
        db.close()
