"""A database written by Chainlit 2.12's own layers — its SQLAlchemyDataLayer on its
documented PostgreSQL schema, its DynamoDBDataLayer on its documented table — copies into
ours (`copy --from chainlit+URL,STORAGE`) with every user, thread, step, element (bytes) and
rating, and the source is left exactly as it was (read, never migrated or upgraded)."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from chainlit.element import File
from chainlit.types import Feedback
from chainlit.user import User
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from datalayers.migrations.chainlit_reference import CHAINLIT_POSTGRES_DDL
from tests.ops.dataset import blob, dump

# Columns Chainlit's later docs add (what 2.12 writes for steps and elements).
LATER_COLUMNS = ('ALTER TABLE steps ADD COLUMN IF NOT EXISTS "command" TEXT',
                 'ALTER TABLE steps ADD COLUMN IF NOT EXISTS "defaultOpen" BOOLEAN',
                 'ALTER TABLE steps ADD COLUMN IF NOT EXISTS "modes" JSONB',
                 'ALTER TABLE elements ADD COLUMN IF NOT EXISTS "props" JSONB',
                 'ALTER TABLE elements ADD COLUMN IF NOT EXISTS "autoPlay" BOOLEAN',
                 'ALTER TABLE elements ADD COLUMN IF NOT EXISTS "playerConfig" JSONB')


def _step(thread_id: str, n: int, kind: str, **extra) -> dict:
    return {"id": str(uuid.uuid4()), "threadId": thread_id, "name": kind, "type": kind, "streaming": False,
            "input": "", "output": f"réponse {n} ✓", "metadata": {"n": n, "nested": {"a": [1, "b"]}},
            "createdAt": f"2025-03-0{n}T08:00:00.000000Z", **extra}


async def write_with_chainlit(theirs) -> dict:
    """Users, threads, steps, a rating and a file, through Chainlit's layer; the expected result."""
    expected: dict = {"threads": {}}
    alice = await theirs.create_user(User(identifier="alice@example.org", metadata={"plan": "pro"}))
    await theirs.create_user(User(identifier="bob", metadata={}))
    for n in (1, 2):
        thread_id = str(uuid.uuid4())
        await theirs.update_thread(thread_id, name=f"Fil n°{n}", user_id=alice.id, metadata={"k": n},
                                   tags=["old", "t"])
        question = _step(thread_id, n, "user_message")
        answer = _step(thread_id, n + 2, "assistant_message", parentId=None)
        await theirs.create_step(question)
        await theirs.create_step(answer)
        await theirs.upsert_feedback(Feedback(forId=answer["id"], threadId=thread_id, value=n % 2, comment="hm"))
        element = File(name=f"notes {n}.bin", content=blob(n, 2000), thread_id=thread_id, for_id=answer["id"],
                       mime="application/octet-stream")
        await theirs.create_element(element)
        expected["threads"][thread_id] = {"name": f"Fil n°{n}", "steps": [question, answer],
                                          "feedback": {answer["id"]: (n % 2, "hm")}, "element": element.id,
                                          "bytes": hashlib.sha256(blob(n, 2000)).hexdigest()}
    return expected


def check_copied(copied: dict, expected: dict) -> None:
    assert copied["users"] == {"alice@example.org": {"plan": "pro"}, "bob": {}}
    assert set(copied["threads"]) == set(expected["threads"])
    for thread_id, want in expected["threads"].items():
        got = copied["threads"][thread_id]
        assert got["name"] == want["name"] and got["owner"] == "alice@example.org"
        assert got["tags"] == ["old", "t"] and got["metadata"]["k"] in (1, 2)
        assert [s["id"] for s in got["steps"].values()] == [s["id"] for s in want["steps"]]
        for step in want["steps"]:
            stored = got["steps"][step["id"]]
            for key in ("type", "name", "output", "metadata", "createdAt"):
                assert stored[key] == step[key], key
        # Chainlit keeps no activity time: the newest of the thread's creation and its messages.
        assert got["updatedAt"] == max(got["createdAt"], want["steps"][-1]["createdAt"])
        assert got["feedback"] == want["feedback"]
        [element] = got["elements"].values()
        assert element["id"] == want["element"] and element["bytes"] == want["bytes"]


async def _sql_snapshot(url: str) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tables = (await conn.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"))).all()
            columns = (await conn.execute(text(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY 1, 2"))).all()
            rows = []
            for (name,) in tables:
                rows += [(name, json.dumps(dict(r._mapping), default=str, sort_keys=True))
                         for r in (await conn.execute(text(f'SELECT * FROM "{name}"'))).all()]
        return [tables, columns, sorted(rows)]
    finally:
        await engine.dispose()


async def test_chainlit_sqlalchemy_database_copies_into_ours(backends, cli, chainlit_context):
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer as ChainlitSQLAlchemyDataLayer

    from storage.local import LocalStorage

    url = backends.database("postgresql")
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for statement in (*CHAINLIT_POSTGRES_DDL, *LATER_COLUMNS):
            await conn.execute(text(statement))
    await engine.dispose()
    storage_url = await backends.storage("local")
    storage = LocalStorage.from_url(storage_url, data_dir=backends.tmp, secret=b"k" * 32)
    theirs = ChainlitSQLAlchemyDataLayer(conninfo=url, storage_provider=storage)
    expected = await write_with_chainlit(theirs)
    await theirs.engine.dispose()
    before = await _sql_snapshot(url)

    target = await backends.endpoint("mariadb", "s3")
    code, summary, err = await cli("--json", "copy", "--from", f"chainlit+{url},{storage_url}", "--to", target)
    assert code == 0, err
    assert summary["threads"]["created"] == 2 and summary["steps"]["created"] == 4 and summary["blobs"]["uploaded"] == 2
    assert await _sql_snapshot(url) == before  # not migrated, not written
    async with backends.open(target) as layer:
        check_copied(await dump(layer), expected)
    code, again, _ = await cli("--json", "copy", "--from", f"chainlit+{url},{storage_url}", "--to", target)
    assert code == 0 and again["changes"] == 0, again


@pytest.fixture
def chainlit_table(backends, moto_endpoint):
    import boto3

    import datalayers.dynamodb as dynamodb_module

    backends.request.getfixturevalue("atomic_moto_dynamodb")
    name = f"chainlit-{uuid.uuid4().hex[:8]}"
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_endpoint)
    properties = dynamodb_module.load_table_template()
    client.create_table(  # Chainlit's documented table, as Chainlit users have it
        TableName=name, AttributeDefinitions=properties["AttributeDefinitions"], KeySchema=properties["KeySchema"],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[{**properties["GlobalSecondaryIndexes"][0],
                                 "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name"]}}])
    yield name, client
    client.close()


def _table_snapshot(client, name: str) -> list:
    items, kwargs = [], {"TableName": name}
    while True:
        page = client.scan(**kwargs)
        items += [json.dumps(i, sort_keys=True) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    table = client.describe_table(TableName=name)["Table"]
    return [sorted(items), json.dumps(table["GlobalSecondaryIndexes"][0]["Projection"], sort_keys=True)]


async def test_chainlit_dynamodb_table_copies_into_ours(backends, cli, chainlit_table, moto_endpoint, chainlit_context):
    from chainlit.data.dynamodb import DynamoDBDataLayer as ChainlitDynamoDBDataLayer

    from storage.local import LocalStorage

    name, client = chainlit_table
    storage_url = await backends.storage("local")
    storage = LocalStorage.from_url(storage_url, data_dir=backends.tmp, secret=b"k" * 32)
    theirs = ChainlitDynamoDBDataLayer(table_name=name, client=client, storage_provider=storage)
    expected = await write_with_chainlit(theirs)
    before = _table_snapshot(client, name)

    source = f"chainlit+dynamodb://{name}?region=us-east-1&endpoint_url={moto_endpoint},{storage_url}"
    target = await backends.endpoint("sqlite", "local")
    code, summary, err = await cli("--json", "copy", "--from", source, "--to", target)
    assert code == 0, err
    assert summary["threads"]["created"] == 2 and summary["blobs"]["uploaded"] == 2, summary
    assert _table_snapshot(client, name) == before  # the table was only read
    async with backends.open(target) as layer:
        check_copied(await dump(layer), expected)
