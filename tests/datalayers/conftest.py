"""`open_layer`: layers on one new database of each backend (SQLite, PostgreSQL, MariaDB,
DynamoDB on moto), for stores that every app instance and the CLI must share (session
revocations, API tokens)."""

from __future__ import annotations

import uuid

import pytest

from datalayers.dynamodb import DynamoDBDataLayer
from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.conftest import SQL_BACKENDS
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb, dynamodb_url  # noqa: F401  (fixture)

BACKENDS = [*SQL_BACKENDS, "dynamodb"]


@pytest.fixture(params=BACKENDS)
async def open_layer(request, sql_url_factory):
    """`await open_layer()` opens one more layer on the same database (first call: a new one)."""
    backend = request.param
    if backend == "dynamodb":
        endpoint = request.getfixturevalue("moto_endpoint")
        request.getfixturevalue("atomic_moto_dynamodb")
        url = dynamodb_url(endpoint, f"shared-{uuid.uuid4().hex[:8]}")
    else:
        url = sql_url_factory(backend)
    layers = []

    async def open_one():
        if backend == "dynamodb":
            layer = DynamoDBDataLayer.from_url(url, storage=MemoryStorage())
            if not layers:
                assert await layer.provision() is True
        else:
            layer = SQLAlchemyDataLayer(url, storage=MemoryStorage())
        layers.append(layer)
        return layer

    yield open_one
    for layer in layers:
        await layer.close()
