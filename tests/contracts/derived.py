"""Stores derived from threads (the knowledge index) forget what was deleted: part of the
data-layer contract, so every backend (and a developer's subclass) runs it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from chainlit.element import File


class Recorder:
    """A derived store that records what it is told to forget, failing `failures` times first."""

    def __init__(self, failures: int = 0):
        self.name = f"recorder-{uuid.uuid4().hex[:8]}"
        self.calls: list[dict] = []
        self.failures = failures

    async def forget(self, **keys) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the derived store is down")
        self.calls.append(keys)


class DerivedStoreContract:
    """Mixed into DataLayerContract (it provides `datalayer`, `user`, `new_thread`, `acting_as`)."""

    @pytest.fixture
    def recorder(self, datalayer):
        store = Recorder()
        datalayer.add_derived_store(store)
        yield store
        datalayer.derived.stores.pop(store.name, None)

    async def test_a_deleted_thread_is_forgotten_by_derived_stores(self, datalayer, user, recorder):
        from tests.contracts.datalayer import step

        thread_id = await self.new_thread(datalayer, user)
        await datalayer.create_step(step(thread_id))
        await datalayer.flush()
        await datalayer.delete_thread(thread_id)
        assert recorder.calls == [{"thread_id": thread_id}]

    async def test_a_deleted_message_is_forgotten_with_its_thread(self, datalayer, user, recorder):
        from tests.contracts.datalayer import step

        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id, type="user_message")
        await datalayer.create_step(message)
        await datalayer.flush()
        with self.acting_as(user.identifier):
            await datalayer.delete_step(message["id"])
        await datalayer.flush()
        assert recorder.calls == [{"step_id": message["id"], "thread_id": thread_id}]

    async def test_a_deleted_attachment_is_forgotten_and_a_refused_delete_is_not(self, datalayer, user, recorder):
        from datalayers.errors import NotYours
        from tests.contracts.datalayer import new_id, step

        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id, type="user_message")
        await datalayer.create_step(message)
        element = File(name="notes.txt", content=b"notes", thread_id=thread_id, for_id=message["id"], mime="text/plain")
        with self.acting_as(user.identifier):
            await datalayer.create_element(element)
        await datalayer.flush()
        with self.acting_as(f"intruder-{new_id()}"), pytest.raises(NotYours):
            await datalayer.delete_element(element.id, thread_id)
        await datalayer.flush()
        assert recorder.calls == []
        with self.acting_as(user.identifier):
            await datalayer.delete_element(element.id, thread_id)
        await datalayer.flush()
        assert recorder.calls == [{"element_id": element.id, "thread_id": thread_id}]

    async def test_a_failing_derived_store_is_told_again_until_it_succeeds(self, datalayer, user, recorder):
        recorder.failures = 2
        datalayer.derived.retry_first_seconds = 0.01
        thread_id = await self.new_thread(datalayer, user)
        await datalayer.flush()
        await datalayer.delete_thread(thread_id)  # succeeds: the rows are gone, the forget is journaled
        for _ in range(200):
            if recorder.calls:
                break
            await asyncio.sleep(0.02)
        assert recorder.calls == [{"thread_id": thread_id}]
        assert recorder.failures == 0
