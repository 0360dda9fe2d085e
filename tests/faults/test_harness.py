"""The fault harness, each piece on its own: a test of an outage means nothing unless the
outage is real (the database really refuses, the lock really blocks, moto really comes back
with its tables) and the client and the checks really see a conversation that went right.
These pass on the app as it is, with or without the write journal."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time

import pytest

from .backends import AWS_TEST_ENV, BACKENDS
from .chainlit_client import ChainlitClient
from .checks import close_data_layer, open_data_layer, read_thread, thread_problems, wait_drained
from .sqlite_lock import SQLiteLock

pytestmark = pytest.mark.faults


async def _pg_connect(port: int):
    import asyncpg

    return await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=5)


async def test_throwaway_cluster_refuses_while_stopped_and_keeps_its_data(make_backend):
    cluster = make_backend("postgresql").cluster
    if os.geteuid() == 0:
        assert cluster.data.stat().st_uid != 0, "as root, the cluster must belong to the postgres user"
    conn = await _pg_connect(cluster.port)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the outage')")
    await conn.close()

    for mode in ("fast", "immediate"):
        await asyncio.to_thread(cluster.stop, mode)
        with pytest.raises(OSError):  # ConnectionRefusedError: nothing listens any more
            await _pg_connect(cluster.port)
        await asyncio.to_thread(cluster.start)
        conn = await _pg_connect(cluster.port)
        assert await conn.fetchval("SELECT v FROM kept") == "before the outage", mode
        await conn.close()

    root = cluster.root
    cluster.destroy()
    assert not root.exists() and not cluster.accepting()


def test_sqlite_lock_blocks_writers_until_released(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path, isolation_level=None, timeout=0.3)
    db.execute("PRAGMA journal_mode=WAL")  # as the app's data layer opens it
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES ('a')")

    lock = SQLiteLock(path)
    lock.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            db.execute("INSERT INTO t VALUES ('b')")
        assert time.monotonic() - started >= 0.25, "the writer should have waited its busy timeout"
        # WAL readers are not blocked: an outage of writes only, as the tests intend.
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        lock.release()
    assert lock.held_seconds is not None and lock.proc is None
    db.execute("INSERT INTO t VALUES ('b')")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (2,)

    # If the test process dies, the holder sees its stdin close and lets go.
    lock.acquire()
    holder = lock.proc
    holder.stdin.close()
    holder.wait(timeout=10)
    lock.proc = None
    db.execute("INSERT INTO t VALUES ('c')")
    db.close()


def _dynamodb(endpoint: str):
    import boto3
    from botocore.config import Config

    # No retries: the test must see each answer the server gives.
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=3, read_timeout=5))


def _make_table(client, name: str) -> None:
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    client.put_item(TableName=name, Item={"pk": {"S": "kept"}})


def test_moto_restarts_on_the_same_port_with_its_tables(moto_server):
    from botocore.exceptions import EndpointConnectionError

    client = _dynamodb(moto_server.url)
    _make_table(client, "harness_restart")
    # A connection kept alive across the stop must be cut too, or the "outage" would still
    # answer requests on it.
    # (moto's dashboard page: cheap whatever the other tests of this process stored in moto,
    # unlike /moto-api/data.json, which serialises all of it.)
    kept = socket.create_connection(("127.0.0.1", moto_server.port), timeout=5)
    kept.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: moto\r\n\r\n")
    assert kept.recv(12).startswith(b"HTTP/1.1 200")

    moto_server.stop()
    try:
        with pytest.raises(EndpointConnectionError):
            client.list_tables()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", moto_server.port), timeout=2)
        try:
            kept.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: moto\r\n\r\n")
            rest = b""
            while chunk := kept.recv(65536):  # what is left of the first answer, then the end
                rest += chunk
            assert rest.count(b"HTTP/1.1 ") == 0, "a kept-alive connection was served during the outage"
        except (ConnectionResetError, BrokenPipeError):
            pass
    finally:
        kept.close()
        moto_server.start()
    assert "harness_restart" in client.list_tables()["TableNames"]
    assert client.get_item(TableName="harness_restart", Key={"pk": {"S": "kept"}})["Item"] == {"pk": {"S": "kept"}}


def test_fault_proxy_answers_dynamodb_with_throttling_and_server_errors(moto_server):
    import httpx
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

    from .moto_outage import FaultProxy

    _make_table(_dynamodb(moto_server.url), "harness_proxy")
    with FaultProxy(moto_server.url) as proxy:
        client = _dynamodb(proxy.url)
        key = {"pk": {"S": "kept"}}
        assert client.get_item(TableName="harness_proxy", Key=key)["Item"] == key

        def error_of(call) -> tuple[str, int]:
            with pytest.raises(ClientError) as info:
                call()
            return info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]

        proxy.set_mode("throttle")
        assert error_of(lambda: client.get_item(TableName="harness_proxy", Key=key)) == ("ThrottlingException", 400)
        proxy.set_mode("error")
        assert error_of(lambda: client.put_item(TableName="harness_proxy", Item=key)) == ("InternalServerError", 500)
        proxy.set_mode("mixed")
        seen = {error_of(lambda: client.query(TableName="harness_proxy", KeyConditionExpression="pk = :k",
                                              ExpressionAttributeValues={":k": {"S": "kept"}}))[0] for _ in range(4)}
        assert seen == {"ThrottlingException", "InternalServerError"}
        # Only DynamoDB calls are refused: anything else still reaches moto.
        assert httpx.get(f"{proxy.url}/moto-api/", timeout=5).status_code == 200

        proxy.set_mode("pass")
        assert client.get_item(TableName="harness_proxy", Key=key)["Item"] == key
        assert proxy.counts["throttle"] >= 3 and proxy.counts["error"] >= 3

        moto_server.stop()  # behind the proxy, moto being down is a connection failure
        try:
            with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
                client.describe_table(TableName="harness_proxy")
        finally:
            moto_server.start()
        assert client.describe_table(TableName="harness_proxy")["Table"]["TableStatus"] == "ACTIVE"


@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_a_conversation_without_outage_is_stored_whole(backend_name, make_backend, start_app, scratch):
    """The control experiment: the client, the app on each backend and the checks agree when
    nothing fails, so an outage test that fails does so because of its outage."""
    backend = make_backend(backend_name)
    app = await start_app(backend)
    client = await ChainlitClient.login(app.url, "admin", app.admin_password())
    layer = None
    try:
        await client.connect()
        for n in (1, 2, 3):
            turn = await client.send(f"control turn {n} on {backend_name}")
            assert turn.reply_author == "Assistant", turn
            assert (turn.reply_text or "").startswith(f"Echo: control turn {n} on {backend_name} "), turn
        assert client.thread_id
        layer = open_data_layer(app.env, scratch)
        drained = await wait_drained(app.url, layer, client.thread_id, client.turns, timeout=60)
        thread = await read_thread(layer, client.thread_id)
        problems = thread_problems(thread, client.thread_id, client.turns, owner="admin")
        assert not problems, f"drained by {drained['by']}:\n" + "\n".join(problems)

        # The thread reopens from the sidebar: a new session resuming it gets its messages.
        reopened = await ChainlitClient.login(app.url, "admin", app.admin_password())
        try:
            await reopened.connect(thread_id=client.thread_id)
            assert "resume_thread_error" not in reopened.by_name, reopened.by_name["resume_thread_error"]
            steps = reopened.by_name["resume_thread"][0]["steps"]
            shown = [s["output"] for s in steps if s["type"] in ("user_message", "assistant_message")]
            assert shown == [t for turn in client.turns for t in (turn.user_text, turn.reply_text)]
        finally:
            await reopened.close()
    finally:
        await client.close()
        if layer is not None:
            await close_data_layer(layer)
