"""A throwaway PostgreSQL cluster the tests may stop and start at will.

The machine's PostgreSQL is shared with other work and must never be stopped, so outage
tests get a cluster of their own: `initdb` into a temporary folder, `pg_ctl start` on a free
loopback port, `stop()` (fast, or immediate to simulate a crash) and `start()` again on the
same port, and `destroy()` (stop and delete) at the end.

initdb and the server refuse to run as root: as root (CI) every command runs as the `postgres`
OS user through `runuser`, and the folder is handed to that user. The folder is made with
`tempfile.mkdtemp` under the system temp dir rather than pytest's tmp_path, whose parents are
private to root and so not reachable by `postgres`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


class ClusterError(RuntimeError):
    pass


def missing_prerequisite() -> str | None:
    """Why a throwaway cluster cannot be made here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            return f"{PG_BIN / tool} is missing (PostgreSQL server binaries; TEST_PG_BIN overrides)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root needs `runuser` to start PostgreSQL as another user"
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root needs an OS user {OS_USER!r} to own the throwaway cluster"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayCluster:
    def __init__(self, port: int | None = None):
        reason = missing_prerequisite()
        if reason:
            raise ClusterError(reason)
        self.port = port or _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self._as_other_user = os.geteuid() == 0
        if self._as_other_user:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.running = False

    # ------------------------------------------------------------------ commands
    def _run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in argv]
        if self._as_other_user:
            command = ["runuser", "-u", OS_USER, "--", *command]
        # No stdin (CI), and a cwd the postgres user can enter (root's cwd may not be).
        done = subprocess.run(command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise ClusterError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}\n{self.log_tail()}")
        return done

    def init(self) -> ThrowawayCluster:
        # --no-sync: a test cluster need not survive a power cut, and initdb's fsyncs are slow.
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--locale", "C")
        return self

    def start(self, timeout: float = 60) -> None:
        """Start the server (again) on the same port; returns once it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   # fsync off only trades durability against a machine crash, which these tests
                   # never simulate; a killed server still finds its committed data in the OS cache.
                   "-c fsync=off -c max_connections=60 -c shared_buffers=16MB")
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options, "-l", self.log_path, "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        self.running = True
        self._wait_accepting(timeout)

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends sessions and shuts down cleanly; `immediate` is a crash (recovery at
        the next start). Either way, new connections are refused once this returns."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(mode)
        if not self.running and not (self.data / "postmaster.pid").exists():
            return
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)
        self.running = False
        if self.accepting():
            raise ClusterError(f"PostgreSQL on port {self.port} still accepts connections after stop -m {mode}")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        finally:
            self.running = False
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ state
    def accepting(self) -> bool:
        """Whether the TCP port accepts a connection right now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL did not accept connections on {self.port}:\n{self.log_tail()}")
            time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database on this cluster; its SQLAlchemy URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"unsafe database name {name!r}")
        self._run(PG_BIN / "psql" if (PG_BIN / "psql").exists() else "psql", "-h", "127.0.0.1", "-p",
                  str(self.port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q",
                  "-c", f"CREATE DATABASE {name}")
        return self.url(name)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> ThrowawayCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()
