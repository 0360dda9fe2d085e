"""The data-layer contract on DynamoDB, through a moto server over real HTTP.

The table is created by the provisioning code from cloudformation/dynamodb-table.json, so
the schema under test is the one that ships.
"""

import functools
import threading
import uuid

import pytest

from datalayers.dynamodb import TEMPLATE_PATH, DynamoDBDataLayer
from storage.memory import MemoryStorage
from tests.contracts.datalayer import DataLayerContract
from tests.contracts.messages import MessagePagesContract

_ITEM_OPERATIONS = ("get_item", "put_item", "update_item", "delete_item", "query", "transact_write_items")


@pytest.fixture(scope="session")
def atomic_moto_dynamodb():
    """Make each moto DynamoDB item operation atomic, as each request is on AWS.

    moto's server handles every HTTP request in its own thread and its DynamoDB backend has
    no locking. Worse, a TransactWriteItems whose condition fails restores a deep copy of
    the whole table taken when it started (moto/dynamodb/models/__init__.py,
    `transact_write_items`), undoing writes other requests committed meanwhile. Real
    DynamoDB never does either. One lock around the backend's item operations restores
    AWS's semantics, so concurrency tests exercise this layer, not moto's races.
    """
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    with pytest.MonkeyPatch.context() as patch:
        for name in _ITEM_OPERATIONS:
            original = getattr(DynamoDBBackend, name)

            @functools.wraps(original)
            def atomic(self, *args, _original=original, **kwargs):
                with lock:
                    return _original(self, *args, **kwargs)

            patch.setattr(DynamoDBBackend, name, atomic)
        yield


def dynamodb_url(endpoint: str, table: str) -> str:
    return f"dynamodb://{table}?region=us-east-1&endpoint_url={endpoint}"


@pytest.fixture(scope="session")
async def datalayer(moto_endpoint, atomic_moto_dynamodb):
    layer = DynamoDBDataLayer.from_url(dynamodb_url(moto_endpoint, f"contract-{uuid.uuid4().hex[:8]}"),
                                       storage=MemoryStorage(), template=TEMPLATE_PATH)
    assert await layer.provision() is True  # a new table, built from the template
    yield layer
    await layer.close()


class TestDynamoDBContract(DataLayerContract, MessagePagesContract):
    pass
