"""What the retention, erasure and sweep tests share: a deployment on one backend (a new
database — SQLite, PostgreSQL, MariaDB or a DynamoDB table on moto — and blob storage on
local files or S3 on moto), the same settings the CLI reads, and ways to look at the stores
directly (every row of every table, every item of the table, every key in storage) rather
than through the code under test.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chainlit.element import File
from chainlit.types import Feedback
from chainlit.user import User

from tests.conftest import unavailable

#: (database, storage) pairs: every database on local files, and S3 with one SQL and DynamoDB.
CASES = [
    pytest.param(("sqlite", "local"), id="sqlite-local"),
    pytest.param(("postgresql", "local"), id="postgresql-local"),
    pytest.param(("mariadb", "local"), id="mariadb-local"),
    pytest.param(("dynamodb", "local"), id="dynamodb-local"),
    pytest.param(("sqlite", "s3"), id="sqlite-s3"),
    pytest.param(("dynamodb", "s3"), id="dynamodb-s3"),
]
OLD = "2020-01-01T00:00:00.000000Z"  # long before any retention window


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Seeded:
    """A thread the tests made, and everything that hangs off it."""

    thread_id: str
    owner: str
    step_ids: list[str] = field(default_factory=list)
    element_ids: list[str] = field(default_factory=list)
    blob_keys: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [self.thread_id, *self.step_ids, *self.element_ids]


@dataclass
class World:
    database: str
    storage_kind: str
    env: dict[str, str]
    tmp: Path
    endpoint: str | None = None
    bucket: str | None = None

    # ---- building the app's stores -----------------------------------------------------
    def settings(self):
        from settings import load_settings

        return load_settings(self.env, export_secret=False)

    async def layer(self):
        """The app's data layer and storage from the settings (in-memory journal)."""
        from dataclasses import replace

        layer = replace(self.settings(), journal_path=None).build_data_layer()
        if self.database == "dynamodb":
            await layer.provision()
        return layer

    async def knowledge(self):
        index = self.settings().build_knowledge_index()
        await index.start(None)
        return index

    # ---- seeding -------------------------------------------------------------------------
    async def seed(self, layer, user, *, tags: list[str] | None = None, old: bool = True, files: int = 1,
                   knowledge=None) -> Seeded:
        thread = Seeded(new_id(), user.identifier)
        await layer.update_thread(thread.thread_id, name="a thread", user_id=user.id, tags=tags)
        for n in range(2):
            step = {"id": new_id(), "threadId": thread.thread_id, "name": "Assistant", "type": "assistant_message",
                    "streaming": False, "input": "", "output": f"message {n}", "metadata": {},
                    "createdAt": f"2026-01-01T00:00:0{n}.000000Z"}
            await layer.create_step(step)
            thread.step_ids.append(step["id"])
        await layer.flush()
        await layer.upsert_feedback(Feedback(forId=thread.step_ids[1], threadId=thread.thread_id, value=1))
        for n in range(files):
            element = File(name=f"notes {n}.txt", content=f"bytes {n}".encode(), thread_id=thread.thread_id,
                           for_id=thread.step_ids[0], mime="text/plain")
            await layer.create_element(element)
            await layer.flush()
            stored = await layer.get_element(thread.thread_id, element.id)
            thread.element_ids.append(element.id)
            thread.blob_keys.append(stored["objectKey"])
        await layer.flush()
        if old:
            await self.age(layer, thread.thread_id, OLD)
        if knowledge is not None:
            from knowledge.index import Chunk

            await knowledge.add([Chunk(id=f"{thread.element_ids[0]}:0", user_id=user.id, thread_id=thread.thread_id,
                                       document_id=thread.element_ids[0], ordinal=0, text="retention words",
                                       source="notes.txt")])
        return thread

    async def user(self, layer, name: str | None = None):
        return await layer.create_user(User(identifier=name or f"user-{new_id()[:8]}", metadata={}))

    async def age(self, layer, thread_id: str, when: str) -> None:
        """Make a thread's last activity `when`, directly in the store."""
        if self.database == "dynamodb":
            from datalayers.dynamodb.items import activity_sort_key, serialize, thread_key

            await layer.table.call("update_item", "test age", {}, TableName=layer.table_name,
                                   Key=serialize(thread_key(thread_id)),
                                   UpdateExpression="SET updatedAt = :w, UserThreadSK = :s",
                                   ExpressionAttributeValues=serialize({":w": when,
                                                                        ":s": activity_sort_key(when, thread_id)}))
            return
        from sqlalchemy import update

        from datalayers.sqlalchemy.schema import threads

        async with layer.engine.begin() as conn:
            await conn.execute(update(threads).where(threads.c.id == thread_id).values(updatedAt=when))

    # ---- looking at the stores directly --------------------------------------------------
    async def rows(self, layer) -> list[str]:
        """Every row of every table (SQL) or every item of the table (DynamoDB), as text."""
        if self.database == "dynamodb":
            import aioboto3

            from datalayers.dynamodb.items import deserialize

            found = []
            async with aioboto3.Session().client("dynamodb", endpoint_url=self.endpoint,
                                                 region_name="us-east-1") as client:
                kwargs: dict[str, Any] = {"TableName": layer.table_name}
                while True:
                    page = await client.scan(**kwargs)
                    found += [json.dumps(deserialize(i), default=str, sort_keys=True) for i in page["Items"]]
                    if "LastEvaluatedKey" not in page:
                        return found
                    kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        from sqlalchemy import select

        from datalayers.sqlalchemy.schema import TABLES

        found = []
        async with layer.engine.connect() as conn:
            for table in TABLES:
                for row in (await conn.execute(select(table))).all():
                    found.append(f"{table.name}: " + json.dumps(dict(row._mapping), default=str, sort_keys=True))
        return found

    async def table_counts(self, layer) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in await self.rows(layer):
            if self.database == "dynamodb":
                sk = json.loads(row)["SK"]
                kind = sk.split("#", 1)[0]
            else:
                kind = row.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    async def blob_keys(self) -> set[str]:
        """Every object in storage, listed with the backend's own tools."""
        if self.storage_kind == "s3":
            import aioboto3

            keys: set[str] = set()
            async with aioboto3.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1") as s3:
                paginator = s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=self.bucket):
                    keys |= {o["Key"] for o in page.get("Contents", [])}
            return keys
        root = self.tmp / "blobs" / "objects"
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    async def leftovers(self, layer, gone: list[Seeded]) -> list[str]:
        """Rows/items that mention an id of a thread that should be gone, and its blobs."""
        ids = [i for thread in gone for i in thread.ids]
        left = [row for row in await self.rows(layer) if any(i in row for i in ids)]
        keys = await self.blob_keys()
        left += [f"blob {k}" for thread in gone for k in thread.blob_keys if k in keys]
        left += [f"blob {k}" for k in keys if any(thread.thread_id in k for thread in gone)]
        return left


async def make_world(request, tmp_path: Path, database: str, storage_kind: str) -> World:
    env = {"APP_DATA_DIR": str(tmp_path / "data"), "CHAINLIT_AUTH_SECRET": "x" * 48,
           "KNOWLEDGE_URL": f"sqlite:///{tmp_path / 'knowledge.sqlite3'}",
           "WRITE_JOURNAL_PATH": str(tmp_path / "app-journal.sqlite3")}
    endpoint = None
    if database == "dynamodb" or storage_kind == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
    if database == "dynamodb":
        request.getfixturevalue("atomic_moto_dynamodb")
        env["DATABASE_URL"] = f"dynamodb://ops-{new_id()[:8]}?region=us-east-1&endpoint_url={endpoint}"
    else:
        env["DATABASE_URL"] = request.getfixturevalue("sql_url_factory")(database)
    bucket = None
    if storage_kind == "s3":
        try:
            import aioboto3
        except ImportError:
            unavailable("aioboto3 is not installed")
        bucket = f"ops-{new_id()[:12]}"
        async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
            await s3.create_bucket(Bucket=bucket)
        env["STORAGE_URL"] = f"s3://{bucket}?region=us-east-1&endpoint_url={endpoint}"
    else:
        env["STORAGE_URL"] = (tmp_path / "blobs").as_uri()
    # The CLI reads the process environment, as it does for an operator.
    for name, value in env.items():
        request.getfixturevalue("monkeypatch").setenv(name, value)
    return World(database, storage_kind, env, tmp_path, endpoint, bucket)


async def run_cli(argv: list[str], capsys) -> tuple[int, Any, str]:
    """`chainlit-persist ARGV` in-process (its own event loop, in a thread, with no
    Chainlit context, as from a shell): (exit code, the JSON document or stdout, stderr)."""
    from ops.cli import main

    capsys.readouterr()
    code = await asyncio.to_thread(contextvars.Context().run, main, argv)
    captured = capsys.readouterr()
    try:
        document = json.loads(captured.out)
    except ValueError:
        document = captured.out
    return code, document, captured.err


async def eventually(check: Callable[[], Awaitable[bool]], what: str, attempts: int = 600) -> None:
    """Wait until `check()` holds (polling; the bound only keeps a broken test from hanging)."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")

