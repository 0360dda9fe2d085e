"""Fixtures of the API tests: the real app (`chainlit run`, tests/e2e/app_runner.py) with the
OpenAI-compatible test server as its model, on SQLite and on PostgreSQL, with two password
users (alice, bob) and an API token for each, made with the documented CLI command.

* `api_app` (module scope, parametrized sqlite / postgresql): an `ApiApp`. A module may set
  `APP_ENV = {...}`: settings of its app.
* `llm`: the test model server of that app, reset before each test.
* `launch(request, tmp, backend, **env)`: one more app (the caller stops it).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_sync
from tests.e2e.app_runner import ROOT, RunningApp
from tests.faults.chainlit_client import ChainlitClient
from tests.servers.openai_compat import OpenAICompatServer

PASSWORDS = {"alice": "alice-secret-pw-1", "bob": "bob-secret-pw-2"}
MODELS = "test-model,test-model-2"


def make_token(app: RunningApp, user: str, name: str = "tests", *extra: str) -> str:
    """`python -m chat.users token create USER --name NAME`: the token is its last line."""
    done = subprocess.run([sys.executable, "-m", "chat.users", "token", "create", user, "--name", name, *extra],
                          cwd=ROOT, env=app.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    token = done.stdout.strip().splitlines()[-1]
    assert token.startswith("clp_"), done.stdout
    return token


class ApiApp:
    def __init__(self, running: RunningApp, backend: str, llm: OpenAICompatServer):
        self.running = running
        self.backend = backend
        self.llm = llm
        self.url = running.url
        self.tokens = {name: make_token(running, name) for name in PASSWORDS}

    def client(self, user: str | None = "alice", token: str | None = None, **kwargs) -> httpx.AsyncClient:
        """An HTTP client of `/api/v1`, authorised as `user` (or with `token`)."""
        headers = kwargs.pop("headers", {})
        secret = token or (self.tokens[user] if user else None)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return httpx.AsyncClient(base_url=f"{self.url}/api/v1", headers=headers, timeout=kwargs.pop("timeout", 60),
                                 **kwargs)

    async def browser(self, user: str) -> ChainlitClient:
        return await ChainlitClient.login(self.url, user, PASSWORDS[user])

    def stop(self) -> None:
        self.running.stop()
        self.llm.stop()

    def log_text(self) -> str:
        self.running.log.flush()
        return self.running.log_path.read_text(errors="replace")

    async def settled(self, timeout: float = 20) -> None:
        async with httpx.AsyncClient(base_url=self.url) as http:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                journal = (await http.get("/health")).json()["journal"]
                if journal["pending"] == 0:
                    assert journal["rejected"] == 0, journal
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"writes still pending after {timeout}s: {journal}")


def _database_url(request, backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'data' / 'chainlit.db'}"
    return request.getfixturevalue("postgres_databases").create()


def launch(request, tmp: Path, backend: str, database_url: str | None = None, **extra_env: str) -> ApiApp:
    llm = OpenAICompatServer().start()
    env = {"LLM_MODELS": MODELS, "LLM_GENERATE_TITLES": "false", **extra_env}
    running = RunningApp(tmp, database_url or _database_url(request, backend, tmp), llm.base_url, **env)
    try:
        running.wait_ready()
        for name, password in PASSWORDS.items():
            run_sync(running.add_user(name, password))
        return ApiApp(running, backend, llm)
    except BaseException:
        running.stop()
        llm.stop()
        raise


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_app(request, tmp_path_factory):
    app = launch(request, tmp_path_factory.mktemp(f"api-{request.param}"), request.param,
                 **getattr(request.module, "APP_ENV", {}))
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def llm(api_app):
    api_app.llm.reset()
    return api_app.llm
