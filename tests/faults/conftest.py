"""Fixtures of the fault tests: the databases and their outages, the real app, and cleanup
of everything they start, whether the test passes or not.

Prerequisites (PostgreSQL server binaries, moto, python-socketio with aiohttp) missing:
a skip on a developer machine, a failure under CI=true (`tests.conftest.unavailable`).
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from tests.conftest import unavailable


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "faults: outage tests that start the real app and take its database away "
        "(select with -m faults, leave out with -m 'not faults')",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the test item, so fixtures know at teardown whether the
    # test failed and print the app's log for it.
    report = yield
    setattr(item, f"faults_report_{report.when}", report)
    return report


def _test_failed(request) -> bool:
    report = getattr(request.node, "faults_report_call", None)
    return report is None or report.failed


def require_modules(*names: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        unavailable(f"the fault tests need {', '.join(missing)} (pip install -e '.[dev]')")


@pytest.fixture
def aws_test_env(monkeypatch):
    """Fake AWS credentials in this process for one test: the checks read DynamoDB through
    the data layer, which takes credentials from the environment."""
    from .backends import AWS_TEST_ENV

    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return AWS_TEST_ENV


@pytest.fixture(scope="session")
def moto_server():
    """One in-process moto server for the session (see moto_outage.py for why in-process)."""
    require_modules("moto", "werkzeug", "aioboto3")
    from .moto_outage import StoppableMotoServer

    server = StoppableMotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_backend(request, tmp_path):
    """`make_backend(name)`: a fresh database of that kind (see backends.BACKENDS), released
    at the end of the test whatever happened, its outage ended first."""
    from .backends import DynamoDBDownBackend, DynamoDBFaultsBackend, PostgresBackend, SQLiteBackend
    from .postgres_cluster import missing_prerequisite

    made = []

    def make(name: str, **options):
        if name == "sqlite":
            backend = SQLiteBackend(tmp_path)
        elif name == "postgresql":
            reason = missing_prerequisite()
            if reason:
                unavailable(reason)
            require_modules("asyncpg")
            backend = PostgresBackend(**options)
        elif name == "dynamodb-down":
            request.getfixturevalue("aws_test_env")
            backend = DynamoDBDownBackend(request.getfixturevalue("moto_server"))
        elif name == "dynamodb-throttled":
            request.getfixturevalue("aws_test_env")
            backend = DynamoDBFaultsBackend(request.getfixturevalue("moto_server"), **options)
        else:
            raise ValueError(f"unknown backend {name!r}")
        made.append(backend)
        return backend

    yield make
    failed = _test_failed(request)
    errors = []
    for backend in made:
        if failed:
            print(f"\n--- backend: {backend.describe()}")
        try:
            backend.close()
        except Exception as exc:  # release the others all the same
            errors.append(f"{backend.name}: {exc!r}")
    assert not errors, f"could not release: {errors}"


@pytest.fixture(scope="session")
def llm_server():
    """The OpenAI-compatible test server as the app's model. It answers at once (`Echo: ...`),
    where the offline model takes about a second per answer; and with a model configured the
    app also writes a model-made thread title, one more write that must survive an outage."""
    from tests.servers.openai_compat import OpenAICompatServer

    with OpenAICompatServer() as server:
        yield server


@pytest.fixture
def start_app(request, tmp_path, llm_server):
    """`await start_app(backend, data_dir=None)`: the real app (`chainlit run app.py`) on the
    backend's database, ready. Every app started is stopped at the end, and its log printed
    when the test failed. `data_dir` reuses an earlier app's data folder (and so its journal)."""
    require_modules("socketio", "aiohttp", "openai")
    from tests.e2e.app_runner import RunningApp

    apps: list[RunningApp] = []

    async def start(backend, data_dir: Path | None = None, **extra_env: str) -> RunningApp:
        folder = tmp_path / f"app{len(apps) + 1}"
        folder.mkdir()
        env = {**backend.app_env, **extra_env}
        if data_dir is not None:
            env["APP_DATA_DIR"] = str(data_dir)
        app = RunningApp(folder, backend.database_url, llm_server.base_url, **env)
        apps.append(app)
        await asyncio.to_thread(app.wait_ready)
        return app

    yield start
    failed = _test_failed(request)
    for number, app in enumerate(apps, 1):
        app.stop()
        if failed:
            log = app.log_path.read_text(errors="replace")[-5000:]
            print(f"\n--- log of app {number} (exit {app.proc.returncode}), last lines:\n{log}")


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A folder for the checks' own data layer (never the app's)."""
    path = tmp_path / "check"
    path.mkdir()
    return path

