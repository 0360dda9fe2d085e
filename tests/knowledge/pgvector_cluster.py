"""A throwaway PostgreSQL cluster with pgvector, from the binaries the `pgserver` wheel ships.

The machine's PostgreSQL (Debian 12) has no pgvector package, so the pgvector path of the
PostgreSQL knowledge index would otherwise never run here. This is the fault tests' throwaway
cluster (initdb into a temp folder, a free loopback port, run as the `postgres` OS user when
root) with every server command taken from pgserver's PostgreSQL instead of the system's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.faults import postgres_cluster
from tests.faults.postgres_cluster import ThrowawayCluster


def pgserver_bin() -> Path | None:
    """Where the wheel's PostgreSQL binaries are, or None. Found without importing pgserver,
    whose import reads platform folders (and warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return folder if (folder / "postgres").exists() else None


class PgvectorCluster(ThrowawayCluster):
    def __init__(self, bin_dir: Path) -> None:
        super().__init__()
        self.bin = bin_dir

    def _run(self, *argv, timeout: float = 120, check: bool = True):
        program = Path(str(argv[0]))
        if program.parent == postgres_cluster.PG_BIN or str(argv[0]) == "psql":
            argv = (self.bin / program.name, *argv[1:])
        return super()._run(*argv, timeout=timeout, check=check)
