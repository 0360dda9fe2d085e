"""Chainlit's own data-layer behaviour tests, restated against our layers on all four backends.

Chainlit tests its SQL layers (`SQLAlchemyDataLayer`, the ORM variant) and its DynamoDB
layer with a handful of behaviour checks: ids and timestamps from `create_user`, threads made
by a bare `update_thread`, authors, deletes, elements read back, `None` fields staying
`None`, and a thread still readable when one attachment's link cannot be signed. An app
written against Chainlit's layers relies on exactly these, so ours must pass them unchanged
in meaning, with the arbitrary (non-UUID) ids those tests use.
"""

from __future__ import annotations

import uuid

import pytest
from chainlit.element import Text
from chainlit.user import User

from datalayers.dynamodb import TEMPLATE_PATH, DynamoDBDataLayer
from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.conftest import SQL_BACKENDS
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb, dynamodb_url  # noqa: F401

BACKENDS = [*SQL_BACKENDS, "dynamodb"]


class UnsignableStorage(MemoryStorage):
    """Stores blobs but cannot sign links (an outage of the signing service, a lost key)."""

    async def get_read_url(self, object_key: str) -> str:
        raise RuntimeError(f"cannot sign {object_key}")


def database_location(request, backend: str) -> str:
    """One fresh database (or DynamoDB table) per backend, as a data-layer URL."""
    if backend == "dynamodb":
        request.getfixturevalue("atomic_moto_dynamodb")
        return dynamodb_url(request.getfixturevalue("moto_endpoint"), f"upstream-{uuid.uuid4().hex[:8]}")
    return request.getfixturevalue("sql_url_factory")(backend)


async def build_layer(url: str, storage: MemoryStorage):
    if url.startswith("dynamodb://"):
        layer = DynamoDBDataLayer.from_url(url, storage=storage, template=TEMPLATE_PATH)
        await layer.provision()
        return layer
    layer = SQLAlchemyDataLayer(url, storage=storage)
    await layer.migrate()
    return layer


@pytest.fixture(scope="module", params=BACKENDS)
async def layers(request):
    """Two layers on one database: a normal one and one whose storage cannot sign links."""
    url = database_location(request, request.param)
    normal = await build_layer(url, MemoryStorage())
    unsignable = await build_layer(url, UnsignableStorage())
    yield normal, unsignable
    await normal.close()
    await unsignable.close()


@pytest.fixture
def data_layer(layers):
    return layers[0]


@pytest.fixture
def test_user() -> User:
    # Fresh per test: one database serves the whole module.
    return User(identifier=f"upstream_test_user_{uuid.uuid4().hex[:8]}", metadata={})


def arbitrary_id(prefix: str) -> str:
    # Chainlit's tests use ids such as "test_thread": not UUIDs, and must work.
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def test_create_and_get_element(data_layer, chainlit_context):
    element = Text(id=str(uuid.uuid4()), name="test.txt", mime="text/plain", content="test content",
                   for_id="test_step_id")
    assert element.thread_id == chainlit_context.thread_id  # taken from the session, as in Chainlit
    await data_layer.create_element(element)
    await data_layer.flush()

    retrieved = await data_layer.get_element(element.thread_id, element.id)
    assert retrieved is not None
    assert retrieved["id"] == element.id
    assert retrieved["name"] == element.name
    assert retrieved["mime"] == element.mime


async def test_get_current_timestamp(data_layer):
    assert isinstance(await data_layer.get_current_timestamp(), str)


async def test_get_user(test_user, data_layer):
    persisted = await data_layer.create_user(test_user)
    assert persisted

    fetched = await data_layer.get_user(persisted.identifier)
    assert fetched
    assert fetched.createdAt == persisted.createdAt
    assert fetched.id == persisted.id

    assert await data_layer.get_user("nonexistent") is None


async def test_create_user(test_user, data_layer):
    persisted = await data_layer.create_user(test_user)
    assert persisted
    assert persisted.identifier == test_user.identifier
    assert persisted.createdAt
    assert persisted.id
    assert uuid.UUID(persisted.id)


async def test_update_thread_without_anything_else(test_user, data_layer):
    assert await data_layer.create_user(test_user)
    await data_layer.update_thread(arbitrary_id("test_thread"))
    await data_layer.flush()


async def test_get_thread_author(test_user, data_layer):
    persisted = await data_layer.create_user(test_user)
    thread_id = arbitrary_id("test_thread")

    await data_layer.update_thread(thread_id, user_id=persisted.id)
    assert await data_layer.get_thread_author(thread_id) == persisted.identifier


async def test_get_thread(test_user, data_layer):
    assert await data_layer.create_user(test_user)
    thread_id = arbitrary_id("test_thread")

    await data_layer.update_thread(thread_id)
    assert await data_layer.get_thread(thread_id) is not None
    assert await data_layer.get_thread("nonexisting_thread") is None


async def test_delete_thread(test_user, data_layer):
    assert await data_layer.create_user(test_user)
    thread_id = arbitrary_id("test_thread")

    await data_layer.update_thread(thread_id, "test_user")  # the second argument is the name
    await data_layer.delete_thread(thread_id)
    assert await data_layer.get_thread(thread_id) is None


async def test_get_element_keeps_missing_fields_none(data_layer, chainlit_context):
    # An element that only points at an external URL: no object key, no mime.
    element = Text(id=str(uuid.uuid4()), name="link", url="https://example.com/a", for_id="step")
    element.mime = None
    await data_layer.create_element(element)
    await data_layer.flush()

    retrieved = await data_layer.get_element(element.thread_id, element.id)
    assert retrieved is not None
    assert retrieved["url"] == "https://example.com/a"
    assert retrieved.get("objectKey") is None
    assert retrieved.get("mime") is None  # never the string "None"


async def test_get_element_not_found(data_layer):
    assert await data_layer.get_element(arbitrary_id("thread"), "nonexistent") is None


async def test_get_thread_tolerates_a_link_that_cannot_be_signed(layers, test_user, chainlit_context):
    normal, unsignable = layers
    persisted = await normal.create_user(test_user)
    thread_id = chainlit_context.thread_id
    await normal.update_thread(thread_id, name="with a file", user_id=persisted.id)
    element = Text(id=str(uuid.uuid4()), name="file.txt", mime="text/plain", content="kept", for_id="step")
    await normal.create_element(element)
    await normal.flush()

    thread = await unsignable.get_thread(thread_id)
    assert thread is not None
    assert thread["id"] == thread_id
    assert [e["id"] for e in thread["elements"]] == [element.id]
    assert thread["elements"][0]["url"] is None
