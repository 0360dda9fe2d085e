"""The behavioural contract of Chainlit's `BaseDataLayer`, as this project defines it.

Every data layer (SQLAlchemy on each database, DynamoDB, a developer's own subclass) runs
these same tests. To join, subclass `DataLayerContract` in a test module and provide a
`datalayer` fixture returning a layer whose `.storage` is a `storage.base.BlobStorage`
(see tests/datalayers/test_custom_subclass.py for the few lines it takes).

Tests isolate themselves with fresh ids and users, so one database serves the whole run.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from chainlit.element import File, Image, Text
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from datalayers.actor import request_user
from storage.base import ObjectNotFound


def new_id() -> str:
    return str(uuid.uuid4())


def step(thread_id: str, step_id: str | None = None, **fields) -> dict:
    data = {
        "id": step_id or new_id(),
        "threadId": thread_id,
        "name": "Assistant",
        "type": "assistant_message",
        "streaming": False,
        "input": "",
        "output": "hello",
        "metadata": {},
        "createdAt": "2026-01-01T00:00:00.000000Z",
    }
    data.update(fields)
    return data


def timestamp(second: int) -> str:
    return f"2026-01-01T00:{second // 60:02d}:{second % 60:02d}.000000Z"


class DataLayerContract:
    """Subclasses provide the `datalayer` fixture."""

    # ------------------------------------------------------------------ helpers
    @pytest.fixture
    async def user(self, datalayer):
        return await datalayer.create_user(User(identifier=f"user-{new_id()}", metadata={"role": "tester"}))

    async def new_thread(self, datalayer, user, name="A thread", **kwargs) -> str:
        thread_id = new_id()
        await datalayer.update_thread(thread_id, name=name, user_id=user.id, **kwargs)
        return thread_id

    async def list_all(self, datalayer, user, page_size=5, **filters) -> list[str]:
        ids, cursor = [], None
        for _ in range(1000):
            page = await datalayer.list_threads(
                Pagination(first=page_size, cursor=cursor), ThreadFilter(userId=user.id, **filters)
            )
            assert len(page.data) <= page_size
            ids.extend(t["id"] for t in page.data)
            if not page.pageInfo.hasNextPage:
                return ids
            cursor = page.pageInfo.endCursor
        raise AssertionError("pagination never ended")

    async def assert_blob_gone(self, datalayer, key):
        with pytest.raises(ObjectNotFound):
            await datalayer.storage.read_file(key)

    # ------------------------------------------------------------------ users
    async def test_get_user_unknown_returns_none(self, datalayer):
        assert await datalayer.get_user(f"nobody-{new_id()}") is None

    async def test_create_user_then_get_user(self, datalayer):
        identifier = f"alice-{new_id()}@example.com"
        created = await datalayer.create_user(User(identifier=identifier, metadata={"plan": "pro"}))
        assert created.identifier == identifier and created.id and created.createdAt
        fetched = await datalayer.get_user(identifier)
        assert fetched.id == created.id
        assert fetched.metadata["plan"] == "pro"
        assert fetched.createdAt == created.createdAt

    async def test_create_user_on_every_login_keeps_id_and_created_at(self, datalayer):
        identifier = f"bob-{new_id()}"
        first = await datalayer.create_user(User(identifier=identifier, metadata={"n": 1}))
        await asyncio.sleep(0.01)
        second = await datalayer.create_user(User(identifier=identifier, metadata={"n": 2}))
        assert second.id == first.id
        assert second.createdAt == first.createdAt
        assert (await datalayer.get_user(identifier)).metadata["n"] == 2

    async def test_concurrent_first_logins_create_one_user(self, datalayer):
        identifier = f"carol-{new_id()}"
        results = await asyncio.gather(*(datalayer.create_user(User(identifier=identifier)) for _ in range(5)))
        assert len({r.id for r in results}) == 1

    # ------------------------------------------------------------------ threads
    async def test_update_thread_creates_and_get_thread_returns_it(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user, name="Trip planning", metadata={"a": 1}, tags=["x"])
        thread = await datalayer.get_thread(thread_id)
        assert thread["id"] == thread_id
        assert thread["name"] == "Trip planning"
        assert thread["userId"] == user.id
        assert thread["userIdentifier"] == user.identifier
        assert thread["metadata"] == {"a": 1}
        assert thread["tags"] == ["x"]
        assert thread["createdAt"]
        assert thread["steps"] == [] and thread["elements"] == []

    async def test_update_thread_none_means_unchanged_and_metadata_merges(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user, name="Original", metadata={"keep": 1, "drop": 2}, tags=["t"])
        before = await datalayer.get_thread(thread_id)
        await datalayer.update_thread(thread_id, metadata={"drop": None, "new": {"nested": True}})
        await datalayer.update_thread(thread_id, name="Renamed")
        thread = await datalayer.get_thread(thread_id)
        assert thread["name"] == "Renamed"
        assert thread["metadata"] == {"keep": 1, "new": {"nested": True}}
        assert thread["tags"] == ["t"]
        assert thread["userIdentifier"] == user.identifier
        assert thread["createdAt"] == before["createdAt"]

    async def test_update_thread_renames_from_metadata_name(self, datalayer, user):
        # Apps keep the name in the user session, which Chainlit saves as thread metadata;
        # Chainlit's own SQL layers rename the thread from it.
        thread_id = await self.new_thread(datalayer, user, name="First message")
        await datalayer.update_thread(thread_id, metadata={"name": "Chosen title", "other": 1})
        thread = await datalayer.get_thread(thread_id)
        assert thread["name"] == "Chosen title"
        assert thread["metadata"]["other"] == 1
        await datalayer.update_thread(thread_id, name="Explicit", metadata={"name": "ignored"})
        assert (await datalayer.get_thread(thread_id))["name"] == "Explicit"

    async def test_a_step_creating_its_thread_gives_it_the_acting_user(self, datalayer, user):
        thread_id = new_id()
        token = request_user.set(user.identifier)
        try:
            await datalayer.create_step(step(thread_id, type="user_message", output="hi"))
        finally:
            request_user.reset(token)
        assert await datalayer.get_thread_author(thread_id) == user.identifier
        assert thread_id in await self.list_all(datalayer, user)
        # Chainlit's thread setup arriving later names it and never changes the owner.
        other = await datalayer.create_user(User(identifier=f"other-{new_id()}"))
        await datalayer.update_thread(thread_id, name="hi", user_id=other.id)
        thread = await datalayer.get_thread(thread_id)
        assert thread["userIdentifier"] == user.identifier and thread["name"] == "hi"
        assert thread_id not in await self.list_all(datalayer, other)

    async def test_an_ownerless_thread_gets_its_owner_from_the_next_step(self, datalayer, user):
        thread_id = new_id()
        await datalayer.create_step(step(thread_id, type="user_message", output="no session user"))
        assert await datalayer.get_thread_author(thread_id) == ""
        token = request_user.set(user.identifier)
        try:
            await datalayer.create_step(step(thread_id, output="reply", createdAt=timestamp(3)))
        finally:
            request_user.reset(token)
        assert await datalayer.get_thread_author(thread_id) == user.identifier

    async def test_update_thread_with_large_metadata(self, datalayer, user):
        session = {"history": ["x" * 1000 for _ in range(300)]}  # ~300 KB, like a persisted user session
        thread_id = await self.new_thread(datalayer, user, metadata=session)
        assert (await datalayer.get_thread(thread_id))["metadata"] == session

    async def test_get_thread_author(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        assert await datalayer.get_thread_author(thread_id) == user.identifier
        assert await datalayer.get_thread_author(new_id()) == ""

    @pytest.mark.parametrize("bad_id", ["not-a-uuid", "x' OR '1'='1", "%", ""])
    async def test_unknown_or_malformed_ids_are_not_found(self, datalayer, bad_id):
        assert await datalayer.get_thread(bad_id) is None
        assert await datalayer.get_thread_author(bad_id) == ""
        assert await datalayer.get_element(bad_id, bad_id) is None
        assert await datalayer.delete_feedback(bad_id) is False

    async def test_delete_thread_cascades_to_steps_elements_feedback_and_blobs(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        other_id = await self.new_thread(datalayer, user, name="survivor")
        message = step(thread_id)
        await datalayer.create_step(message)
        await datalayer.create_step(step(other_id, output="other"))
        await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1))
        element = File(name="notes.txt", content=b"blob bytes", thread_id=thread_id, for_id=message["id"], mime="text/plain")
        await datalayer.create_element(element)
        key = (await datalayer.get_element(thread_id, element.id))["objectKey"]
        assert await datalayer.storage.read_file(key) == b"blob bytes"

        await datalayer.delete_thread(thread_id)

        assert await datalayer.get_thread(thread_id) is None
        assert await datalayer.get_element(thread_id, element.id) is None
        assert await datalayer.get_thread_author(thread_id) == ""
        await self.assert_blob_gone(datalayer, key)
        assert thread_id not in await self.list_all(datalayer, user, feedback=1)
        survivor = await datalayer.get_thread(other_id)
        assert [s["output"] for s in survivor["steps"]] == ["other"]

    # ------------------------------------------------------------------ steps
    async def test_create_step_round_trip(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        data = step(
            thread_id, name="Tool", type="tool", input="question", output="answer", isError=False,
            metadata={"icon": "search"}, tags=["a", "b"], language="python", showInput="json",
            start="2026-01-01T00:00:00.000000Z", end="2026-01-01T00:00:01.500000Z",
            generation={"model": "m", "tokenCount": 12, "settings": {"temperature": 0.2}},
            defaultOpen=True, autoCollapse=False, command="search", modes={"mode": "fast"},
        )
        await datalayer.create_step(data)
        stored = (await datalayer.get_thread(thread_id))["steps"][0]
        for key in ("id", "name", "type", "input", "output", "metadata", "tags", "language", "showInput",
                    "generation", "defaultOpen", "autoCollapse", "command", "modes", "isError"):
            assert stored[key] == data[key], key
        assert stored["createdAt"].startswith("2026-01-01T00:00:00")
        assert stored["end"].startswith("2026-01-01T00:00:01.5")

    async def test_show_input_booleans_round_trip(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        await datalayer.create_step(step(thread_id, showInput=False))
        await datalayer.create_step(step(thread_id, showInput=True, createdAt=timestamp(5)))
        values = [s["showInput"] for s in (await datalayer.get_thread(thread_id))["steps"]]
        assert values == [False, True]

    async def test_steps_come_back_in_creation_order(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        for second in (30, 10, 20):
            await datalayer.create_step(step(thread_id, output=f"at {second}", createdAt=timestamp(second)))
        outputs = [s["output"] for s in (await datalayer.get_thread(thread_id))["steps"]]
        assert outputs == ["at 10", "at 20", "at 30"]

    async def test_timestamps_with_offsets_are_stored_in_utc_order(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        # 01:00+02:00 is 23:00Z the day before: it must sort first.
        await datalayer.create_step(step(thread_id, output="later", createdAt="2026-01-01T00:30:00Z"))
        await datalayer.create_step(step(thread_id, output="earlier", createdAt="2026-01-01T01:00:00+02:00"))
        stored = (await datalayer.get_thread(thread_id))["steps"]
        assert [s["output"] for s in stored] == ["earlier", "later"]
        assert stored[0]["createdAt"] == "2025-12-31T23:00:00.000000Z"

    async def test_update_before_create_keeps_the_final_output(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        step_id = new_id()
        await datalayer.update_step(step(thread_id, step_id, output="final answer", streaming=False))
        await datalayer.create_step(step(thread_id, step_id, output="", streaming=True))
        stored = (await datalayer.get_thread(thread_id))["steps"]
        assert len(stored) == 1
        assert stored[0]["output"] == "final answer"
        assert stored[0]["streaming"] is False

    async def test_repeated_and_concurrent_writes_of_one_step(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        step_id = new_id()
        await asyncio.gather(
            datalayer.create_step(step(thread_id, step_id, output="")),
            datalayer.create_step(step(thread_id, step_id, output="")),
            datalayer.update_step(step(thread_id, step_id, output="done")),
        )
        await datalayer.create_step(step(thread_id, step_id, output=""))
        stored = (await datalayer.get_thread(thread_id))["steps"]
        assert [s["output"] for s in stored] == ["done"]

    async def test_partial_update_never_erases_stored_fields(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        data = step(thread_id, name="Assistant", input="the question", output="draft",
                    generation={"model": "m"}, metadata={"a": 1}, language="en")
        await datalayer.create_step(data)
        await datalayer.update_step({"id": data["id"], "threadId": thread_id, "output": "final",
                                     "generation": None, "metadata": {"b": 2}})
        stored = (await datalayer.get_thread(thread_id))["steps"][0]
        assert stored["output"] == "final"
        assert stored["input"] == "the question"
        assert stored["name"] == "Assistant"
        assert stored["generation"] == {"model": "m"}
        assert stored["language"] == "en"
        assert stored["metadata"] == {"a": 1, "b": 2}

    async def test_unknown_step_keys_are_kept(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        data = step(thread_id, someFutureKey={"nested": [1, 2]}, anotherFlag=True)
        await datalayer.create_step(data)
        await datalayer.update_step({"id": data["id"], "threadId": thread_id, "laterKey": "x"})
        stored = (await datalayer.get_thread(thread_id))["steps"][0]
        assert stored["someFutureKey"] == {"nested": [1, 2]}
        assert stored["anotherFlag"] is True
        assert stored["laterKey"] == "x"

    async def test_long_output_is_stored_whole(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        text = "ü" * 200_000 + "end"  # past MySQL TEXT's 64 KB and multi-byte
        await datalayer.create_step(step(thread_id, output=text))
        assert (await datalayer.get_thread(thread_id))["steps"][0]["output"] == text

    async def test_step_before_thread_creates_the_thread(self, datalayer, user):
        thread_id = new_id()
        await datalayer.create_step(step(thread_id, type="user_message", output="first!"))
        await datalayer.update_thread(thread_id, name="late thread", user_id=user.id)
        thread = await datalayer.get_thread(thread_id)
        assert thread["userIdentifier"] == user.identifier
        assert [s["output"] for s in thread["steps"]] == ["first!"]
        assert thread_id in await self.list_all(datalayer, user)

    async def test_delete_step_removes_its_feedback_elements_and_blobs(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        doomed, kept = step(thread_id), step(thread_id, output="kept", createdAt=timestamp(9))
        await datalayer.create_step(doomed)
        await datalayer.create_step(kept)
        feedback_id = await datalayer.upsert_feedback(Feedback(forId=doomed["id"], threadId=thread_id, value=0))
        element = Text(name="snippet", content="some text", thread_id=thread_id, for_id=doomed["id"], mime="text/plain")
        await datalayer.create_element(element)
        key = (await datalayer.get_element(thread_id, element.id))["objectKey"]

        await datalayer.delete_step(doomed["id"])

        thread = await datalayer.get_thread(thread_id)
        assert [s["id"] for s in thread["steps"]] == [kept["id"]]
        assert thread["elements"] == []
        assert await datalayer.delete_feedback(feedback_id) is False
        await self.assert_blob_gone(datalayer, key)
        assert thread_id not in await self.list_all(datalayer, user, feedback=0)

    # ------------------------------------------------------------------ feedback
    async def test_feedback_upsert_shows_on_step_and_updates_in_place(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)
        feedback_id = await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1, comment="nice"))
        assert isinstance(feedback_id, str) and feedback_id
        stored = (await datalayer.get_thread(thread_id))["steps"][0]["feedback"]
        assert stored["id"] == feedback_id and stored["value"] == 1 and stored["comment"] == "nice"

        same = await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=0, id=feedback_id))
        again = await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=0, comment="meh"))
        assert same == feedback_id == again
        stored = (await datalayer.get_thread(thread_id))["steps"][0]["feedback"]
        assert stored["value"] == 0 and stored["comment"] == "meh"

    async def test_delete_feedback(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)
        feedback_id = await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1))
        assert await datalayer.delete_feedback(feedback_id) is True
        assert "feedback" not in (await datalayer.get_thread(thread_id))["steps"][0]
        assert await datalayer.delete_feedback(feedback_id) is False

    async def test_feedback_on_another_users_thread_is_refused(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)
        mine = await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1))
        token = request_user.set(f"intruder-{new_id()}")
        try:
            with pytest.raises(PermissionError):
                await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=0))
            with pytest.raises(PermissionError):
                await datalayer.delete_feedback(mine)
        finally:
            request_user.reset(token)
        token = request_user.set(user.identifier)
        try:
            assert await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1)) == mine
        finally:
            request_user.reset(token)
        assert (await datalayer.get_thread(thread_id))["steps"][0]["feedback"]["value"] == 1

    async def test_feedback_for_an_unknown_step_is_refused(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        with pytest.raises(ValueError):
            await datalayer.upsert_feedback(Feedback(forId=new_id(), threadId=thread_id, value=1))
        assert thread_id not in await self.list_all(datalayer, user, feedback=1)

    async def test_feedback_value_must_be_0_or_1(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)
        bad = Feedback(forId=message["id"], threadId=thread_id, value=1)
        bad.value = 5  # bypass pydantic, as a raw client payload could
        with pytest.raises(ValueError):
            await datalayer.upsert_feedback(bad)

    # ------------------------------------------------------------------ elements
    async def test_element_blob_written_and_url_signed_on_read(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)
        element = Image(name="chart ü.png", content=b"\x89PNG fake", thread_id=thread_id, for_id=message["id"],
                        mime="image/png", display="inline", size="large")
        await datalayer.create_element(element)

        fetched = await datalayer.get_element(thread_id, element.id)
        assert fetched["name"] == "chart ü.png" and fetched["type"] == "image" and fetched["mime"] == "image/png"
        assert fetched["forId"] == message["id"] and fetched["display"] == "inline" and fetched["size"] == "large"
        key = fetched["objectKey"]
        assert user.identifier in key and thread_id in key and element.id in key
        assert await datalayer.storage.read_file(key) == b"\x89PNG fake"
        assert fetched["url"] == await datalayer.storage.get_read_url(key)
        in_thread = (await datalayer.get_thread(thread_id))["elements"]
        assert [e["id"] for e in in_thread] == [element.id]
        assert in_thread[0]["url"] == await datalayer.storage.get_read_url(key)

    async def test_element_from_path(self, datalayer, user, tmp_path):
        thread_id = await self.new_thread(datalayer, user)
        source = tmp_path / "report.pdf"
        source.write_bytes(b"%PDF-1.4 content")
        element = File(name="report.pdf", path=str(source), thread_id=thread_id, for_id=new_id(), mime="application/pdf")
        await datalayer.create_element(element)
        key = (await datalayer.get_element(thread_id, element.id))["objectKey"]
        assert await datalayer.storage.read_file(key) == b"%PDF-1.4 content"

    async def test_external_url_element_is_kept_as_is(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        element = Image(name="remote", url="https://example.com/cat.png", thread_id=thread_id, for_id=new_id())
        await datalayer.create_element(element)
        fetched = await datalayer.get_element(thread_id, element.id)
        assert fetched["url"] == "https://example.com/cat.png"
        assert not fetched.get("objectKey")

    async def test_recreating_an_element_is_idempotent(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        element = File(name="a.txt", content=b"v1", thread_id=thread_id, for_id=new_id(), mime="text/plain")
        await datalayer.create_element(element)
        element.content = b"v2"
        await datalayer.create_element(element)
        thread = await datalayer.get_thread(thread_id)
        assert len(thread["elements"]) == 1
        assert await datalayer.storage.read_file(thread["elements"][0]["objectKey"]) == b"v2"

    async def test_delete_element_removes_row_and_blob(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        element = File(name="gone.txt", content="bye", thread_id=thread_id, for_id=new_id(), mime="text/plain")
        await datalayer.create_element(element)
        key = (await datalayer.get_element(thread_id, element.id))["objectKey"]
        await datalayer.delete_element(element.id, thread_id)
        assert await datalayer.get_element(thread_id, element.id) is None
        await self.assert_blob_gone(datalayer, key)
        await datalayer.delete_element(element.id, thread_id)  # idempotent

    async def test_failed_upload_is_an_error_and_stores_no_row(self, datalayer, user, monkeypatch):
        thread_id = await self.new_thread(datalayer, user)
        element = File(name="x.txt", content=b"data", thread_id=thread_id, for_id=new_id(), mime="text/plain")

        async def broken_upload(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(datalayer.storage, "upload_file", broken_upload)
        with pytest.raises(OSError):
            await datalayer.create_element(element)
        assert await datalayer.get_element(thread_id, element.id) is None

    # ------------------------------------------------------------------ list_threads
    async def test_pagination_walks_every_thread_once_newest_first(self, datalayer, user):
        created = []
        for i in range(17):
            created.append(await self.new_thread(datalayer, user, name=f"thread {i}"))
        listed = await self.list_all(datalayer, user, page_size=5)
        assert sorted(listed) == sorted(created)
        assert len(listed) == len(set(listed)) == 17
        first_page = await datalayer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
        assert first_page.data[0]["id"] == created[-1]
        assert all(t["steps"] == [] for t in first_page.data)
        assert {"id", "name", "createdAt", "metadata"} <= set(first_page.data[0])

    async def test_activity_moves_a_thread_to_the_top(self, datalayer, user):
        old = await self.new_thread(datalayer, user, name="old")
        await self.new_thread(datalayer, user, name="new")
        await asyncio.sleep(0.002)
        await datalayer.create_step(step(old, type="user_message", output="back again"))
        assert (await self.list_all(datalayer, user))[0] == old

    async def test_other_users_threads_are_not_listed_and_cursors_do_not_transfer(self, datalayer, user):
        other = await datalayer.create_user(User(identifier=f"other-{new_id()}"))
        for _ in range(3):
            await self.new_thread(datalayer, user)
        foreign = await self.new_thread(datalayer, other)
        assert foreign not in await self.list_all(datalayer, user, page_size=2)
        page = await datalayer.list_threads(Pagination(first=1), ThreadFilter(userId=user.id))
        with pytest.raises(ValueError):
            await datalayer.list_threads(Pagination(first=1, cursor=page.pageInfo.endCursor), ThreadFilter(userId=other.id))
        with pytest.raises(ValueError):
            await datalayer.list_threads(Pagination(first=1, cursor=page.pageInfo.endCursor[:-2] + "xx"),
                                         ThreadFilter(userId=user.id))

    async def test_search_is_case_insensitive_over_names_and_messages(self, datalayer, user):
        by_name = await self.new_thread(datalayer, user, name="Quarterly BUDGET review")
        by_message = await self.new_thread(datalayer, user, name="untitled")
        await datalayer.create_step(step(by_message, type="user_message", output="what about the budget?"))
        unrelated = await self.new_thread(datalayer, user, name="holiday")
        await datalayer.create_step(step(unrelated, type="user_message", output="beach"))
        found = await self.list_all(datalayer, user, search="BuDgEt")
        assert sorted(found) == sorted([by_name, by_message])
        assert await self.list_all(datalayer, user, search="no such words anywhere") == []

    async def test_search_folds_case_in_every_script(self, datalayer, user):
        cyrillic = await self.new_thread(datalayer, user, name="ЗАМЕТКИ о поездке")
        german = await self.new_thread(datalayer, user, name="untitled")
        await datalayer.create_step(step(german, type="user_message", output="Straße ÜBER die Brücke 🚲"))
        assert await self.list_all(datalayer, user, search="заметки") == [cyrillic]
        assert await self.list_all(datalayer, user, search="über DIE brücke") == [german]
        assert await self.list_all(datalayer, user, search="🚲") == [german]
        thread = await datalayer.get_thread(german)
        assert thread["steps"][0]["output"] == "Straße ÜBER die Brücke 🚲"

    async def test_search_treats_wildcards_literally(self, datalayer, user):
        percent = await self.new_thread(datalayer, user, name="growth of 100% yearly")
        underscore = await self.new_thread(datalayer, user, name="snake_case names")
        await self.new_thread(datalayer, user, name="100 percent and snakeXcase")
        assert await self.list_all(datalayer, user, search="100%") == [percent]
        assert await self.list_all(datalayer, user, search="snake_case") == [underscore]
        assert await self.list_all(datalayer, user, search="%") == [percent]

    async def test_search_matches_any_step_the_user_sees(self, datalayer, user):
        # As in Chainlit's own layers: a tool step's output is shown, so it is searchable.
        thread_id = await self.new_thread(datalayer, user, name="plain")
        await datalayer.create_step(step(thread_id, type="tool", output="Weather-Tool-Output"))
        assert await self.list_all(datalayer, user, search="weather-tool-output") == [thread_id]
        await datalayer.update_step(step(thread_id, type="tool", output="renamed result"))
        assert await self.list_all(datalayer, user, search="renamed RESULT") == [thread_id]

    async def test_feedback_filter_both_values(self, datalayer, user):
        liked, disliked, unrated = [await self.new_thread(datalayer, user) for _ in range(3)]
        for thread_id, value in ((liked, 1), (disliked, 0)):
            message = step(thread_id)
            await datalayer.create_step(message)
            await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=value))
        await datalayer.create_step(step(unrated))
        assert await self.list_all(datalayer, user, feedback=1) == [liked]
        assert await self.list_all(datalayer, user, feedback=0) == [disliked]
        assert sorted(await self.list_all(datalayer, user)) == sorted([liked, disliked, unrated])

    async def test_search_and_feedback_filters_fill_pages(self, datalayer, user):
        wanted = []
        for i in range(12):
            thread_id = await self.new_thread(datalayer, user, name=f"topic {'match' if i % 3 == 0 else 'other'} {i}")
            if i % 3 == 0:
                message = step(thread_id)
                await datalayer.create_step(message)
                await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1))
                wanted.append(thread_id)
        page = await datalayer.list_threads(Pagination(first=3), ThreadFilter(userId=user.id, search="MATCH", feedback=1))
        assert len(page.data) == 3 and page.pageInfo.hasNextPage
        assert sorted(await self.list_all(datalayer, user, page_size=3, search="match", feedback=1)) == sorted(wanted)

    async def test_listing_needs_a_user(self, datalayer, user):
        await self.new_thread(datalayer, user)
        with pytest.raises(ValueError):
            await datalayer.list_threads(Pagination(first=5), ThreadFilter())

    async def test_page_size_must_be_positive(self, datalayer, user):
        with pytest.raises(ValueError):
            await datalayer.list_threads(Pagination(first=0), ThreadFilter(userId=user.id))

    # ------------------------------------------------------------------ favorites
    async def test_favorite_steps(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        favorite, plain = step(thread_id, output="keep this"), step(thread_id, output="meh", createdAt=timestamp(3))
        await datalayer.create_step(favorite)
        await datalayer.create_step(plain)
        await datalayer.set_step_favorite(dict(favorite), True)
        assert [s["id"] for s in await datalayer.get_favorite_steps(user.id)] == [favorite["id"]]
        stored = (await datalayer.get_thread(thread_id))["steps"][0]
        assert stored["output"] == "keep this" and stored["metadata"]["favorite"] is True
        await datalayer.set_step_favorite(dict(favorite), False)
        assert await datalayer.get_favorite_steps(user.id) == []
        other = await datalayer.create_user(User(identifier=f"other-{new_id()}"))
        assert await datalayer.get_favorite_steps(other.id) == []

    # ------------------------------------------------------------------ misc
    async def test_build_debug_url_is_a_string(self, datalayer):
        assert isinstance(await datalayer.build_debug_url(), str)
