"""Shared test fixtures: the real databases on this machine, a Chainlit context, and the
rule that backend tests must run (not skip) in CI.

PostgreSQL: 127.0.0.1:5432, user postgres (TEST_POSTGRES_URL overrides).
MariaDB/MySQL: 127.0.0.1:3306, user root, empty password (TEST_MYSQL_URL overrides).
Each test session creates throwaway databases on those servers and drops them at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test")


def unavailable(reason: str):
    """Skip on a developer machine without the service; fail in CI, where skips hide gaps."""
    if IN_CI:
        pytest.fail(f"CI=true and a required service is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port), timeout=2):
            return True
    except OSError:
        return False


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _admin(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def run_sync(coroutine):
    """Run a coroutine to completion from sync code, even inside a running event loop
    (fixtures that create databases are called from async tests)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class ThrowawayDatabases:
    """Creates uniquely named databases on a server and drops them all at the end."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        run_sync(_admin(self.admin_url, f"CREATE DATABASE {name}"))
        self.created.append(name)
        return _with_database(self.admin_url, name)

    def drop_all(self) -> None:
        drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)" if "postgres" in self.admin_url else "DROP DATABASE IF EXISTS {}"
        for name in self.created:
            run_sync(_admin(self.admin_url, drop.format(name)))


def _throwaway_databases(admin_url: str, server: str):
    if not port_open(admin_url):
        unavailable(f"{server} is not reachable at {urlsplit(admin_url).netloc}")
    dbs = ThrowawayDatabases(admin_url)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def postgres_databases():
    yield from _throwaway_databases(POSTGRES_ADMIN_URL, "PostgreSQL")


@pytest.fixture(scope="session")
def mysql_databases():
    yield from _throwaway_databases(MYSQL_ADMIN_URL, "MariaDB/MySQL")


SQL_BACKENDS = ["sqlite", "postgresql", "mariadb"]


@pytest.fixture(scope="session")
def sql_url_factory(request, tmp_path_factory):
    """`factory(backend)` returns the URL of a new, empty database on that backend."""

    def factory(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / "chainlit.db"
            return f"sqlite+aiosqlite:///{path}"
        if backend == "postgresql":
            return request.getfixturevalue("postgres_databases").create()
        if backend == "mariadb":
            return request.getfixturevalue("mysql_databases").create()
        raise ValueError(backend)

    return factory


@pytest.fixture(autouse=True)
async def chainlit_context():
    """An HTTP-style Chainlit context, which the data-layer write methods need
    (`@queue_until_user_message` reads `context.session`)."""
    from chainlit.context import ChainlitContext, context_var
    from chainlit.session import HTTPSession

    session = HTTPSession(id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()), client_type="webapp")
    token = context_var.set(ChainlitContext(session))
    yield session
    context_var.reset(token)


@pytest.fixture(scope="session")
def moto_endpoint():
    """Endpoint URL of one moto server (S3, DynamoDB, ...) over real HTTP on loopback, with
    fake AWS credentials in the environment for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        unavailable("moto[server] is not installed (pip install -e '.[dev]')")
    fake_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Keep a developer's real profile and config out of the tests.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in fake_env.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
