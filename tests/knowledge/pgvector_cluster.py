"""A throwaway PostgreSQL cluster with pgvector, from the binaries the `pgserver` wheel ships.

The machine's PostgreSQL (Debian 12) has no pgvector package, so the pgvector path of the
PostgreSQL knowledge index would otherwise never run here. This is the fault tests' throwaway
cluster (initdb into a temp folder, a free loopback port, run as the `postgres` OS user when
root) with every server command taken from pgserver's PostgreSQL instead of the system's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from tests.faults import postgres_cluster
from tests.faults.postgres_cluster import ThrowawayCluster


def pgserver_package() -> Path | None:
    """The installed pgserver package folder if it holds PostgreSQL binaries, or None. Found
    without importing pgserver, whose import reads platform folders (and warns when
    XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / "pginstall" / "bin" / "postgres").exists() else None


class PgvectorCluster(ThrowawayCluster):
    def __init__(self, package: Path) -> None:
        super().__init__()
        if self._as_other_user:
            # The `postgres` user may not reach the virtualenv (a clone under a private folder):
            # a copy in the cluster's own folder, laid out as installed, since initdb and psql
            # find libpq at $ORIGIN/../../../pgserver.libs.
            site = self.root / "site"
            shutil.copytree(package / "pginstall", site / "pgserver" / "pginstall", symlinks=True)
            libs = package.parent / "pgserver.libs"
            if libs.is_dir():
                shutil.copytree(libs, site / "pgserver.libs", symlinks=True)
            for folder in (self.root, site):
                os.chmod(folder, 0o755)
            package = site / "pgserver"
        self.bin = package / "pginstall" / "bin"

    def _run(self, *argv, timeout: float = 120, check: bool = True):
        program = Path(str(argv[0]))
        if program.parent == postgres_cluster.PG_BIN or str(argv[0]) == "psql":
            argv = (self.bin / program.name, *argv[1:])
        return super()._run(*argv, timeout=timeout, check=check)
