"""`chainlit-persist doctor` against a healthy configuration and against broken ones:
each check says ok / warning / failed and what to fix; exit code 1 when one failed."""

from __future__ import annotations

import socket
import uuid

import pytest

from datalayers.journal import Entry, WriteJournal
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb  # noqa: F401  (fixture)
from tests.ops.helpers_b import run_cli
from tests.servers.openai_compat import Fail, OpenAICompatServer


@pytest.fixture(scope="module")
def model_server():
    with OpenAICompatServer() as server:
        yield server


@pytest.fixture
def env(tmp_path, monkeypatch, model_server):
    """A healthy SQLite + local files + model configuration; tests break one part."""
    values = {"APP_DATA_DIR": str(tmp_path / "data"), "CHAINLIT_AUTH_SECRET": "s" * 48, "KNOWLEDGE_URL": "off",
              "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", "STORAGE_URL": (tmp_path / "blobs").as_uri(),
              "OPENAI_BASE_URL": model_server.base_url, "OPENAI_API_KEY": "test", "LLM_MODEL": "test-model",
              "WRITE_JOURNAL_PATH": str(tmp_path / "journal.sqlite3")}
    for name in ("LLM_PROVIDER", "DATA_LAYER_CLASS", "STORAGE_CLASS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    model_server.reset()
    return values


async def migrated(url: str) -> None:
    from datalayers.sqlalchemy import SQLAlchemyDataLayer

    layer = SQLAlchemyDataLayer(url)
    await layer.migrate()
    await layer.close()


def by_name(report) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


async def doctor(capsys) -> tuple[int, dict[str, dict], dict]:
    code, report, err = await run_cli(["--json", "doctor", "--timeout", "20"], capsys)
    assert isinstance(report, dict), (report, err)
    return code, by_name(report), report


async def test_healthy_configuration(env, capsys, model_server, tmp_path):
    await migrated(env["DATABASE_URL"])
    code, checks, report = await doctor(capsys)
    assert code == 0 and report["ok"] is True, checks
    assert [c["status"] for c in checks.values()] == ["ok"] * 7
    assert "off" in checks["knowledge"]["detail"]
    assert "schema at revision" in checks["database"]["detail"] and "(head)" in checks["database"]["detail"]
    assert "write, read and delete work" in checks["storage"]["detail"]
    assert "signed" in checks["signing"]["detail"]
    assert "answers with model test-model" in checks["model"]["detail"]
    [request] = model_server.chat_requests()
    assert request["model"] == "test-model" and request["max_tokens"] == 1
    # The probe is gone again.
    assert not [p for p in (tmp_path / "blobs" / "objects").rglob("*") if p.is_file()]

    code, text, _ = await run_cli(["doctor"], capsys)
    assert code == 0 and text.strip().endswith("all checks passed")


async def test_dynamodb_and_s3_healthy_then_missing_table_and_bucket(env, capsys, monkeypatch, moto_endpoint,
                                                                      atomic_moto_dynamodb):  # noqa: F811
    import aioboto3

    from datalayers.dynamodb import DynamoDBDataLayer

    table, bucket = f"doctor-{uuid.uuid4().hex[:8]}", f"doctor-{uuid.uuid4().hex[:12]}"
    url = f"dynamodb://{table}?region=us-east-1&endpoint_url={moto_endpoint}"
    layer = DynamoDBDataLayer.from_url(url)
    await layer.provision()
    await layer.close()
    async with aioboto3.Session().client("s3", endpoint_url=moto_endpoint, region_name="us-east-1") as s3:
        await s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("STORAGE_URL", f"s3://{bucket}?region=us-east-1&endpoint_url={moto_endpoint}")
    code, checks, _ = await doctor(capsys)
    assert code == 0, checks
    assert "table ACTIVE" in checks["database"]["detail"]
    assert checks["signing"] == {"name": "signing", "status": "ok", "detail": "a signed read link fetches the file",
                                 "fix": ""}

    monkeypatch.setenv("DATABASE_URL", url.replace(table, table + "-missing"))
    monkeypatch.setenv("STORAGE_URL", f"s3://{bucket}-missing?region=us-east-1&endpoint_url={moto_endpoint}")
    code, checks, _ = await doctor(capsys)
    assert code == 1
    assert checks["database"]["status"] == "failed" and "does not exist" in checks["database"]["detail"]
    assert "provision" in checks["database"]["fix"]
    assert checks["storage"]["status"] == "failed" and "does not exist" in checks["storage"]["detail"]
    assert "bucket" in checks["storage"]["fix"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_postgresql(env, capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://postgres:secret@127.0.0.1:{free_port()}/test")
    code, checks, _ = await doctor(capsys)
    assert code == 1
    database = checks["database"]
    assert database["status"] == "failed" and "unreachable" in database["detail"]
    assert "secret" not in database["detail"] and "DATABASE_URL" in database["fix"]
    assert checks["storage"]["status"] == "ok"  # the other checks still run


async def test_postgresql_without_the_schema(env, capsys, monkeypatch, postgres_databases):
    url = postgres_databases.create()
    monkeypatch.setenv("DATABASE_URL", url)
    code, checks, _ = await doctor(capsys)
    assert code == 1 and "no schema" in checks["database"]["detail"]
    assert "chainlit-persist migrate" in checks["database"]["fix"]
    await migrated(url)
    code, checks, _ = await doctor(capsys)
    assert code == 0 and checks["database"]["status"] == "ok"


async def test_a_model_server_that_fails(env, capsys, model_server):
    await migrated(env["DATABASE_URL"])
    model_server.script(Fail(500, "the model fell over"))
    code, checks, _ = await doctor(capsys)
    assert code == 1
    model = checks["model"]
    assert model["status"] == "failed" and "500" in model["detail"] and "test-model" in model["detail"]
    assert "OPENAI_BASE_URL" in model["fix"]


async def test_offline_provider_and_pending_journal(env, capsys, monkeypatch):
    await migrated(env["DATABASE_URL"])
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("OPENAI_API_KEY")
    journal = WriteJournal(env["WRITE_JOURNAL_PATH"])
    await journal.open()
    await journal.append(Entry("t1", "thread", {"id": "t1", "name": "waiting"}, "alice"))
    await journal.close()
    code, checks, _ = await doctor(capsys)
    assert code == 0  # warnings only
    assert checks["model"]["status"] == "ok" and "offline" in checks["model"]["detail"]
    assert checks["journal"]["status"] == "warning" and "1 write(s) waiting" in checks["journal"]["detail"]


async def test_settings_that_do_not_parse(env, capsys, monkeypatch):
    monkeypatch.setenv("WRITE_JOURNAL_SYNC", "sometimes")
    code, checks, _ = await doctor(capsys)
    assert code == 1 and list(checks) == ["settings"]
    assert "WRITE_JOURNAL_SYNC" in checks["settings"]["detail"]


async def test_missing_sqlite_file_is_not_created(env, capsys, tmp_path):
    code, checks, _ = await doctor(capsys)
    assert code == 1 and "no database file" in checks["database"]["detail"]
    assert not (tmp_path / "app.db").exists()


async def test_knowledge_index_answers(env, capsys, monkeypatch, tmp_path):
    from knowledge.index import Chunk

    await migrated(env["DATABASE_URL"])
    url = f"sqlite:///{tmp_path / 'knowledge.sqlite3'}"
    monkeypatch.setenv("KNOWLEDGE_URL", url)
    code, checks, _ = await doctor(capsys)
    assert code == 0 and "none yet" in checks["knowledge"]["detail"]
    assert not (tmp_path / "knowledge.sqlite3").exists()

    from settings import load_settings

    index = load_settings(export_secret=False).build_knowledge_index()
    await index.start(None)
    await index.add([Chunk(id="d:0", user_id="u", thread_id="t", document_id="d", ordinal=0, text="x", source="f")])
    await index.close()
    code, checks, _ = await doctor(capsys)
    assert code == 0 and "answers, 1 chunk(s)" in checks["knowledge"]["detail"]
