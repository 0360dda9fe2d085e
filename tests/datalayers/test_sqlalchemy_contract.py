"""The data-layer contract on SQLite, PostgreSQL and MariaDB: one parametrized fixture."""

import pytest

from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.conftest import SQL_BACKENDS
from tests.contracts.datalayer import DataLayerContract
from tests.contracts.messages import MessagePagesContract


@pytest.fixture(scope="session", params=SQL_BACKENDS)
async def datalayer(request, sql_url_factory):
    layer = SQLAlchemyDataLayer(sql_url_factory(request.param), storage=MemoryStorage())
    await layer.migrate()
    yield layer
    await layer.close()


class TestSQLAlchemyContract(DataLayerContract, MessagePagesContract):
    pass


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_close_releases_the_engine_and_the_storage(backend, sql_url_factory):
    from chainlit.user import User

    from storage.base import StorageClosed

    storage = MemoryStorage()
    layer = SQLAlchemyDataLayer(sql_url_factory(backend), storage=storage)
    await layer.create_user(User(identifier="closing"))
    assert layer.engine.pool.checkedin() >= 1
    await layer.close()
    assert layer.engine.pool.checkedin() == 0
    with pytest.raises(StorageClosed):
        await storage.read_file("any/key")
    await layer.close()  # closing twice is harmless


async def test_sql_errors_do_not_leak_message_text(sql_url_factory):
    from datalayers.sqlalchemy import DataLayerError

    layer = SQLAlchemyDataLayer(sql_url_factory("sqlite"), storage=MemoryStorage())
    await layer.migrate()
    secret_text = "my-private-diary-entry"
    with pytest.raises(DataLayerError) as info:
        # name is NOT NULL: an explicit None bypasses our defaults only via a raw insert
        from datalayers.sqlalchemy.schema import steps

        async with layer._transaction("raw_insert") as conn:
            await conn.execute(steps.insert().values(id="x", threadId="t", name=None, type="t",
                                                     streaming=False, output=secret_text))
    assert secret_text not in str(info.value)
    await layer.close()
