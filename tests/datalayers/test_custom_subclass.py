"""How a developer's own data layer joins the contract: subclass, provide `datalayer`, done.

`AuditedDataLayer` is the kind of thing a developer writes: it records every step write.
It overrides `create_step` without re-applying Chainlit's `@queue_until_user_message`: the
base applies it to overrides too, so writes before the first user message still wait.
"""

import uuid

import pytest
from chainlit.context import ChainlitContext, context_var
from chainlit.session import WebsocketSession

from datalayers.sqlalchemy import SQLAlchemyDataLayer
from storage.memory import MemoryStorage
from tests.contracts.datalayer import DataLayerContract
from tests.contracts.messages import MessagePagesContract, new_id, step


class AuditedDataLayer(SQLAlchemyDataLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.audit: list[tuple[str, str]] = []

    async def create_step(self, step_dict):
        self.audit.append(("create", step_dict["id"]))
        await super().create_step(step_dict)


@pytest.fixture(scope="module")
async def datalayer(tmp_path_factory):
    path = tmp_path_factory.mktemp("custom") / "custom.db"
    layer = AuditedDataLayer(f"sqlite:///{path}", storage=MemoryStorage())
    yield layer
    await layer.close()


class TestCustomSubclassContract(DataLayerContract, MessagePagesContract):
    async def test_the_subclass_behaviour_ran(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        data = step(thread_id, new_id())
        await datalayer.create_step(data)
        assert ("create", data["id"]) in datalayer.audit

    async def test_an_override_still_waits_for_the_first_user_message(self, datalayer, user):
        thread_id = new_id()
        session = WebsocketSession(id=str(uuid.uuid4()), socket_id="sid", emit=None, emit_call=None, user_env={},
                                   client_type="webapp", thread_id=thread_id)
        token = context_var.set(ChainlitContext(session))
        try:
            data = step(thread_id, new_id())
            await datalayer.create_step(data)  # before the first user message: queued
            assert ("create", data["id"]) not in datalayer.audit
            assert len(session.thread_queues["create_step"]) == 1
            session.has_first_interaction = True
            await session.flush_method_queue()
        finally:
            context_var.reset(token)
        assert ("create", data["id"]) in datalayer.audit
        assert [s["id"] for s in (await datalayer.get_thread(thread_id))["steps"]] == [data["id"]]
