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
from tests.contracts.derived import DerivedStoreContract


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


class DataLayerContract(DerivedStoreContract):
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

    async def test_identifiers_are_exact_case_and_trailing_spaces_make_another_user(self, datalayer):
        """MySQL/MariaDB's default collations found 'alice' for 'Alice' and 'alice ': the
        second person logged in as the first and saw their conversations."""
        alice = f"alice-{new_id()}"
        first = await datalayer.create_user(User(identifier=alice))
        for other in (alice.upper(), alice.capitalize(), f"{alice} "):
            assert await datalayer.get_user(other) is None
            created = await datalayer.create_user(User(identifier=other))
            assert created.id != first.id and created.identifier == other
            assert (await datalayer.get_user(other)).id == created.id
        assert (await datalayer.get_user(alice)).id == first.id

    # ------------------------------------------------------------------ threads
    async def test_ids_differing_only_in_case_are_different_threads(self, datalayer, user):
        other = await datalayer.create_user(User(identifier=f"other-{new_id()}"))
        lower = await self.new_thread(datalayer, user, name="mine")
        upper = lower.upper()
        await datalayer.update_thread(upper, name="theirs", user_id=other.id)
        assert (await datalayer.get_thread(lower))["name"] == "mine"
        assert (await datalayer.get_thread_author(lower)) == user.identifier
        assert (await datalayer.get_thread(upper))["name"] == "theirs"
        assert await self.list_all(datalayer, user) == [lower]
        assert await self.list_all(datalayer, other) == [upper]

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

    # ------------------------------------------------------------------ element ownership and blobs
    # Writes by element id (create over an existing id, update, delete) belong to the owner
    # of the thread: another user who learnt an id (a shared thread shows them) is refused
    # before anything is stored, and the owner's element and blob stay as they were.
    async def owned_element(self, datalayer, user, content: bytes = b"owner's bytes"):
        thread_id = await self.new_thread(datalayer, user)
        message = step(thread_id)
        await datalayer.create_step(message)
        element = File(name="plan.txt", content=content, thread_id=thread_id, for_id=message["id"], mime="text/plain")
        token = request_user.set(user.identifier)
        try:
            await datalayer.create_element(element)
        finally:
            request_user.reset(token)
        stored = await datalayer.get_element(thread_id, element.id)
        return thread_id, element, stored["objectKey"]

    @staticmethod
    def acting_as(identifier: str):
        class Acting:
            def __enter__(self):
                self.token = request_user.set(identifier)

            def __exit__(self, *exc):
                request_user.reset(self.token)

        return Acting()

    async def test_another_user_cannot_delete_an_element_by_id(self, datalayer, user):
        from datalayers.errors import NotYours

        thread_id, element, key = await self.owned_element(datalayer, user)
        with self.acting_as(f"intruder-{new_id()}"):
            for thread_hint in (thread_id, None, ""):
                with pytest.raises(NotYours) as refused:
                    await datalayer.delete_element(element.id, thread_hint)
                assert isinstance(refused.value, PermissionError) and "not found" in str(refused.value)
            with pytest.raises(NotYours):
                await datalayer.check_element_write(element.id, None)
        await datalayer.flush()
        assert (await datalayer.get_element(thread_id, element.id))["objectKey"] == key
        assert await datalayer.storage.read_file(key) == b"owner's bytes"

    async def test_another_user_cannot_replace_an_element_by_id(self, datalayer, user):
        from datalayers.errors import NotYours
        from storage.base import element_object_key

        thread_id, element, key = await self.owned_element(datalayer, user)
        intruder = await datalayer.create_user(User(identifier=f"intruder-{new_id()}"))
        own_thread = await self.new_thread(datalayer, intruder)
        with self.acting_as(intruder.identifier):
            for target in (thread_id, own_thread):  # into the owner's thread, or moved into theirs
                forged = File(id=element.id, name="plan.txt", content=b"forged", thread_id=target,
                              for_id=element.for_id, mime="text/plain")
                with pytest.raises(NotYours):
                    await datalayer.create_element(forged)
                await self.assert_blob_gone(datalayer, element_object_key(intruder.identifier, target, element.id,
                                                                          "plan.txt"))
            with pytest.raises(NotYours):  # nor write into the owner's thread under a new id
                await datalayer.create_element(File(name="x.txt", content=b"x", thread_id=thread_id, mime="text/plain"))
        await datalayer.flush()
        assert [e["id"] for e in (await datalayer.get_thread(thread_id))["elements"]] == [element.id]
        assert (await datalayer.get_element(thread_id, element.id))["objectKey"] == key
        assert await datalayer.get_element(own_thread, element.id) is None
        assert await datalayer.storage.read_file(key) == b"owner's bytes"

    async def test_the_owner_still_updates_and_deletes_their_elements(self, datalayer, user):
        thread_id, element, key = await self.owned_element(datalayer, user)
        with self.acting_as(user.identifier):
            await datalayer.check_element_write(element.id, thread_id)
            element.content = b"second version"
            await datalayer.create_element(element)
            assert await datalayer.storage.read_file(key) == b"second version"
            await datalayer.delete_element(element.id, thread_id)
        assert await datalayer.get_element(thread_id, element.id) is None
        await self.assert_blob_gone(datalayer, key)

    async def test_ownership_unknown_at_write_time_is_checked_when_applied(self, datalayer, user, monkeypatch):
        """The database could not be asked (an outage): the write is journaled and the
        check runs when it is applied, which refuses it and removes its blob."""
        from storage.base import element_object_key

        thread_id, element, key = await self.owned_element(datalayer, user)
        intruder = f"intruder-{new_id()}"
        real_element_thread = datalayer._element_thread
        unreachable = {"left": 1}

        async def element_thread_once_unreachable(element_id, journaled=False):
            if unreachable["left"]:
                unreachable["left"] -= 1
                raise ConnectionError("database unreachable")
            return await real_element_thread(element_id, journaled)

        monkeypatch.setattr(datalayer, "_element_thread", element_thread_once_unreachable)
        forged = File(id=element.id, name="plan.txt", content=b"forged", thread_id=thread_id,
                      for_id=element.for_id, mime="text/plain")
        with self.acting_as(intruder):
            await datalayer.create_element(forged)  # journaled, not yet checked
        await datalayer.flush()
        assert unreachable["left"] == 0
        assert (await datalayer.get_element(thread_id, element.id))["objectKey"] == key
        assert await datalayer.storage.read_file(key) == b"owner's bytes"
        await self.assert_blob_gone(datalayer, element_object_key(intruder, thread_id, element.id, "plan.txt"))

    async def test_a_declared_type_that_does_not_parse_is_stored_as_bytes(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        image = Image(name="x.png", content=b"<script>alert(1)</script>", thread_id=thread_id, for_id=new_id(),
                      mime="image/png,text/html")
        await datalayer.create_element(image)
        stored = await datalayer.get_element(thread_id, image.id)
        assert stored["mime"] == "application/octet-stream"
        assert stored["type"] == "file"  # no longer shown as a picture
        clean = Image(name="y.png", content=b"\x89PNG", thread_id=thread_id, for_id=new_id(), mime="IMAGE/PNG")
        await datalayer.create_element(clean)
        stored = await datalayer.get_element(thread_id, clean.id)
        assert stored["mime"] == "image/png" and stored["type"] == "image"

    async def test_a_refused_element_row_leaves_no_blob(self, datalayer, user, monkeypatch):
        thread_id = await self.new_thread(datalayer, user)
        element = File(name="r.txt", content=b"row refused", thread_id=thread_id, for_id=new_id(), mime="text/plain")

        async def refusing_write(row, actor):
            raise ValueError("the database refused the row")

        monkeypatch.setattr(datalayer, "_write_element", refusing_write)
        rejected_before = datalayer.writes.rejected
        await datalayer.create_element(element)  # the row is journaled; applying it fails for good
        await datalayer.flush()
        monkeypatch.undo()
        await datalayer.flush()
        assert datalayer.writes.rejected == rejected_before + 1
        datalayer.writes.rejected = rejected_before  # the layer is shared: leave its count as found
        assert await datalayer.get_element(thread_id, element.id) is None
        await self.assert_blob_gone(datalayer, f"{user.identifier}/{thread_id}/{element.id}/r.txt")

    async def test_thread_delete_with_a_failing_blob_store_succeeds_and_retries_until_done(self, datalayer, user):
        import time

        thread_id, element, key = await self.owned_element(datalayer, user)
        other_thread = await self.new_thread(datalayer, user, name="unrelated")
        storage = datalayer.storage
        real_delete_files = storage.delete_files
        attempts = []

        async def failing_delete_files(keys):
            attempts.append(list(keys))
            raise OSError("blob store unavailable")

        datalayer.attachments.retry_first_seconds = 0.05
        storage.delete_files = failing_delete_files
        try:
            await datalayer.delete_thread(thread_id)  # the rows go; the blob is retried
            assert await datalayer.get_thread(thread_id) is None
            assert await datalayer.storage.read_file(key) == b"owner's bytes"
            for _ in range(100):
                if len(attempts) >= 4:  # the first attempt, then retries: not given up
                    break
                await asyncio.sleep(0.05)
            assert len(attempts) >= 4
            # Nothing else waits for the cleanup: the user's threads, the deleted id itself.
            started = time.monotonic()
            assert other_thread in await self.list_all(datalayer, user)
            assert await datalayer.get_thread_author(thread_id) == ""
            await datalayer.create_step(step(other_thread, output="still saving"))
            assert datalayer.pending(other_thread)[0] <= 1
            assert time.monotonic() - started < 2
            await datalayer.delete_thread(thread_id)  # deleting again is harmless
        finally:
            storage.delete_files = real_delete_files
        assert await datalayer.flush(timeout=10)
        await self.assert_blob_gone(datalayer, key)

    # ------------------------------------------------------------------ hostile input: NUL, ids, cursors
    async def test_nul_bytes_round_trip_in_every_text_and_document(self, datalayer, user):
        nul = "before\x00after"
        # The escape's own mark (U+FDD0), a mark followed by "0", and backslashes must come
        # back exactly too, on the backend that escapes.
        tricky = "\ufdd0 \ufdd00 \\u0000 \\\x00 \ufdd0\x00"
        thread_id = await self.new_thread(datalayer, user, name=f"name {nul}",
                                          metadata={f"key{nul}": nul, "nested": {"list": [nul, tricky]}},
                                          tags=[nul])
        message = step(thread_id, type="user_message", name=f"me{nul}", input=nul, output=f"{nul} {tricky}",
                       metadata={nul: tricky, "plain": "x"})
        await datalayer.create_step(message)
        await datalayer.update_step({**message, "output": f"edited {nul}", "metadata": {nul: None, "k": tricky}})
        await datalayer.upsert_feedback(Feedback(forId=message["id"], threadId=thread_id, value=1, comment=nul))

        thread = await datalayer.get_thread(thread_id)
        assert thread["name"] == f"name {nul}" and thread["tags"] == [nul]
        assert thread["metadata"][f"key{nul}"] == nul and thread["metadata"]["nested"] == {"list": [nul, tricky]}
        stored = thread["steps"][0]
        assert stored["output"] == f"edited {nul}" and stored["input"] == nul and stored["name"] == f"me{nul}"
        assert stored["metadata"] == {"plain": "x", "k": tricky}
        assert stored["feedback"]["comment"] == nul
        listed = (await datalayer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))).data
        assert [t["name"] for t in listed if t["id"] == thread_id] == [f"name {nul}"]

    async def test_search_treats_nul_as_a_character(self, datalayer, user):
        with_nul = await self.new_thread(datalayer, user, name="plain name")
        await datalayer.create_step(step(with_nul, type="user_message", output="head\x00Tail words"))
        named = await self.new_thread(datalayer, user, name="a\x00b")
        await self.new_thread(datalayer, user, name="nothing special")
        assert sorted(await self.list_all(datalayer, user, search="\x00")) == sorted([with_nul, named])
        assert await self.list_all(datalayer, user, search="d\x00t") == [with_nul]
        assert await self.list_all(datalayer, user, search="TAIL WORDS") == [with_nul]  # text after a NUL
        assert await self.list_all(datalayer, user, search="\x00\x00") == []

    async def test_ids_over_the_limit_or_with_nul_are_refused_or_not_found(self, datalayer, user):
        from datalayers.errors import NotFound, RequestError
        from datalayers.writes import MAX_ID_LENGTH

        longest = "t" * MAX_ID_LENGTH
        await datalayer.update_thread(longest, name="longest id", user_id=user.id)
        await datalayer.create_step(step(longest, "s" * MAX_ID_LENGTH, output="kept"))
        assert (await datalayer.get_thread(longest))["steps"][0]["output"] == "kept"
        for bad in ("x" * (MAX_ID_LENGTH + 1), "a\x00b", "\x00"):
            with pytest.raises(RequestError):
                await datalayer.update_thread(bad, name="never stored", user_id=user.id)
            with pytest.raises(RequestError):
                await datalayer.create_step(step(bad))
            with pytest.raises(RequestError):
                await datalayer.create_step(step(longest, bad))
            with pytest.raises(RequestError):
                await datalayer.upsert_feedback(Feedback(forId=bad, value=1))
            assert await datalayer.get_thread(bad) is None
            assert await datalayer.get_thread_author(bad) == ""
            assert await datalayer.delete_feedback(bad) is False
            with pytest.raises(NotFound):
                await datalayer.delete_thread(bad)
        assert [s["output"] for s in (await datalayer.get_thread(longest))["steps"]] == ["kept"]
        assert datalayer.writes.rejected == 0  # refused before the journal, never by the database

    async def test_malformed_cursors_page_sizes_and_filters_are_request_errors(self, datalayer, user):
        from datalayers.errors import RequestError
        from datalayers.paging import MAX_SEARCH_LENGTH

        for _ in range(3):
            await self.new_thread(datalayer, user)
        page = await datalayer.list_threads(Pagination(first=1), ThreadFilter(userId=user.id))
        cursor = page.pageInfo.endCursor
        other = await datalayer.create_user(User(identifier=f"other-{new_id()}"))
        forged = ["garbage", "", ".", "a.b.c", "é.é", "\x00.\x00", cursor + "\ud800", cursor[:-1], "x" * 100_000,
                  cursor.split(".")[0] + "." + "A" * 22]
        for bad in forged:
            if bad == "":
                continue  # an empty cursor is the first page
            with pytest.raises(RequestError):
                await datalayer.list_threads(Pagination(first=1, cursor=bad), ThreadFilter(userId=user.id))
        with pytest.raises(RequestError):  # a cursor of another user's listing
            await datalayer.list_threads(Pagination(first=1, cursor=cursor), ThreadFilter(userId=other.id))
        for first in (0, -1, -(10**30)):
            with pytest.raises(RequestError):
                await datalayer.list_threads(Pagination(first=first), ThreadFilter(userId=user.id))
        with pytest.raises(RequestError):
            await datalayer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id,
                                                                          search="x" * (MAX_SEARCH_LENGTH + 1)))
        odd = ThreadFilter(userId=user.id)
        odd.feedback = 5  # bypass pydantic, as a raw payload could
        with pytest.raises(RequestError):
            await datalayer.list_threads(Pagination(first=5), odd)
        assert len(await self.list_all(datalayer, user)) == 3  # nothing was lost

    # ------------------------------------------------------------------ ownership of feedback and steps
    async def _shared_thread_and_intruder(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user, metadata={"is_shared": True})
        owners = step(thread_id, output="the owner's words")
        await datalayer.create_step(owners)
        rating = await datalayer.upsert_feedback(Feedback(forId=owners["id"], threadId=thread_id, value=1,
                                                          comment="mine"))
        intruder = await datalayer.create_user(User(identifier=f"intruder-{new_id()}"))
        own_thread = await self.new_thread(datalayer, intruder)
        own_step = step(own_thread, output="the intruder's own")
        token = request_user.set(intruder.identifier)
        try:
            await datalayer.create_step(own_step)
        finally:
            request_user.reset(token)
        return thread_id, owners, rating, intruder, own_thread, own_step

    async def test_feedback_by_another_users_id_or_step_is_refused_as_not_found(self, datalayer, user):
        from datalayers.errors import NotFound

        thread_id, owners, rating, intruder, own_thread, own_step = await self._shared_thread_and_intruder(
            datalayer, user)
        token = request_user.set(intruder.identifier)
        try:
            with pytest.raises(NotFound):  # the owner's rating id, on the intruder's own message
                await datalayer.upsert_feedback(Feedback(id=rating, forId=own_step["id"], threadId=own_thread,
                                                         value=0))
            with pytest.raises(NotFound):  # the owner's message
                await datalayer.upsert_feedback(Feedback(forId=owners["id"], threadId=thread_id, value=0))
            with pytest.raises(NotFound):
                await datalayer.upsert_feedback(Feedback(forId=owners["id"], threadId=own_thread, value=0))
            with pytest.raises(NotFound):
                await datalayer.delete_feedback(rating)
            with pytest.raises(NotFound):  # an id that exists nowhere
                await datalayer.upsert_feedback(Feedback(id=new_id(), forId=own_step["id"], value=1))
            assert await datalayer.delete_feedback(new_id()) is False
            mine = await datalayer.upsert_feedback(Feedback(forId=own_step["id"], threadId=own_thread, value=0))
            assert mine != rating
        finally:
            request_user.reset(token)
        kept = (await datalayer.get_thread(thread_id))["steps"][0]["feedback"]
        assert kept["id"] == rating and kept["value"] == 1 and kept["comment"] == "mine"
        assert (await datalayer.get_thread(own_thread))["steps"][0]["feedback"]["value"] == 0

    async def test_step_writes_into_another_users_thread_are_refused_and_logged(self, datalayer, user, caplog):
        import logging

        thread_id, owners, rating, intruder, own_thread, own_step = await self._shared_thread_and_intruder(
            datalayer, user)
        before = await datalayer.get_thread(thread_id)
        token = request_user.set(intruder.identifier)
        try:
            with caplog.at_level(logging.WARNING, logger="chainlit"):
                # The thread by id (as a socket session of that thread would).
                await datalayer.create_step(step(thread_id, output="planted"))
                await datalayer.update_step({**owners, "output": "overwritten"})
                await datalayer.update_thread(thread_id, name="taken over", metadata={"is_shared": False})
                await datalayer.delete_step(owners["id"])
                # The owner's step id, written into the intruder's own thread (a client
                # chooses the ids of the messages it sends).
                await datalayer.create_step({**owners, "threadId": own_thread, "output": "hijacked"})
                await datalayer.update_step({**owners, "threadId": own_thread, "output": "hijacked again",
                                             "metadata": {"favorite": True}})
                await datalayer.flush(10)
                await datalayer.delete_step(owners["id"])
                await datalayer.flush(10)
        finally:
            request_user.reset(token)
        after = await datalayer.get_thread(thread_id)
        assert after["name"] == before["name"] and after["metadata"] == before["metadata"]
        assert after["steps"] == before["steps"]  # content, rating, nothing added or removed
        assert [s["id"] for s in (await datalayer.get_thread(own_thread))["steps"]] == [own_step["id"]]
        assert datalayer.writes.rejected == 0  # refused, not failed
        refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                    and "refused" in r.getMessage()]
        assert len(refusals) >= 6, refusals
        assert all(intruder.identifier in m for m in refusals)
        assert sum(thread_id in m for m in refusals) >= 4
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # The owner's rating still finds its message, and the owner still writes.
        token = request_user.set(user.identifier)
        try:
            assert await datalayer.upsert_feedback(Feedback(forId=owners["id"], threadId=thread_id, value=0)) == rating
            await datalayer.update_step({**owners, "output": "the owner edits"})
        finally:
            request_user.reset(token)
        assert (await datalayer.get_thread(thread_id))["steps"][0]["output"] == "the owner edits"

    async def test_reads_by_an_id_no_backend_can_store_find_nothing(self, datalayer, user):
        thread_id = await self.new_thread(datalayer, user)
        for bad in ("e" * 2000, "a\x00b", ""):
            assert await datalayer.get_element(thread_id, bad) is None
            assert await datalayer.get_element(bad, new_id()) is None
            assert await datalayer.get_thread(bad) is None
