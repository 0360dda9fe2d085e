"""The contract of `page_messages` (a thread's messages a page at a time, oldest first),
joined by every backend's contract class next to `DataLayerContract`."""

from __future__ import annotations

from chainlit.element import File
from chainlit.types import Feedback

from tests.contracts.datalayer import new_id, step, timestamp


class MessagePagesContract:
    """Subclasses provide `datalayer`, and the `user` / `new_thread` helpers of DataLayerContract."""

    async def walk(self, datalayer, thread_id: str, limit: int) -> tuple[list[dict], list[dict]]:
        found, attached, position = [], [], None
        for _ in range(100):
            page, elements = await datalayer.page_messages(thread_id, position, limit)
            assert len(page) <= limit
            found += page
            attached += elements
            if len(page) < limit:
                return found, attached
            position = (page[-1].get("createdAt"), page[-1]["id"])
        raise AssertionError("paging never ended")

    async def test_pages_walk_the_messages_in_thread_order(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        ids = []
        for second in (5, 1, 3, 3, 2, 4):  # written out of order, one tie on the time
            message = step(thread_id, createdAt=timestamp(second), output=f"at {second}",
                           type="user_message" if second % 2 else "assistant_message")
            ids.append(message["id"])
            await datalayer.create_step(message)
        await datalayer.create_step(step(thread_id, type="run", createdAt=timestamp(0)))  # not a message
        expected = [s["id"] for s in (await datalayer.get_thread(thread_id))["steps"] if s["type"] != "run"]
        assert sorted(expected) == sorted(ids)
        for limit in (1, 2, 4, 50):
            found, _ = await self.walk(datalayer, thread_id, limit)
            assert [s["id"] for s in found] == expected, limit

    async def test_a_page_carries_ratings_and_attachments_of_its_messages(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        first, second = step(thread_id, createdAt=timestamp(1)), step(thread_id, createdAt=timestamp(2))
        for message in (first, second):
            await datalayer.create_step(message)
        await datalayer.upsert_feedback(Feedback(forId=second["id"], threadId=thread_id, value=0, comment="meh"))
        element = File(name="a.txt", content=b"attached", thread_id=thread_id, for_id=second["id"], mime="text/plain")
        await datalayer.create_element(element)
        page, elements = await datalayer.page_messages(thread_id, (first["createdAt"], first["id"]), 10)
        assert [s["id"] for s in page] == [second["id"]]
        assert page[0]["feedback"]["value"] == 0 and page[0]["feedback"]["comment"] == "meh"
        assert [e["id"] for e in elements] == [element.id] and elements[0]["url"]
        page, elements = await datalayer.page_messages(thread_id, None, 1)
        assert [s["id"] for s in page] == [first["id"]] and elements == [] and "feedback" not in page[0]

    async def test_unknown_threads_and_pending_writes(self, datalayer, user):
        assert await datalayer.page_messages(new_id(), None, 10) == ([], [])
        assert await datalayer.page_messages("bad\x00id", None, 10) == ([], [])
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)  # journaled: the page waits for it
        page, _ = await datalayer.page_messages(thread_id, None, 10)
        assert [s["id"] for s in page] == [message["id"]]
