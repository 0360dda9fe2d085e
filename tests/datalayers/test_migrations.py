"""Migrations: a fresh database, an upgrade of Chainlit's documented schema with rows in it,
and agreement between the migrations, the SQLAlchemy tables and the DDL in sql/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from chainlit.types import Pagination, ThreadFilter
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from datalayers import migrations
from datalayers.sql_schema import CHAINLIT_POSTGRES_DDL, DIALECTS, POSTGRES_SEARCH_INDEXES, ddl, metadata
from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.conftest import SQL_BACKENDS

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
USER_ID = "11111111-1111-4111-8111-111111111111"
THREAD_ID = "22222222-2222-4222-8222-222222222222"
STEP_ID = "33333333-3333-4333-8333-333333333333"
ELEMENT_ID = "44444444-4444-4444-8444-444444444444"
FEEDBACK_ID = "55555555-5555-4555-8555-555555555555"


def _diffs(connection):
    def include_object(obj, name, type_, reflected, compare_to):
        return not (type_ == "index" and name in POSTGRES_SEARCH_INDEXES)

    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
    return compare_metadata(context, metadata)


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_fresh_database_migrates_to_exactly_the_schema(backend, sql_url_factory):
    engine = create_async_engine(sql_url_factory(backend).replace("postgresql://", "postgresql+asyncpg://"))
    try:
        await migrations.upgrade(engine)
        await migrations.upgrade(engine)  # idempotent: a second run is a no-op
        async with engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
            assert await conn.run_sync(migrations.current_revision_sync) == "0003"
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            if backend == "postgresql":
                indexes = {i["name"] for t in ("steps", "threads") for i in await conn.run_sync(
                    lambda c, t=t: inspect(c).get_indexes(t))}
                assert set(POSTGRES_SEARCH_INDEXES) <= indexes
        assert {"users", "threads", "steps", "elements", "feedbacks"} <= names
    finally:
        await engine.dispose()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sql_folder_holds_the_generated_ddl(dialect):
    path = SQL_DIR / f"{dialect}.sql"
    assert path.exists(), f"{path} missing: run `make ddl`"
    assert path.read_text() == ddl(dialect), f"{path} is stale: run `make ddl`"


async def test_upgrade_of_a_chainlit_postgres_database_keeps_every_row(postgres_databases):
    url = postgres_databases.create()
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for statement in CHAINLIT_POSTGRES_DDL:
            await conn.execute(text(statement))
        await conn.execute(text('INSERT INTO users VALUES (:id, :identifier, CAST(:metadata AS JSONB), :created)'),
                           {"id": USER_ID, "identifier": "legacy@example.com", "metadata": json.dumps({"role": "admin"}),
                            "created": "2024-03-01T10:00:00.123Z"})
        await conn.execute(text('INSERT INTO threads VALUES (:id, :created, :name, :user, :identifier, :tags, CAST(:metadata AS JSONB))'),
                           {"id": THREAD_ID, "created": "2024-03-01T10:00:01Z", "name": "Legacy thread", "user": USER_ID,
                            "identifier": "legacy@example.com", "tags": ["old", "kept"], "metadata": json.dumps({"k": "v"})})
        await conn.execute(text('INSERT INTO steps ("id","name","type","threadId","streaming","output","createdAt","showInput","tags") '
                                'VALUES (:id, :name, :type, :thread, false, :output, :created, :show, :tags)'),
                           {"id": STEP_ID, "name": "user", "type": "user_message", "thread": THREAD_ID,
                            "output": "an old question about budgets", "created": "2024-03-01T10:00:02.5Z",
                            "show": "json", "tags": ["t"]})
        await conn.execute(text('INSERT INTO elements ("id","threadId","type","name","objectKey","forId","mime") '
                                'VALUES (:id, :thread, :type, :name, :key, :for_id, :mime)'),
                           {"id": ELEMENT_ID, "thread": THREAD_ID, "type": "file", "name": "old.txt",
                            "key": "legacy/old.txt", "for_id": STEP_ID, "mime": "text/plain"})
        await conn.execute(text('INSERT INTO feedbacks VALUES (:id, :for_id, :thread, 1, :comment)'),
                           {"id": FEEDBACK_ID, "for_id": STEP_ID, "thread": THREAD_ID, "comment": "good"})
    await engine.dispose()

    storage = MemoryStorage()
    await storage.upload_file("legacy/old.txt", b"old bytes")
    layer = SQLAlchemyDataLayer(url, storage=storage)
    try:
        await layer.migrate()
        async with layer.engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
        thread = await layer.get_thread(THREAD_ID)
        assert thread["name"] == "Legacy thread"
        assert thread["userIdentifier"] == "legacy@example.com"
        assert thread["tags"] == ["old", "kept"]
        assert thread["metadata"] == {"k": "v"}
        assert thread["createdAt"] == "2024-03-01T10:00:01.000000Z"
        [legacy_step] = thread["steps"]
        assert legacy_step["output"] == "an old question about budgets"
        assert legacy_step["createdAt"] == "2024-03-01T10:00:02.500000Z"
        assert legacy_step["tags"] == ["t"]
        assert legacy_step["feedback"]["value"] == 1 and legacy_step["feedback"]["comment"] == "good"
        [element] = thread["elements"]
        assert element["url"] == await storage.get_read_url("legacy/old.txt")
        user = await layer.get_user("legacy@example.com")
        assert user.id == USER_ID and user.metadata == {"role": "admin"}
        page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=USER_ID, search="BUDGET", feedback=1))
        assert [t["id"] for t in page.data] == [THREAD_ID]
        # New writes with keys the old DDL lacked now work, and a malformed id is "not found".
        await layer.create_step({"id": "new-step", "threadId": THREAD_ID, "name": "a", "type": "assistant_message",
                                 "output": "new", "autoCollapse": True, "createdAt": "2024-03-02T00:00:00Z"})
        assert (await layer.get_thread(THREAD_ID))["steps"][-1]["autoCollapse"] is True
        assert await layer.get_thread("not-a-uuid") is None
    finally:
        await layer.close()
