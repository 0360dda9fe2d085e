"""What the shared contract cannot see on DynamoDB: the key layout, items written by
Chainlit's own DynamoDB layer, large items, batched deletes, throttling and unprocessed
batch items, the requests a chat turn and a sidebar page cost, which failures the journal
retries, URL parsing, provisioning from the template, and the shape of responses.

Step, thread and element writes are journaled and return before they are applied: a test
that looks at raw items or counts requests calls `await layer.flush()` first; a write
DynamoDB refuses is rejected by the journal (`layer.status()["rejected"]`, the journal's
`rejected` table) instead of raising from the call."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from decimal import Decimal

import aioboto3
import boto3
import pytest
from botocore.exceptions import ClientError
from chainlit.element import File, Text
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

import datalayers.dynamodb as dynamodb_module
import datalayers.dynamodb.client as client_module
import datalayers.dynamodb.search as search_module
from datalayers.actor import request_user
from datalayers.dynamodb import (
    BLOBS,
    TEMPLATE_PATH,
    DynamoDBDataLayer,
    DynamoDBError,
    deserialize,
    main,
    parse_dynamodb_url,
    serialize,
)
from datalayers.writeback import PERMANENT, TRANSIENT
from datalayers.writes import StepWrite
from storage.memory import MemoryStorage
from tests.contracts.datalayer import new_id, step, timestamp
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb  # noqa: F401  (fixture)

REGION = "us-east-1"
INTERNAL = {"PK", "SK", "UserThreadPK", "UserThreadSK", "_rev", "_blobs", "_feedbackUp", "_feedbackDown",
            "_text", "_textBytes", "_textTruncated", "_textSince"}


def url_for(endpoint: str, table: str) -> str:
    return f"dynamodb://{table}?region={REGION}&endpoint_url={endpoint}"


@pytest.fixture(scope="module")
async def table(moto_endpoint, atomic_moto_dynamodb):  # noqa: F811  (the imported fixture)
    name = f"specific-{uuid.uuid4().hex[:8]}"
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, name))
    await layer.provision()
    await layer.close()
    return name


@pytest.fixture
async def layer(moto_endpoint, table):
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, table), storage=MemoryStorage())
    yield layer
    await layer.close()


@pytest.fixture
async def raw(moto_endpoint):
    """A plain aioboto3 client on the same server, to look at what was stored."""
    async with aioboto3.Session().client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint) as client:
        yield client


async def raw_item(raw, table, pk, sk):
    response = await raw.get_item(TableName=table, Key=serialize({"PK": pk, "SK": sk}), ConsistentRead=True)
    return deserialize(response["Item"]) if "Item" in response else None


async def partition(raw, table, pk):
    response = await raw.query(TableName=table, KeyConditionExpression="PK = :pk",
                               ExpressionAttributeValues={":pk": {"S": pk}}, ConsistentRead=True)
    return [deserialize(i) for i in response["Items"]]


async def new_user(layer):
    return await layer.create_user(User(identifier=f"user-{new_id()}@example.com"))


def rejected_errors(layer) -> list[str]:
    """The errors the journal recorded for the writes it refused (a file journal)."""
    db = sqlite3.connect(layer.writes.journal.path)
    try:
        return [row[0] for row in db.execute("SELECT error FROM rejected ORDER BY seq")]
    finally:
        db.close()


def assert_no_internal(value):
    """No key, index or bookkeeping attribute anywhere in a returned structure."""
    if isinstance(value, dict):
        assert not INTERNAL & set(value), sorted(INTERNAL & set(value))
        for nested in value.values():
            assert_no_internal(nested)
    elif isinstance(value, list):
        for nested in value:
            assert_no_internal(nested)


# ---------------------------------------------------------------------- key layout
async def test_key_layout_of_every_item_type(layer, raw, table):
    user = await new_user(layer)
    thread_id = await _thread(layer, user, name="Layout")
    message = step(thread_id, type="user_message")
    await layer.create_step(message)
    feedback_id = await layer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1))
    element = File(name="a.txt", content=b"x", thread_id=thread_id, for_id=message["id"], mime="text/plain")
    await layer.create_element(element)
    await layer.flush()

    stored_user = await raw_item(raw, table, f"USER#{user.identifier}", "USER")
    assert stored_user["id"] == user.id and stored_user["identifier"] == user.identifier
    assert (await raw_item(raw, table, f"USERID#{user.id}", "LOCATOR"))["identifier"] == user.identifier

    thread = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert thread["UserThreadPK"] == f"USER#{user.identifier}"
    assert thread["UserThreadSK"] == f"TS#{thread['updatedAt']}#{thread_id}"
    assert thread["id"] == thread_id and thread["_feedbackUp"] == 1 and thread["_feedbackDown"] == 0

    stored_step = await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{message['id']}")
    assert stored_step["feedback"]["id"] == feedback_id == f"THREAD#{thread_id}::STEP#{message['id']}"
    assert stored_step["feedback"]["value"] == 1
    assert (await raw_item(raw, table, f"STEP#{message['id']}", "LOCATOR"))["threadId"] == thread_id

    stored_element = await raw_item(raw, table, f"THREAD#{thread_id}", f"ELEMENT#{element.id}")
    assert stored_element["objectKey"] and "url" not in stored_element  # URLs are signed on read
    assert (await raw_item(raw, table, f"ELEMENT#{element.id}", "LOCATOR"))["threadId"] == thread_id


async def _thread(layer, user, **kwargs) -> str:
    thread_id = new_id()
    await layer.update_thread(thread_id, user_id=user.id, **kwargs)
    return thread_id


async def test_new_message_moves_the_index_sort_key(layer, raw, table):
    user = await new_user(layer)
    thread_id = await _thread(layer, user)
    await layer.flush()
    before = (await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD"))["UserThreadSK"]
    await asyncio.sleep(0.002)
    message = step(thread_id)
    await layer.create_step(message)
    await layer.flush()
    after = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert after["UserThreadSK"] > before
    # Neither a rename nor an update of an old message (a rating, a favourite) is activity.
    await layer.update_thread(thread_id, name="renamed")
    await layer.update_step({**message, "output": "edited"})
    await layer.set_step_favorite(dict(message), True)
    await layer.flush()
    assert (await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD"))["UserThreadSK"] == after["UserThreadSK"]


async def test_ids_with_prefix_letters_survive(layer):
    # Chainlit's layer used str.strip("THREAD#"), which eats leading/trailing T, H, R, E, A, D, #.
    user = await new_user(layer)
    thread_id = "THREAD-DEAR-" + new_id() + "-HEART"
    await layer.update_thread(thread_id, name="prefix letters", user_id=user.id)
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    assert [t["id"] for t in page.data] == [thread_id]
    assert (await layer.get_thread(thread_id))["id"] == thread_id


# ---------------------------------------------------------------------- response shape
async def test_responses_carry_no_keys_and_numbers_keep_their_type(layer):
    user = await new_user(layer)
    thread_id = await _thread(layer, user, metadata={"count": 3, "ratio": 0.25, "nested": {"n": [1, 2.5]}})
    data = step(thread_id, generation={"tokenCount": 12, "settings": {"temperature": 0.2, "max_tokens": 256}},
                metadata={"n": 7}, indent=2)
    await layer.create_step(data)
    await layer.upsert_feedback(Feedback(forId=data["id"], threadId=thread_id, value=1))
    await layer.set_step_favorite(dict(data), True)
    element = Text(name="t", content="text", thread_id=thread_id, for_id=data["id"], mime="text/plain")
    await layer.create_element(element)

    thread = await layer.get_thread(thread_id)
    stored = thread["steps"][0]
    assert stored["generation"]["tokenCount"] == 12 and type(stored["generation"]["tokenCount"]) is int
    assert type(stored["generation"]["settings"]["max_tokens"]) is int
    assert stored["generation"]["settings"]["temperature"] == 0.2
    assert type(stored["indent"]) is int and type(stored["metadata"]["n"]) is int
    assert type(stored["feedback"]["value"]) is int
    assert thread["metadata"] == {"count": 3, "ratio": 0.25, "nested": {"n": [1, 2.5]}}
    assert type(thread["metadata"]["count"]) is int and type(thread["metadata"]["nested"]["n"][0]) is int
    json.dumps(thread)  # no Decimal anywhere

    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    favorites = await layer.get_favorite_steps(user.id)
    fetched_element = await layer.get_element(thread_id, element.id)
    for value in (thread, page.data, favorites, fetched_element):
        assert_no_internal(value)
    assert "updatedAt" not in thread and "updatedAt" not in page.data[0]


async def test_non_finite_numbers_are_refused_with_the_field_named(moto_endpoint, table, tmp_path):
    # Journaled: the write returns, and the journal refuses it for good (a retry cannot
    # help), recording the error with the field named.
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, table), storage=MemoryStorage(),
                                       journal=tmp_path / "journal.sqlite3")
    try:
        user = await new_user(layer)
        thread_id = await _thread(layer, user)
        await layer.create_step(step(thread_id, generation={"score": float("nan")}))
        await layer.flush()
        assert layer.status()["rejected"] == 1
        [error] = rejected_errors(layer)
        assert error.startswith("ValueError") and "generation" in error
    finally:
        await layer.close()


# ---------------------------------------------------------------------- Chainlit's items
@pytest.fixture
def chainlit_layer(moto_endpoint, table):
    from chainlit.data.dynamodb import DynamoDBDataLayer as ChainlitDynamoDBDataLayer

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint)
    layer = ChainlitDynamoDBDataLayer(table_name=table, client=client, storage_provider=MemoryStorage())
    yield layer
    client.close()


async def test_items_written_by_chainlits_layer_are_readable(layer, chainlit_layer, chainlit_context):
    identifier = f"legacy-{new_id()}"
    legacy_user = await chainlit_layer.create_user(User(identifier=identifier, metadata={"plan": "pro"}))
    thread_id = new_id()
    await chainlit_layer.update_thread(thread_id, name="Legacy thread", user_id=legacy_user.id,
                                       metadata={"keep": 1, "drop": 2}, tags=["old"])
    question = step(thread_id, type="user_message", output="Where is the LEGACY budget?", createdAt=timestamp(1))
    answer = step(thread_id, type="assistant_message", output="here", createdAt=timestamp(2),
                  generation={"tokenCount": 5})
    await chainlit_layer.create_step(answer)
    await chainlit_layer.create_step(question)
    await chainlit_layer.upsert_feedback(Feedback(forId=answer["id"], threadId=thread_id, value=0, comment="meh"))
    element = File(name="old.txt", content=b"old bytes", thread_id=thread_id, for_id=answer["id"], mime="text/plain")
    await chainlit_layer.create_element(element)

    user = await layer.get_user(identifier)
    assert user.id == identifier and user.metadata == {"plan": "pro"}
    assert await layer.get_thread_author(thread_id) == identifier

    thread = await layer.get_thread(thread_id)
    assert thread["name"] == "Legacy thread" and thread["userIdentifier"] == identifier
    assert thread["metadata"] == {"keep": 1, "drop": 2} and thread["tags"] == ["old"]
    assert [s["id"] for s in thread["steps"]] == [question["id"], answer["id"]]
    assert thread["steps"][1]["feedback"]["value"] == 0 and thread["steps"][1]["feedback"]["comment"] == "meh"
    assert type(thread["steps"][1]["generation"]["tokenCount"]) is int
    assert [e["id"] for e in thread["elements"]] == [element.id]
    assert thread["elements"][0]["url"] == await layer.storage.get_read_url(thread["elements"][0]["objectKey"])
    assert_no_internal(thread)

    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    assert [t["id"] for t in page.data] == [thread_id]
    found = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id, search="legacy BUDGET"))
    assert [t["id"] for t in found.data] == [thread_id]

    # Our writes on Chainlit's items: merge metadata, keep createdAt, take over feedback.
    await layer.update_thread(thread_id, metadata={"drop": None, "new": True})
    updated = await layer.get_thread(thread_id)
    assert updated["metadata"] == {"keep": 1, "new": True} and updated["createdAt"] == thread["createdAt"]
    await layer.upsert_feedback(Feedback(forId=question["id"], threadId=thread_id, value=1))
    for value in (0, 1):  # counters were rebuilt from the existing feedback, both values
        page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id, feedback=value))
        assert [t["id"] for t in page.data] == [thread_id]
    legacy_feedback_id = thread["steps"][1]["feedback"]["id"]
    assert await layer.delete_feedback(legacy_feedback_id) is True
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id, feedback=0))
    assert page.data == []

    # Chainlit's steps have no locator: delete_step finds them in the session's thread.
    chainlit_context.thread_id = thread_id
    await layer.delete_step(question["id"])
    assert [s["id"] for s in (await layer.get_thread(thread_id))["steps"]] == [answer["id"]]

    await layer.delete_thread(thread_id)
    assert await layer.get_thread(thread_id) is None


# ---------------------------------------------------------------------- large items
async def test_large_step_attributes_go_to_blobs_and_come_back_whole(layer, raw, table):
    user = await new_user(layer)
    thread_id = await _thread(layer, user)
    output = "ü" * 150_000 + "needle at the end"
    data = step(thread_id, type="assistant_message", output=output,
                metadata={"context": ["y" * 1000 for _ in range(120)]})
    await layer.create_step(data)
    await layer.flush()

    stored = await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{data['id']}")
    assert set(stored[BLOBS]) >= {"output"} and "output" not in stored
    first_output_key = stored[BLOBS]["output"]
    assert await layer.storage.read_file(first_output_key)
    read = (await layer.get_thread(thread_id))["steps"][0]
    assert read["output"] == output and read["metadata"] == data["metadata"]

    # Search sees text that lives in a blob.
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id, search="NEEDLE AT THE END"))
    assert [t["id"] for t in page.data] == [thread_id]

    # An unrelated change keeps the blob; a new output replaces it and removes the old one.
    await layer.update_step({"id": data["id"], "threadId": thread_id, "language": "de"})
    await layer.flush()
    assert (await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{data['id']}"))[BLOBS]["output"] == first_output_key
    await layer.update_step({"id": data["id"], "threadId": thread_id, "output": "short now"})
    await layer.flush()
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{data['id']}")
    assert stored["output"] == "short now" and "output" not in stored.get(BLOBS, {})
    assert first_output_key not in layer.storage.objects
    assert (await layer.get_thread(thread_id))["steps"][0]["language"] == "de"

    await layer.delete_thread(thread_id)
    await layer.flush()
    assert not [k for k in layer.storage.objects if f"/{thread_id}/" in k]


async def test_large_thread_metadata_round_trips_and_shrinks_back(layer, raw, table):
    user = await new_user(layer)
    session = {"history": ["x" * 1000 for _ in range(350)], "count": 350}  # ~350 KB
    thread_id = await _thread(layer, user, metadata=session)
    await layer.flush()
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    key = stored[BLOBS]["metadata"]
    assert user.identifier in key and thread_id in key  # grouped with the user's other blobs
    assert (await layer.get_thread(thread_id))["metadata"] == session
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    assert page.data[0]["metadata"] == session

    await layer.update_thread(thread_id, metadata={"history": None})
    await layer.flush()
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert stored["metadata"] == {"count": 350} and not stored.get(BLOBS)
    assert key not in layer.storage.objects


async def test_too_large_without_storage_is_a_clear_error(moto_endpoint, table, tmp_path):
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, table),  # no storage client
                                       journal=tmp_path / "journal.sqlite3")
    try:
        thread_id = new_id()
        await layer.update_thread(thread_id, metadata={"big": "z" * 100_000})
        await layer.flush()
        # Refused at once: a retry cannot succeed until storage is configured.
        assert layer.status()["rejected"] == 1
        [error] = rejected_errors(layer)
        assert "no storage client" in error and thread_id in error
        assert await layer.get_thread(thread_id) is None
    finally:
        await layer.close()


# ---------------------------------------------------------------------- batches and retries
class FaultyClient:
    """The real client, with scripted failures on chosen methods."""

    def __init__(self, real, faults):
        self._real = real
        self.faults = faults  # method -> list of callables(kwargs) -> response or raise
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        method = getattr(self._real, name)

        async def call(**kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            script = self.faults.get(name)
            if script:
                fault = script.pop(0)
                result = fault(kwargs)
                if asyncio.iscoroutine(result):
                    result = await result
                if result is not None:
                    return result
            return await method(**kwargs)

        return call


def throttled(operation):
    def fault(kwargs):
        raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                          operation)
    return fault


@pytest.fixture
async def faulty(moto_endpoint, table, monkeypatch):
    monkeypatch.setattr(client_module, "_backoff", lambda attempt, **kw: 0.001)
    session = aioboto3.Session()
    async with session.client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint) as real:
        client = FaultyClient(real, {})
        layer = DynamoDBDataLayer(table, storage=MemoryStorage(), client=client, verify_table=False)
        yield layer, client
        await layer.close()


async def test_throttling_is_retried_then_succeeds(faulty):
    layer, client = faulty
    user = await layer.create_user(User(identifier=f"throttled-{new_id()}"))
    client.faults["get_item"] = [throttled("GetItem"), throttled("GetItem")]
    client.calls.clear()
    assert (await layer.get_user(user.identifier)).id == user.id
    assert client.calls["get_item"] == 3


async def test_throttling_that_persists_is_raised_with_context(faulty):
    layer, client = faulty
    client.faults["get_item"] = [throttled("GetItem")] * client_module.THROTTLE_ATTEMPTS
    thread_id = new_id()
    with pytest.raises(DynamoDBError, match=f"get_thread_author.*{thread_id}.*ProvisionedThroughputExceeded") as info:
        await layer.get_thread_author(thread_id)
    assert info.value.code == "ProvisionedThroughputExceededException"


async def test_delete_thread_batches_and_retries_unprocessed_items(faulty, raw, table):
    layer, client = faulty
    user = await layer.create_user(User(identifier=f"batch-{new_id()}"))
    thread_id = await _thread(layer, user)
    steps = [step(thread_id, createdAt=timestamp(i)) for i in range(30)]
    for data in steps:
        await layer.create_step(data)
    elements = [File(name=f"{i}.txt", content=b"b", thread_id=thread_id, for_id=steps[i]["id"], mime="text/plain")
                for i in range(3)]
    for element in elements:
        await layer.create_element(element)
    blob_keys = [(await layer.get_element(thread_id, e.id))["objectKey"] for e in elements]
    # 30 steps + 3 elements + their 33 locators = 66 deletes before the thread item.
    sizes = []

    def hold_back_one(kwargs):
        requests = kwargs["RequestItems"][table]
        sizes.append(len(requests))
        if len(sizes) == 1:  # the first batch: pretend one item was throttled
            processed = {table: requests[:-1]}
            async def partial():
                await client._real.batch_write_item(RequestItems=processed)
                return {"UnprocessedItems": {table: requests[-1:]}}
            return partial()
        return None

    client.faults["batch_write_item"] = [hold_back_one] * 10

    await layer.delete_thread(thread_id)

    assert sizes[0] == 25 and max(sizes) <= 25 and sum(sizes) == 66 + 1 + 1  # +1 retried, +1 thread item
    assert await partition(raw, table, f"THREAD#{thread_id}") == []
    for data in steps:
        assert await raw_item(raw, table, f"STEP#{data['id']}", "LOCATOR") is None
    for key in blob_keys:
        assert key not in layer.storage.objects


async def test_unprocessed_items_that_never_clear_are_an_error(faulty, monkeypatch, table):
    layer, client = faulty
    monkeypatch.setattr(client_module, "BATCH_ATTEMPTS", 3)
    user = await layer.create_user(User(identifier=f"stuck-{new_id()}"))
    thread_id = await _thread(layer, user)
    await layer.create_step(step(thread_id))

    def nothing_processed(kwargs):
        async def respond():
            return {"UnprocessedItems": kwargs["RequestItems"]}
        return respond()

    client.faults["batch_write_item"] = [nothing_processed] * 3
    with pytest.raises(DynamoDBError, match="unprocessed"):
        await layer.delete_thread(thread_id)
    assert (await layer.get_thread(thread_id)) is not None  # nothing reported as deleted


async def test_blobs_of_a_failed_write_are_removed_only_when_nothing_was_written(faulty):
    layer, client = faulty
    user = await layer.create_user(User(identifier=f"blobs-{new_id()}"))
    thread_id = await _thread(layer, user)
    big = step(thread_id, output="q" * 100_000)

    def refused(kwargs):
        raise ClientError({"Error": {"Code": "ValidationException", "Message": "no"}}, "PutItem")

    def timed_out(kwargs):
        from botocore.exceptions import ReadTimeoutError

        raise ReadTimeoutError(endpoint_url="http://dynamodb")

    await layer.flush()
    before = set(layer.storage.objects)
    # Too large inline: the general path (read, thread, locator, step with its blob).
    client.faults["put_item"] = [lambda kwargs: None, refused]  # the locator passes, the step is refused
    await layer.create_step(big)
    await layer.flush()
    assert layer.status()["rejected"] == 1  # refused for good, not retried
    assert set(layer.storage.objects) == before  # refused: nothing points at the blob

    retried = step(thread_id, output="r" * 100_000)
    client.faults["put_item"] = [lambda kwargs: None, timed_out]
    await layer.create_step(retried)
    await layer.flush()
    # A timeout is retried by the journal, and the retry writes the step with a new blob.
    # The first attempt's outcome was unknown (the item might point at its blob), so that
    # blob stays: an orphaned blob is better than a broken item.
    assert layer.status()["rejected"] == 1
    assert [s["output"] for s in (await layer.get_thread(thread_id))["steps"]] == [retried["output"]]
    assert len(set(layer.storage.objects) - before) == 2


async def test_aws_errors_carry_operation_and_ids(moto_endpoint):
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, "no-such-table"), verify_table=False)
    try:
        with pytest.raises(DynamoDBError, match=r"get_thread \(thread_id='abc'\).*ResourceNotFoundException"):
            await layer.get_thread("abc")
    finally:
        await layer.close()


async def test_requests_in_flight_are_bounded(moto_endpoint, table):
    """Bounded fan-out is what keeps event-loop stalls short under many concurrent turns."""
    in_flight = peak = 0

    class Counting:
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            method = getattr(self._real, name)

            async def call(**kwargs):
                nonlocal in_flight, peak
                in_flight += 1
                peak = max(peak, in_flight)
                try:
                    await asyncio.sleep(0.002)  # let the other callers pile up
                    return await method(**kwargs)
                finally:
                    in_flight -= 1

            return call

    async with aioboto3.Session().client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint) as real:
        layer = DynamoDBDataLayer(table, storage=MemoryStorage(), client=Counting(real), verify_table=False,
                                  max_concurrency=4)
        user = await layer.create_user(User(identifier=f"fanout-{new_id()}"))
        # One thread's writes are applied in order; different threads' in parallel.
        threads = [await _thread(layer, user) for _ in range(30)]
        await asyncio.gather(*(layer.create_step(step(thread_id)) for thread_id in threads))
        await layer.flush()
        assert peak == 4
        assert [len((await layer.get_thread(t))["steps"]) for t in threads] == [1] * 30
        await layer.close()


async def test_requests_start_one_per_event_loop_iteration():
    """Many requests ready at once start over as many loop iterations: each start costs
    about a millisecond of botocore CPU, and other tasks run in between."""
    pacer = client_module.Pacer()
    iteration, running, started = 0, True, []

    async def iterations():
        nonlocal iteration
        while running:
            iteration += 1
            await asyncio.sleep(0)  # one loop iteration

    async def request(name):
        await pacer.turn()
        started.append((iteration, name))

    counter = asyncio.create_task(iterations())
    await asyncio.sleep(0)
    await asyncio.gather(*(request(i) for i in range(20)))
    assert sorted(name for _, name in started) == list(range(20))
    assert [name for _, name in started] == list(range(20))  # in arrival order
    assert len({at for at, _ in started}) == 20  # never two in one iteration

    # A waiter cancelled in the queue, or after being handed the turn, never stalls the rest.
    pacer = client_module.Pacer()
    pacer._loop, pacer._taken = asyncio.get_running_loop(), True  # a request started in this iteration
    queued = [asyncio.create_task(request(f"q{i}")) for i in range(3)]
    await asyncio.sleep(0)
    assert len(pacer._waiters) == 3
    queued[1].cancel()
    await asyncio.sleep(0)
    pacer._pass()  # the turn goes to q0 ...
    queued[0].cancel()  # ... which is cancelled before it runs, and passes it on
    await asyncio.wait_for(queued[2], 1)
    assert [name for _, name in started[20:]] == ["q2"]
    await asyncio.wait_for(request("after"), 1)
    running = False
    await counter


# ---------------------------------------------------------------------- requests per write
def server_error(operation):
    def fault(kwargs):
        raise ClientError({"Error": {"Code": "InternalServerError", "Message": "try again"}}, operation)
    return fault


def unreachable(kwargs):
    from botocore.exceptions import EndpointConnectionError

    raise EndpointConnectionError(endpoint_url="http://dynamodb")


async def _warm(layer, client):
    """A signed-in user with a thread, its identifier and the thread's owner cached and
    connections open, as after the first message of a session; the counts are cleared."""
    user = await layer.create_user(User(identifier=f"counted-{new_id()}"))
    thread_id = await _thread(layer, user, name="counted")
    token = request_user.set(user.identifier)
    try:
        await _chat(layer, thread_id, "warm", "up")
    finally:
        request_user.reset(token)
    await layer.flush()
    await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user.id))
    client.calls.clear()
    return user, thread_id


async def test_a_chat_turn_costs_at_most_four_requests(faulty, raw, table):
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    token = request_user.set(user.identifier)
    try:
        # As Chainlit fires them: the question, the reply created empty, its final text.
        await _chat(layer, thread_id, "what is the plan?", "the PLAN is ready")
        await layer.flush()
        # A TransactWriteItems per created step (the step, the thread's activity, owner and
        # digest, the locator) and one for the reply's text and its digest entry; the
        # journal may fold the reply's create and update into one. No read, no PutItem.
        assert set(client.calls) == {"transact_write_items"} and sum(client.calls.values()) <= 4, client.calls

        # Each write applied before the next is made: exactly one request each.
        client.calls.clear()
        question = step(thread_id, type="user_message", output="and then?")
        reply = step(thread_id, type="assistant_message", output="")
        for write in (layer.create_step(question), layer.create_step(reply),
                      layer.update_step({**reply, "output": "then THIS"})):
            await write
            await layer.flush()
        assert client.calls == {"transact_write_items": 3}, client.calls
    finally:
        request_user.reset(token)
    assert await _search(layer, user, "then this") == [thread_id]
    assert await _search(layer, user, "plan is ready") == [thread_id]
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert stored["_textSince"] == stored["createdAt"] and "_textTruncated" not in stored


async def test_a_backlog_of_new_steps_is_one_transaction_per_thread(faulty, raw, table):
    """Writes that wait (a burst of sessions, an outage draining) go together: one thread's
    queued new steps are one TransactWriteItems, with the same result as one by one."""
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    token = request_user.set(user.identifier)
    try:
        # The database is unreachable for the first attempt: the turn's writes queue up.
        client.faults["transact_write_items"] = [unreachable]
        question = step(thread_id, type="user_message", output="Queued QUESTION")
        reply = step(thread_id, type="assistant_message", output="", createdAt=timestamp(59))
        tool = step(thread_id, type="tool", name="search", output="tool RESULT", createdAt=timestamp(58))
        for write in (layer.create_step(question), layer.create_step(tool), layer.create_step(reply),
                      layer.update_step({**reply, "output": "queued ANSWER"})):
            await write
        await layer.flush()
        assert client.calls == {"transact_write_items": 2}, client.calls  # the failed attempt, then one
    finally:
        request_user.reset(token)
    stored = {s["id"]: s for s in (await layer.get_thread(thread_id))["steps"]}
    assert stored[question["id"]]["output"] == "Queued QUESTION"
    assert stored[tool["id"]]["output"] == "tool RESULT"
    assert stored[reply["id"]]["output"] == "queued ANSWER"
    for term in ("queued question", "tool result", "queued answer"):
        assert await _search(layer, user, term) == [thread_id]
    for step_id in (question["id"], reply["id"]):  # located by id alone, as deletes need
        assert await raw_item(raw, table, f"STEP#{step_id}", "LOCATOR") is not None

    # One of them already stored: the batch is refused as a whole and each takes its own path.
    client.calls.clear()
    client.faults["transact_write_items"] = [unreachable]
    again = step(thread_id, type="user_message", output="new one")
    await layer.create_step(again)
    await layer.create_step(dict(question))
    await layer.flush()
    # Failed, the batch refused, then one each (the stored one finds its step and changes nothing).
    assert client.calls["transact_write_items"] == 4, client.calls
    stored = {s["id"]: s for s in (await layer.get_thread(thread_id))["steps"]}
    assert stored[again["id"]]["output"] == "new one" and stored[question["id"]]["output"] == "Queued QUESTION"


def thread_updates(client) -> list[dict]:
    """Records the thread Update of every TransactWriteItems the layer sends from now on."""
    seen: list[dict] = []

    def record(kwargs):
        seen.extend(i["Update"] for i in kwargs["TransactItems"]
                    if "Update" in i and i["Update"]["Key"]["SK"] == {"S": "THREAD"})

    client.faults["transact_write_items"] = [record] * 100
    return seen


async def _delete_elsewhere(raw, table, thread_id):
    """Another process deletes the thread: every item of its partition is gone, and this
    process is not told."""
    for item in await partition(raw, table, f"THREAD#{thread_id}"):
        await raw.delete_item(TableName=table, Key=serialize({"PK": item["PK"], "SK": item["SK"]}))


async def _assert_owned_and_found(layer, raw, table, user, thread_id, term):
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert stored["UserThreadPK"] == f"USER#{user.identifier}" and stored["userIdentifier"] == user.identifier
    assert stored["id"] == thread_id and stored["createdAt"] and stored["_textSince"] == stored["createdAt"]
    page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user.id))
    assert page.data[0]["id"] == thread_id  # the most recently active
    assert await layer.get_thread_author(thread_id) == user.identifier
    assert await _search(layer, user, term) == [thread_id]


async def test_a_thread_this_process_wrote_gets_the_lean_update(faulty, raw, table):
    """The second and later steps of a thread this process has written: no if_not_exists
    (they would change nothing), the item required to exist with an owner instead; the
    order and the search digest still move with every step."""
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    older = await _thread(layer, user, name="older")
    await _chat(layer, older, "first", "reply")  # `older` is now the most recently active
    await layer.flush()
    client.calls.clear()
    updates = thread_updates(client)
    token = request_user.set(user.identifier)
    try:
        await _chat(layer, thread_id, "lean QUESTION", "lean ANSWER")
        await layer.flush()
    finally:
        request_user.reset(token)
    assert updates and all("if_not_exists" not in u["UpdateExpression"] for u in updates), updates
    assert all("attribute_exists" in u["ConditionExpression"] for u in updates)
    assert set(client.calls) == {"transact_write_items"}  # no extra request
    await _assert_owned_and_found(layer, raw, table, user, thread_id, "lean answer")
    assert await _search(layer, user, "lean question") == [thread_id]
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert stored["_textBytes"] == sum(len(t.encode()) for t in stored["_text"])


async def test_a_known_thread_deleted_by_another_process_is_recreated_owned(faulty, raw, table):
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    await _delete_elsewhere(raw, table, thread_id)
    client.calls.clear()
    token = request_user.set(user.identifier)
    try:
        await layer.create_step(step(thread_id, type="user_message", output="Back AGAIN"))
        await layer.flush()
        # The lean update refused (the item is gone), then the full one recreates it.
        assert client.calls == {"transact_write_items": 2}, client.calls
        await _assert_owned_and_found(layer, raw, table, user, thread_id, "back again")
        client.calls.clear()  # known again: one request per step
        await layer.create_step(step(thread_id, type="assistant_message", output="and again"))
        await layer.flush()
        assert client.calls == {"transact_write_items": 1}, client.calls

        # The same when the steps wait and go in one transaction.
        await _delete_elsewhere(raw, table, thread_id)
        client.calls.clear()
        client.faults["transact_write_items"] = [unreachable]
        batch = [step(thread_id, type="user_message", output="batched QUESTION"),
                 step(thread_id, type="assistant_message", output="batched answer", createdAt=timestamp(9))]
        for data in batch:
            await layer.create_step(data)
        await layer.flush()
        assert client.calls == {"transact_write_items": 3}, client.calls  # failed, lean refused, full
    finally:
        request_user.reset(token)
    await _assert_owned_and_found(layer, raw, table, user, thread_id, "batched question")
    assert sorted(s["id"] for s in (await layer.get_thread(thread_id))["steps"]) == sorted(d["id"] for d in batch)


async def test_a_thread_deleted_here_is_recreated_with_one_request(faulty, raw, table):
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    await layer.delete_thread(thread_id)
    client.calls.clear()
    token = request_user.set(user.identifier)
    try:
        await layer.create_step(step(thread_id, type="user_message", output="a fresh START"))
        await layer.flush()
    finally:
        request_user.reset(token)
    assert client.calls.get("transact_write_items") == 1, client.calls
    await _assert_owned_and_found(layer, raw, table, user, thread_id, "fresh start")


async def test_a_thread_written_without_a_user_gets_its_owner_from_the_first_user_write(faulty, raw, table):
    """Known to this process as written, but without an owner: the first step by a user
    takes the full update, which makes the thread theirs."""
    layer, client = faulty
    user = await layer.create_user(User(identifier=f"later-{new_id()}"))
    thread_id = new_id()
    await layer.create_step(step(thread_id, type="system_message", output="set up by a script"))
    await layer.flush()
    assert "UserThreadPK" not in await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    updates = thread_updates(client)
    token = request_user.set(user.identifier)
    try:
        await layer.create_step(step(thread_id, type="user_message", output="mine NOW", createdAt=timestamp(2)))
        await layer.flush()
    finally:
        request_user.reset(token)
    assert len(updates) == 1 and "if_not_exists" in updates[0]["UpdateExpression"]
    await _assert_owned_and_found(layer, raw, table, user, thread_id, "mine now")
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert stored["userId"] == user.id


async def test_a_locator_left_by_an_interrupted_write_does_not_stop_the_step(faulty, raw, table):
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    message = step(thread_id, type="user_message", output="after the LEFTOVER")
    await raw.put_item(TableName=table, Item=serialize({"PK": f"STEP#{message['id']}", "SK": "LOCATOR",
                                                        "threadId": thread_id}))
    token = request_user.set(user.identifier)
    try:
        await layer.create_step(message)
        await layer.flush()
    finally:
        request_user.reset(token)
    assert layer.status()["rejected"] == 0
    stored = {s["id"]: s for s in (await layer.get_thread(thread_id))["steps"]}
    assert stored[message["id"]]["output"] == "after the LEFTOVER"
    await _assert_owned_and_found(layer, raw, table, user, thread_id, "leftover")


async def test_a_sidebar_page_is_one_query(faulty):
    layer, client = faulty
    user, _ = await _warm(layer, client)
    session = {"history": ["x" * 1000 for _ in range(60)]}  # over the inline limit: in a blob
    big = await _thread(layer, user, name="big session", metadata=session, tags=["t"])
    await layer.flush()
    client.calls.clear()
    page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user.id))
    assert client.calls == {"query": 1}, client.calls  # no BatchGetItem: the index has it all
    listed = {t["id"]: t for t in page.data}
    assert listed[big]["metadata"] == session and listed[big]["tags"] == ["t"]
    assert listed[big]["userId"] == user.id and listed[big]["userIdentifier"] == user.identifier
    assert listed[big]["name"] == "big session" and listed[big]["createdAt"]
    assert_no_internal(page.data)


async def test_an_update_is_one_update_item(faulty, raw, table):
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    message = step(thread_id, output="first", metadata={"keep": 1, "gone": 2})
    await layer.create_step(message)
    await layer.flush()
    before = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")

    client.calls.clear()
    await layer.update_step({"id": message["id"], "threadId": thread_id, "language": "de",
                             "metadata": {"new": {"nested": True}, "gone": None}})
    await layer.flush()
    assert client.calls == {"update_item": 1}, client.calls
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{message['id']}")
    assert stored["metadata"] == {"keep": 1, "new": {"nested": True}} and stored["language"] == "de"
    assert stored["output"] == "first" and stored["_rev"] == 2

    client.calls.clear()  # a new text: the step and its digest entry in one transaction
    await layer.update_step({**message, "output": "Second TEXT"})
    await layer.flush()
    assert client.calls == {"transact_write_items": 1}, client.calls

    client.calls.clear()  # the same text again (a favourite sends the whole step): no digest entry
    await layer.set_step_favorite({**message, "output": "Second TEXT"}, True)
    await layer.flush()
    assert client.calls == {"update_item": 1}, client.calls
    thread = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert thread["_text"].count("second text") == 1
    assert thread["UserThreadSK"] == before["UserThreadSK"]  # updates are not activity
    assert [s["id"] for s in await layer.get_favorite_steps(user.id)] == [message["id"]]

    # Too many metadata keys for one update expression (4 KB): read, merge, write back.
    client.calls.clear()
    many = {f"key-{i}": i for i in range(300)}
    await layer.update_step({"id": message["id"], "threadId": thread_id, "metadata": many})
    await layer.flush()
    assert "update_item" not in client.calls and client.calls.get("put_item") == 1, client.calls
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{message['id']}")
    assert stored["metadata"]["key-299"] == 299 and stored["metadata"]["favorite"] is True
    assert layer.status()["rejected"] == 0


async def test_a_repeated_create_merges_by_the_fill_rules(faulty, raw, table):
    layer, client = faulty
    _, thread_id = await _warm(layer, client)
    first = step(thread_id, name="First", output="kept", input="", metadata={"a": 1}, createdAt=timestamp(1))
    await layer.create_step(first)
    await layer.flush()
    # The step exists: the transaction is cancelled and the general path merges.
    await layer.create_step({**first, "name": "Second", "output": "", "input": "filled", "language": "en",
                             "metadata": {"a": 2, "b": 3}})
    await layer.flush()
    stored = (await layer.get_thread(thread_id))["steps"][-1]
    assert (stored["name"], stored["output"], stored["input"], stored["language"]) == ("First", "kept", "filled", "en")
    assert stored["metadata"] == {"a": 1, "b": 3}

    # An update applied before its create: the create fills only what is still empty.
    early = step(thread_id, output="", streaming=True, createdAt=timestamp(2))
    await layer.update_step({**early, "output": "final answer", "streaming": False})
    await layer.flush()
    await layer.create_step(early)
    await layer.flush()
    stored = (await layer.get_thread(thread_id))["steps"][-1]
    assert stored["id"] == early["id"] and stored["output"] == "final answer" and stored["streaming"] is False
    assert (await raw_item(raw, table, f"STEP#{early['id']}", "LOCATOR"))["threadId"] == thread_id
    assert "final answer" in (await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD"))["_text"]


async def test_a_fill_in_an_update_only_write_follows_the_fill_rule(faulty):
    # Chainlit's calls never produce one (a fill comes with a create), but a write is a
    # StepWrite: `if_not_exists` does not see an empty value, so the general path fills it.
    layer, client = faulty
    _, thread_id = await _warm(layer, client)
    empty, full = step(thread_id, output="", language=""), step(thread_id, output="there", createdAt=timestamp(3))
    for data in (empty, full):
        await layer.create_step(data)
    await layer.flush()
    for data in (empty, full):
        await layer.steps.write(StepWrite(data["id"], thread_id, fill={"output": "filled", "language": "en",
                                                                      "mode": "new"},
                                          fill_metadata={"added": 1}), None)
    steps = {s["id"]: s for s in (await layer.get_thread(thread_id))["steps"]}
    assert (steps[empty["id"]]["output"], steps[empty["id"]]["language"]) == ("filled", "en")
    assert (steps[full["id"]]["output"], steps[full["id"]]["language"]) == ("there", "en")
    assert steps[full["id"]]["mode"] == "new" and steps[full["id"]]["metadata"] == {"added": 1}


async def test_transient_failures_are_retried_by_the_journal_without_errors(faulty, caplog):
    layer, client = faulty
    user, thread_id = await _warm(layer, client)
    client.faults["transact_write_items"] = [throttled("TransactWriteItems"), server_error("TransactWriteItems"),
                                             unreachable]
    # The layer's logger by name: Chainlit's own DynamoDB module sets that logger's level
    # when it is imported (other tests here import it).
    with caplog.at_level(logging.DEBUG, logger="chainlit"), caplog.at_level(logging.DEBUG, logger=layer.logger.name):
        message = step(thread_id, type="user_message", output="through the outage")
        await layer.create_step(message)
        assert await layer.flush(30)
    assert client.calls["transact_write_items"] == 4
    assert layer.status()["rejected"] == 0 and not layer.status()["degraded"]
    stored = {s["id"]: s for s in (await layer.get_thread(thread_id))["steps"]}
    assert stored[message["id"]]["output"] == "through the outage"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records
                                                                          if r.levelno >= logging.ERROR]
    assert any("create_step" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_failure_kinds():
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    from datalayers.dynamodb.failures import failure_kind
    from datalayers.dynamodb.large import TooLarge

    def aws(code, reasons=()):
        error = DynamoDBError(f"op: {code}", code, reasons)
        error.__cause__ = ClientError({"Error": {"Code": code, "Message": "m"}}, "Op")
        return error

    def boto(exc):
        error = DynamoDBError("op: failed")
        error.__cause__ = exc
        return error

    for code in ("ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError",
                 "ServiceUnavailable", "TransactionConflict", "RequestLimitExceeded"):
        assert failure_kind(aws(code)) == TRANSIENT, code
    assert failure_kind(aws("TransactionCanceledException", ("None", "TransactionConflict"))) == TRANSIENT
    assert failure_kind(aws("TransactionCanceledException", ("ThrottlingError", "None"))) == TRANSIENT
    assert failure_kind(aws("TransactionCanceledException", ("ValidationError", "None"))) == PERMANENT
    for exc in (ReadTimeoutError(endpoint_url="u"), ConnectTimeoutError(endpoint_url="u")):
        assert failure_kind(boto(exc)) == TRANSIENT
    assert failure_kind(boto(unreachable_error())) == TRANSIENT
    for code in ("ValidationException", "SerializationException", "ItemCollectionSizeLimitExceededException"):
        assert failure_kind(aws(code)) == PERMANENT, code
    assert failure_kind(TooLarge("too large")) is None  # a ValueError: the base refuses it
    # A table that needs `upgrade`: the writes wait for the operator.
    assert failure_kind(DynamoDBError("index lacks attributes", "IncompatibleTable")) == TRANSIENT
    raw_error = ClientError({"Error": {"Code": "ValidationException", "Message": "bad"}}, "PutItem")
    assert failure_kind(raw_error) == PERMANENT


def unreachable_error():
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="http://dynamodb")


# ---------------------------------------------------------------------- search digest
async def _chat(layer, thread_id, question, answer):
    """One exchange as Chainlit writes it: the question, then the answer streamed (created
    empty, then updated with its text)."""
    await layer.create_step(step(thread_id, type="user_message", output=question))
    reply = step(thread_id, type="assistant_message", output="")
    await layer.create_step(reply)
    await layer.update_step({**reply, "output": answer})


async def _search(layer, user, term, first=20):
    page = await layer.list_threads(Pagination(first=first), ThreadFilter(userId=user.id, search=term))
    return [t["id"] for t in page.data]


async def test_search_reads_digests_instead_of_one_query_per_thread(faulty, raw, table):
    layer, client = faulty
    user = await layer.create_user(User(identifier=f"digest-{new_id()}"))
    threads = []
    for i in range(12):
        thread_id = await _thread(layer, user, name=f"chat {i}")
        await _chat(layer, thread_id, f"question {i}", f"answer {i}")
        threads.append(thread_id)
    await _chat(layer, threads[3], "and then?", "The Haystack had a NEEDLE in it")  # streamed answer
    await _chat(layer, threads[8], "Where is my Needle?", "no idea")                 # the question
    renamed = threads[10]
    await layer.update_thread(renamed, name="needle by name")

    await layer.flush()
    client.calls.clear()
    found = await _search(layer, user, "nEEdle")
    assert sorted(found) == sorted([threads[3], threads[8], renamed])
    assert client.calls.get("query") == 1, client.calls  # the index page; no Query per thread
    assert client.calls.get("batch_get_item", 0) >= 1

    stored = await raw_item(raw, table, f"THREAD#{threads[3]}", "THREAD")
    assert "the haystack had a needle in it" in stored["_text"] and "answer 3" in stored["_text"]
    assert stored["_textBytes"] == sum(len(t.encode()) for t in stored["_text"])
    assert stored["_textSince"] == stored["createdAt"] and "_textTruncated" not in stored
    assert await _search(layer, user, "no such word") == []

    # The digest is internal: never in what the layer returns.
    thread = await layer.get_thread(threads[3])
    assert_no_internal(thread)
    page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user.id))
    assert_no_internal(page.data)
    assert_no_internal(await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user.id, search="needle")))


async def test_a_step_arriving_before_update_thread_starts_a_complete_digest(faulty):
    layer, client = faulty
    user = await layer.create_user(User(identifier=f"digest-{new_id()}"))
    thread_id = new_id()
    await layer.create_step(step(thread_id, type="user_message", output="Early NEEDLE"))
    await layer.update_thread(thread_id, name="late", user_id=user.id)
    other = await _thread(layer, user, name="other")
    await _chat(layer, other, "hello", "world")
    await layer.flush()
    client.calls.clear()
    assert await _search(layer, user, "needle") == [thread_id]
    assert client.calls.get("query") == 1, client.calls


async def test_search_falls_back_to_messages_for_threads_without_a_digest(faulty, raw, table, chainlit_layer,
                                                                           chainlit_context):
    layer, client = faulty
    identifier = f"legacy-{new_id()}"
    legacy_user = await chainlit_layer.create_user(User(identifier=identifier))
    legacy = new_id()
    await chainlit_layer.update_thread(legacy, name="Legacy", user_id=legacy_user.id)
    await chainlit_layer.create_step(step(legacy, type="user_message", output="an old NEEDLE", createdAt=timestamp(1)))
    user = await layer.get_user(identifier)
    ours = await _thread(layer, user, name="ours")
    await _chat(layer, ours, "hello", "world")
    await layer.flush()

    client.calls.clear()
    assert await _search(layer, user, "needle") == [legacy]
    assert client.calls.get("query") == 2, client.calls  # the index, and the legacy thread only

    # A new message through our layer does not make the legacy digest look complete:
    # the old message is still found.
    await layer.create_step(step(legacy, type="assistant_message", output="a new reply"))
    await layer.flush()
    stored = await raw_item(raw, table, f"THREAD#{legacy}", "THREAD")
    assert stored["_text"] == ["a new reply"] and stored["_textSince"] != stored["createdAt"]
    assert await _search(layer, user, "needle") == [legacy]
    assert sorted(await _search(layer, user, "new reply")) == [legacy]


async def test_a_full_digest_is_truncated_and_search_reads_the_messages(faulty, raw, table, monkeypatch):
    layer, client = faulty
    monkeypatch.setattr(search_module, "TEXT_LIMIT", 100)
    user = await layer.create_user(User(identifier=f"digest-{new_id()}"))
    thread_id = await _thread(layer, user, name="long")
    await _chat(layer, thread_id, "a" * 40, "b" * 40)
    await _chat(layer, thread_id, "the NEEDLE comes late", "c" * 10)
    await layer.flush()
    stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert stored["_textTruncated"] is True and stored["_textBytes"] <= 100
    assert all("needle" not in t for t in stored["_text"])
    big = await _thread(layer, user, name="big")
    await layer.create_step(step(big, type="assistant_message", output="needle " + "x" * 200))
    await layer.flush()
    assert (await raw_item(raw, table, f"THREAD#{big}", "THREAD"))["_textTruncated"] is True

    client.calls.clear()
    assert sorted(await _search(layer, user, "needle")) == sorted([thread_id, big])
    assert client.calls.get("query") == 3, client.calls  # the index, then the two truncated threads
    assert_no_internal(await layer.get_thread(thread_id))


async def test_appending_to_the_digest_never_creates_a_thread_item(layer, raw, table):
    user = await new_user(layer)
    thread_id = await _thread(layer, user)
    reply = step(thread_id, type="assistant_message", output="")
    await layer.create_step(reply)
    await layer.flush()
    await raw.delete_item(TableName=table, Key=serialize({"PK": f"THREAD#{thread_id}", "SK": "THREAD"}))
    await layer.update_step({**reply, "output": "late text"})
    await layer.flush()
    assert await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD") is None
    assert (await raw_item(raw, table, f"THREAD#{thread_id}", f"STEP#{reply['id']}"))["output"] == "late text"


async def test_the_digest_never_moves_to_blobs(moto_endpoint, table, raw):
    layer = DynamoDBDataLayer(table, region=REGION, endpoint_url=moto_endpoint, storage=MemoryStorage(),
                              inline_limit=8 * 1024)
    try:
        user = await layer.create_user(User(identifier=f"digest-{new_id()}"))
        thread_id = await _thread(layer, user, name="big digest", metadata={"small": 1})
        for i in range(4):
            await layer.create_step(step(thread_id, type="user_message", output=f"message {i} " + "z" * 3000))
        await layer.update_thread(thread_id, metadata={"more": 2})
        await layer.flush()
        stored = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
        assert len(stored["_text"]) == 4 and not stored.get(BLOBS)  # 12 KB digest, nothing moved
        assert (await layer.get_thread(thread_id))["metadata"] == {"small": 1, "more": 2}
    finally:
        await layer.close()


async def test_delete_step_and_element_find_their_thread_by_id(layer, raw, table):
    user = await new_user(layer)
    thread_id = await _thread(layer, user)
    doomed, kept = step(thread_id), step(thread_id, createdAt=timestamp(5))
    await layer.create_step(doomed)
    await layer.create_step(kept)
    attached = File(name="a.txt", content=b"a", thread_id=thread_id, for_id=doomed["id"], mime="text/plain")
    loose = File(name="b.txt", content=b"b", thread_id=thread_id, for_id=kept["id"], mime="text/plain")
    await layer.create_element(attached)
    await layer.create_element(loose)
    attached_key = (await layer.get_element(thread_id, attached.id))["objectKey"]

    await layer.delete_step(doomed["id"])  # no thread id given: found through the locator
    await layer.flush()
    assert await raw_item(raw, table, f"STEP#{doomed['id']}", "LOCATOR") is None
    assert await raw_item(raw, table, f"ELEMENT#{attached.id}", "LOCATOR") is None
    assert attached_key not in layer.storage.objects
    thread = await layer.get_thread(thread_id)
    assert [s["id"] for s in thread["steps"]] == [kept["id"]]
    assert [e["id"] for e in thread["elements"]] == [loose.id]

    await layer.delete_element(loose.id)  # no thread id given
    await layer.flush()
    assert (await layer.get_thread(thread_id))["elements"] == []
    assert await raw_item(raw, table, f"ELEMENT#{loose.id}", "LOCATOR") is None


async def test_concurrent_ratings_keep_the_thread_counters_exact(layer, raw, table):
    user = await new_user(layer)
    thread_id = await _thread(layer, user)
    steps = [step(thread_id, createdAt=timestamp(i)) for i in range(8)]
    for data in steps:
        await layer.create_step(data)
    await layer.flush()
    await asyncio.gather(*(layer.upsert_feedback(Feedback(forId=s["id"], threadId=thread_id, value=i % 2))
                           for i, s in enumerate(steps)))
    thread = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert (thread["_feedbackUp"], thread["_feedbackDown"]) == (4, 4)
    await asyncio.gather(*(layer.upsert_feedback(Feedback(forId=s["id"], threadId=thread_id, value=1))
                           for s in steps[:4]))
    await layer.delete_step(steps[7]["id"])
    await layer.flush()
    thread = await raw_item(raw, table, f"THREAD#{thread_id}", "THREAD")
    assert (thread["_feedbackUp"], thread["_feedbackDown"]) == (5, 2)


# ---------------------------------------------------------------------- URLs
def test_url_forms():
    assert parse_dynamodb_url("dynamodb://chat-table") == {"table": "chat-table", "region": None, "endpoint_url": None}
    assert parse_dynamodb_url("dynamodb://t.1?region=eu-west-1&endpoint_url=http://127.0.0.1:8000") == {
        "table": "t.1", "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:8000"}
    assert parse_dynamodb_url("dynamodb:///Chats_Prod?region=us-east-2")["table"] == "Chats_Prod"


@pytest.mark.parametrize("url, message", [
    ("dynamodb://AKIA:secret@table?region=us-east-1", "credentials"),
    ("dynamodb://table?aws_secret_access_key=x", "credentials"),
    ("dynamodb://table?region=us-east-1&AWS_ACCESS_KEY_ID=x", "credentials"),
    ("dynamodb://table?session_token=x", "credentials"),
    ("dynamodb://table?colour=blue", "unknown dynamodb:// option"),
    ("dynamodb://ab?region=us-east-1", "table name"),
    ("dynamodb://table?endpoint_url=ftp://host", "http"),
    ("postgresql://table", "dynamodb://"),
])
def test_bad_urls_are_refused(url, message):
    with pytest.raises(ValueError, match=message):
        parse_dynamodb_url(url)


def test_settings_registry_resolves_the_scheme():
    from datalayers import DATA_LAYER_SCHEMES
    from settings import resolve_backend

    assert resolve_backend("dynamodb://t?region=x", DATA_LAYER_SCHEMES, "database") is DynamoDBDataLayer


# ---------------------------------------------------------------------- provisioning
async def test_provisioned_table_matches_the_template(raw, table):
    template = json.loads(TEMPLATE_PATH.read_text())
    properties = next(r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table")["Properties"]
    description = (await raw.describe_table(TableName=table))["Table"]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    index = description["GlobalSecondaryIndexes"][0]
    assert index["IndexName"] == "UserThread"
    assert index["Projection"] == properties["GlobalSecondaryIndexes"][0]["Projection"]
    assert description["SSEDescription"]["Status"] in ("ENABLED", "ENABLING")
    backups = await raw.describe_continuous_backups(TableName=table)
    assert backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    ttl = (await raw.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
    assert ttl["AttributeName"] == properties["TimeToLiveSpecification"]["AttributeName"]


async def test_provision_command_is_idempotent(moto_endpoint, raw, capsys):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    url = url_for(moto_endpoint, name)
    assert await asyncio.to_thread(main, ["provision", "--url", url]) == 0
    assert "created" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["provision", "--url", url]) == 0
    assert "already exists" in capsys.readouterr().out
    assert (await raw.describe_table(TableName=name))["Table"]["TableStatus"] == "ACTIVE"
    assert await asyncio.to_thread(main, ["provision", "--url", "dynamodb://x?password=y"]) == 1


async def test_auto_migrate_creates_the_table_on_first_use(moto_endpoint, raw):
    name = f"auto-{uuid.uuid4().hex[:8]}"
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, name), storage=MemoryStorage(), auto_migrate=True)
    try:
        user = await layer.create_user(User(identifier="first-user"))
        assert (await layer.get_user("first-user")).id == user.id
        assert (await raw.describe_table(TableName=name))["Table"]["TableStatus"] == "ACTIVE"
    finally:
        await layer.close()


async def test_a_table_made_from_chainlits_template_is_refused_with_instructions(moto_endpoint, raw):
    # Chainlit's documented table: same keys, but its UserThread index projects only id and name.
    name = f"chainlit-{uuid.uuid4().hex[:8]}"
    properties = dynamodb_module.load_table_template()
    await raw.create_table(
        TableName=name, AttributeDefinitions=properties["AttributeDefinitions"], KeySchema=properties["KeySchema"],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[{**properties["GlobalSecondaryIndexes"][0],
                                 "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name"]}}],
    )
    layer = DynamoDBDataLayer.from_url(url_for(moto_endpoint, name))
    try:
        with pytest.raises(DynamoDBError, match="_feedbackDown.*datalayers.dynamodb upgrade"):
            await layer.get_user("anyone")
    finally:
        await layer.close()


async def test_upgrade_makes_a_chainlit_table_serve_this_layer(moto_endpoint, raw, chainlit_context):
    from chainlit.data.dynamodb import DynamoDBDataLayer as ChainlitDynamoDBDataLayer

    name = f"chainlit-{uuid.uuid4().hex[:8]}"
    properties = dynamodb_module.load_table_template()
    await raw.create_table(  # Chainlit's documented table, as Chainlit users have it
        TableName=name, AttributeDefinitions=properties["AttributeDefinitions"], KeySchema=properties["KeySchema"],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[{**properties["GlobalSecondaryIndexes"][0],
                                 "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name"]}}],
    )
    sync_client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint)
    theirs = ChainlitDynamoDBDataLayer(table_name=name, client=sync_client)
    await theirs.create_user(User(identifier="old-timer"))
    rated, plain = new_id(), new_id()
    for thread_id in (rated, plain):
        await theirs.update_thread(thread_id, name="old", user_id="old-timer")
    message = step(rated)
    await theirs.create_step(message)
    await theirs.upsert_feedback(Feedback(forId=message["id"], threadId=rated, value=1))
    sync_client.close()

    url = url_for(moto_endpoint, name)
    assert await asyncio.to_thread(main, ["upgrade", "--url", url]) == 0
    assert await asyncio.to_thread(main, ["upgrade", "--url", url]) == 0  # idempotent
    layer = DynamoDBDataLayer.from_url(url, storage=MemoryStorage())
    try:
        user = await layer.get_user("old-timer")
        liked = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id, feedback=1))
        assert [t["id"] for t in liked.data] == [rated]
        listed = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
        assert sorted(t["id"] for t in listed.data) == sorted([rated, plain])
    finally:
        await layer.close()


async def test_upgrade_recreates_an_index_with_the_earlier_projection(moto_endpoint, raw):
    # Tables provisioned before sidebar pages came from the index alone project only the
    # name and the feedback counters: refused with the instruction, then upgraded.
    name = f"earlier-{uuid.uuid4().hex[:8]}"
    properties = dynamodb_module.load_table_template()
    earlier = ["id", "name", "_feedbackUp", "_feedbackDown"]
    await raw.create_table(
        TableName=name, AttributeDefinitions=properties["AttributeDefinitions"], KeySchema=properties["KeySchema"],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[{**properties["GlobalSecondaryIndexes"][0],
                                 "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": earlier}}],
    )
    url = url_for(moto_endpoint, name)
    writer = DynamoDBDataLayer.from_url(url, storage=MemoryStorage(), verify_table=False)
    user = await writer.create_user(User(identifier="earlier-user"))
    thread_id = new_id()
    await writer.update_thread(thread_id, name="kept", user_id=user.id, metadata={"m": 1}, tags=["t"])
    await writer.close()

    refused = DynamoDBDataLayer.from_url(url, storage=MemoryStorage())
    waiting = step(thread_id, output="written once the table is upgraded")
    try:
        with pytest.raises(DynamoDBError, match="metadata.*datalayers.dynamodb upgrade"):
            await refused.get_user("earlier-user")
        # A write is kept in the journal meanwhile, not refused: it is applied after `upgrade`.
        await refused.create_step(waiting)
        assert not await refused.flush(0.5)
        assert await asyncio.to_thread(main, ["upgrade", "--url", url]) == 0
        assert await refused.flush(30)
        assert refused.status()["rejected"] == 0
    finally:
        await refused.close()
    description = (await raw.describe_table(TableName=name))["Table"]
    wanted = properties["GlobalSecondaryIndexes"][0]["Projection"]
    assert description["GlobalSecondaryIndexes"][0]["Projection"] == wanted
    layer = DynamoDBDataLayer.from_url(url, storage=MemoryStorage())
    try:
        assert [s["id"] for s in (await layer.get_thread(thread_id))["steps"]] == [waiting["id"]]
        page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
        listed = [(t["id"], t["name"], t["metadata"], t["tags"]) for t in page.data]
        assert listed == [(thread_id, "kept", {"m": 1}, ["t"])]
    finally:
        await layer.close()


async def test_template_and_provisioning_stay_in_sync():
    properties = dynamodb_module.load_table_template()
    request, after = dynamodb_module.create_table_request(properties, "t-name")
    assert request["TableName"] == "t-name"
    assert request["SSESpecification"] == {"Enabled": True, "SSEType": "KMS"}
    assert after == {"PointInTimeRecoveryEnabled": True, "TimeToLive": {"AttributeName": "expiresAt", "Enabled": True}}
    with pytest.raises(ValueError, match="not supported"):
        dynamodb_module.create_table_request({**properties, "KinesisStreamSpecification": {}}, "t")


def test_decimal_conversion_rules():
    item = deserialize(serialize({"i": 3, "f": 0.5, "big": 10**30, "neg": -2, "l": [1, 1.25], "d": Decimal("4")}))
    assert item == {"i": 3, "f": 0.5, "big": 10**30, "neg": -2, "l": [1, 1.25], "d": 4}
    assert [type(item[k]) for k in ("i", "f", "big", "d")] == [int, float, int, int]
