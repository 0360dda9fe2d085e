"""How a developer's own data layer joins the contract: subclass, provide `datalayer`, done.

`AuditedDataLayer` is the kind of thing a developer writes: it records every step write.
Overriding a decorated method drops Chainlit's `@queue_until_user_message`, so the
override re-applies it (design.md §2).
"""

import pytest
from chainlit.data.utils import queue_until_user_message

from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.contracts.datalayer import DataLayerContract, new_id, step


class AuditedDataLayer(SQLAlchemyDataLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.audit: list[tuple[str, str]] = []

    @queue_until_user_message()
    async def create_step(self, step_dict):
        self.audit.append(("create", step_dict["id"]))
        await super().create_step(step_dict)


@pytest.fixture(scope="module")
async def datalayer(tmp_path_factory):
    path = tmp_path_factory.mktemp("custom") / "custom.db"
    layer = AuditedDataLayer(f"sqlite:///{path}", storage=MemoryStorage())
    yield layer
    await layer.close()


class TestCustomSubclassContract(DataLayerContract):
    async def test_the_subclass_behaviour_ran(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        data = step(thread_id, new_id())
        await datalayer.create_step(data)
        assert ("create", data["id"]) in datalayer.audit
