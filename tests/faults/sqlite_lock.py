"""An outage of an SQLite database: another process holds `BEGIN EXCLUSIVE` on the file.

That is what a real outage of an embedded database looks like: a backup tool, a migration
or a second program holding the write lock. The lock must be held by another PROCESS, not by
a connection in the test process, because SQLite's locks are file locks and the app is a
separate process. The holder runs python's sqlite3 in a subprocess, reports once it holds
the lock, and rolls back and exits when told to (a line on its stdin), when its time cap
runs out, or when the test process dies (its stdin closes): a crashed test never leaves the
database locked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HOLDER = r"""
import select, sqlite3, sys
path, cap = sys.argv[1], float(sys.argv[2])
db = sqlite3.connect(path, timeout=60, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
select.select([sys.stdin], [], [], cap)  # a line, EOF (the test died) or the cap
db.execute("ROLLBACK")
db.close()
print("released", flush=True)
"""


class SQLiteLock:
    """`acquire()` / `release()`, or `with SQLiteLock(path):`."""

    def __init__(self, path: str | Path, cap_seconds: float = 300):
        self.path = Path(path)
        self.cap_seconds = cap_seconds
        self.proc: subprocess.Popen | None = None
        self.acquired_at: float | None = None
        self.held_seconds: float | None = None

    def acquire(self, timeout: float = 60) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} does not exist: there is nothing to lock yet")
        if self.proc is not None:
            raise RuntimeError("already held")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.path), str(self.cap_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        # BEGIN EXCLUSIVE waits for a write the app has in flight; readline returns when
        # the holder has the lock (or has failed and exited).
        line = self._readline(timeout)
        if line != "locked":
            rest = self.proc.stdout.read() if self.proc.poll() is not None else ""
            self._kill()
            raise RuntimeError(f"the lock holder did not get the lock: {line!r} {rest}")
        self.acquired_at = time.monotonic()

    def release(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
            line = self._readline(timeout)
            self.proc.wait(timeout=timeout)
            if line != "released" or self.proc.returncode != 0:
                raise RuntimeError(f"the lock holder did not release cleanly: {line!r}, exit {self.proc.returncode}")
        finally:
            if self.acquired_at is not None:
                self.held_seconds = time.monotonic() - self.acquired_at
            self._kill()

    def _readline(self, timeout: float) -> str:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"the lock holder said nothing in {timeout}s")
        return self.proc.stdout.readline().strip()

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None
        self.acquired_at = None

    @property
    def held(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> SQLiteLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
