"""Fixtures shared by the security tests: the real app (`tests/e2e/app_runner.py`, the
browser protocol over HTTP and Socket.IO) on SQLite and on PostgreSQL, with two password
users, alice and bob.

* `security_app` (module scope, parametrized sqlite / postgresql): a `SecurityApp`. Each test
  module gets its own app, so what one module does (a lockout, a revoked session, a removed
  user) never leaks into another module's tests. Offline model (no LLM configured). A module
  may set `APP_ENV = {...}`: settings for its app.
* `alice`, `bob`: a `ChainlitClient` (tests/faults/chainlit_client.py) logged in over HTTP
  (its `cookies` hold the login token), not connected yet: `await alice.connect()` opens the
  socket as the frontend does. Closed after the test.
* `launch_app(tmp, database_url, **env)`: start one more app with settings of its own
  (same two users); the caller stops it (`app.stop()`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_sync
from tests.e2e.app_runner import RunningApp
from tests.faults.chainlit_client import ChainlitClient

BACKENDS = ["sqlite", "postgresql"]
PASSWORDS = {"alice": "alice-secret-pw-1", "bob": "bob-secret-pw-2"}


class SecurityApp:
    """A running app with alice and bob; `url`, `backend`, `running` (the RunningApp)."""

    def __init__(self, running: RunningApp, backend: str):
        self.running = running
        self.backend = backend
        self.url = running.url

    async def login(self, name: str, password: str | None = None) -> ChainlitClient:
        return await ChainlitClient.login(self.url, name, password or PASSWORDS[name])

    def http(self, client: ChainlitClient | None = None, **kwargs) -> httpx.AsyncClient:
        """An HTTP client of the app, with `client`'s login cookies when given."""
        return httpx.AsyncClient(base_url=self.url, cookies=client.cookies if client else None,
                                 timeout=kwargs.pop("timeout", 30), **kwargs)

    def log_text(self) -> str:
        """The app's whole log so far."""
        self.running.log.flush()
        return self.running.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.running.stop()


def database_url(request, backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'data' / 'chainlit.db'}"
    return request.getfixturevalue("postgres_databases").create()


def launch_app(tmp: Path, url: str, backend: str = "", **env: str) -> SecurityApp:
    running = RunningApp(tmp, url, None, **env)
    try:
        running.wait_ready()
        for name, password in PASSWORDS.items():
            run_sync(running.add_user(name, password))
    except BaseException:
        running.stop()
        raise
    return SecurityApp(running, backend)


@pytest.fixture(scope="module", params=BACKENDS)
def security_app(request, tmp_path_factory):
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"security-{backend}")
    app = launch_app(tmp, database_url(request, backend, tmp), backend, **getattr(request.module, "APP_ENV", {}))
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
async def alice(security_app):
    async with await security_app.login("alice") as client:
        yield client


@pytest.fixture
async def bob(security_app):
    async with await security_app.login("bob") as client:
        yield client


async def settled(app, timeout: float = 20, *, rejected_allowed: bool = False) -> None:
    """Wait until the app's write journal has applied everything (and, unless allowed,
    check that the database refused nothing)."""
    async with app.http() as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            journal = (await http.get("/health")).json()["journal"]
            if journal["pending"] == 0:
                assert rejected_allowed or journal["rejected"] == 0, journal
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"writes still pending after {timeout}s: {journal}")
