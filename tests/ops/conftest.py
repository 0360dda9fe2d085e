"""Shared fixtures of the operator command's tests.

* `backends`: builds (database, storage) endpoints on real services — SQLite, PostgreSQL,
  MariaDB, DynamoDB on moto; local files, S3 on moto, Azure on the ADLS test server — and
  opens our data layer + storage on one (`backends.open(endpoint)`).
* `cli`: `chainlit-persist ARGV` in-process (its own event loop in a thread, no Chainlit
  context, as from a shell) → (exit code, parsed JSON or stdout, stderr).
* `console`: the installed `.venv/bin/chainlit-persist` as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb  # noqa: F401  (fixture)

CONSOLE = Path(sys.executable).with_name("chainlit-persist")
REGION = "us-east-1"


def short_id() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def ops_adls():
    """The fake ADLS Gen2 endpoint (tests/servers/adls_fake.py) on a loopback port."""
    try:
        import azure.storage.filedatalake.aio  # noqa: F401
    except ImportError:
        unavailable("azure-storage-file-datalake is not installed")
    from tests.servers.adls_fake import FakeAdlsServer

    server = FakeAdlsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ops_env(tmp_path, monkeypatch) -> dict[str, str]:
    """The settings every CLI run of a test reads (a data folder of its own)."""
    env = {"APP_DATA_DIR": str(tmp_path / "app-data"), "CHAINLIT_AUTH_SECRET": "s" * 48,
           "WRITE_JOURNAL_PATH": str(tmp_path / "app-journal.sqlite3")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("STORAGE_URL", raising=False)
    return env


class Backends:
    def __init__(self, request, tmp_path: Path):
        self.request = request
        self.tmp = tmp_path

    def database(self, kind: str) -> str:
        if kind == "dynamodb":
            endpoint = self.request.getfixturevalue("moto_endpoint")
            self.request.getfixturevalue("atomic_moto_dynamodb")
            return f"dynamodb://ops-{short_id()}?region={REGION}&endpoint_url={endpoint}"
        return self.request.getfixturevalue("sql_url_factory")(kind)

    async def storage(self, kind: str) -> str:
        if kind == "local":
            return (self.tmp / f"blobs-{short_id()}").as_uri()
        if kind == "s3":
            endpoint = self.request.getfixturevalue("moto_endpoint")
            import aioboto3

            bucket = f"ops-{short_id()}"
            async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name=REGION) as s3:
                await s3.create_bucket(Bucket=bucket)
            return f"s3://{bucket}/chat?region={REGION}&endpoint_url={endpoint}"
        if kind == "azure":
            fake = self.request.getfixturevalue("ops_adls")
            from storage.azure import AzureDataLakeStorage

            file_system = f"fs{short_id()}"
            storage = AzureDataLakeStorage(fake.account_url, file_system, "", credential=fake.account_key)
            await storage._fs.create_file_system()
            await storage.close()
            from urllib.parse import quote

            return (f"abfs://{file_system}@{fake.account_name}/chat?endpoint_url={quote(fake.account_url, safe='')}"
                    f"&account_key={quote(fake.account_key, safe='')}")
        raise ValueError(kind)

    async def endpoint(self, database: str, storage: str) -> str:
        """`DATABASE_URL,STORAGE_URL` of new, empty stores."""
        return f"{self.database(database)},{await self.storage(storage)}"

    @asynccontextmanager
    async def open(self, endpoint: str, *, create: bool = True) -> AsyncIterator[Any]:
        """Our data layer (with its storage as `.storage`) on the endpoint."""
        from ops.stores import Endpoint, open_layer
        from settings import load_settings

        async with open_layer(load_settings(dotenv=False, export_secret=False), Endpoint.parse(endpoint, "endpoint"),
                              create=create) as layer:
            yield layer


@pytest.fixture
def backends(request, tmp_path, ops_env) -> Backends:
    return Backends(request, tmp_path)


@pytest.fixture
def cli(capsys, ops_env):
    """`await cli(*argv)`: `chainlit-persist ARGV` in-process (see helpers_b.run_cli)."""
    from tests.ops.helpers_b import run_cli

    async def run(*argv: str) -> tuple[int, Any, str]:
        return await run_cli(list(argv), capsys)

    return run


@pytest.fixture
def console(ops_env, tmp_path):
    """Run the installed console script; returns the CompletedProcess (text)."""
    if not CONSOLE.exists():
        unavailable(f"{CONSOLE} is missing: pip install -e '.[dev]'")

    def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 300, **kwargs):
        return subprocess.run([str(CONSOLE), *argv], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **ops_env, **(env or {})}, cwd=tmp_path, **kwargs)

    run.script = CONSOLE  # type: ignore[attr-defined]
    run.env = {**os.environ, **ops_env}  # type: ignore[attr-defined]
    return run
