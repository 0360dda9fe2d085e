"""The data-layer contract on DynamoDB, through a moto server over real HTTP.

The table is created by the provisioning code from cloudformation/dynamodb-table.json, so
the schema under test is the one that ships.
"""

import uuid

import pytest

from datalayers.dynamodb import DynamoDBDataLayer, TEMPLATE_PATH
from storage.memory import MemoryStorage
from tests.contracts.datalayer import DataLayerContract


def dynamodb_url(endpoint: str, table: str) -> str:
    return f"dynamodb://{table}?region=us-east-1&endpoint_url={endpoint}"


@pytest.fixture(scope="session")
async def datalayer(moto_endpoint):
    layer = DynamoDBDataLayer.from_url(dynamodb_url(moto_endpoint, f"contract-{uuid.uuid4().hex[:8]}"),
                                       storage=MemoryStorage(), template=TEMPLATE_PATH)
    assert await layer.provision() is True  # a new table, built from the template
    yield layer
    await layer.close()


class TestDynamoDBContract(DataLayerContract):
    pass
