"""The data-layer contract on SQLite, PostgreSQL and MariaDB: one parametrized fixture."""

import pytest

from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.conftest import SQL_BACKENDS
from tests.contracts.datalayer import DataLayerContract


@pytest.fixture(scope="session", params=SQL_BACKENDS)
async def datalayer(request, sql_url_factory):
    layer = SQLAlchemyDataLayer(sql_url_factory(request.param), storage=MemoryStorage())
    await layer.migrate()
    yield layer
    await layer.close()


class TestSQLAlchemyContract(DataLayerContract):
    pass
