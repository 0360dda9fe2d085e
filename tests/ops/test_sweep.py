"""`chainlit-persist sweep`: orphan blobs and elements whose blob is missing, found on
every backend by comparing storage with the database; `--fix` removes only orphans older
than the grace period; missing blobs are reported, never deleted."""

from __future__ import annotations

import os
import time

import pytest

from datalayers.journal import Entry, WriteJournal
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb  # noqa: F401  (fixture)
from tests.ops.helpers_b import CASES, make_world, new_id, run_cli


@pytest.fixture(params=CASES)
async def world(request, tmp_path):
    database, storage_kind = request.param
    return await make_world(request, tmp_path, database, storage_kind)


async def test_sweep_finds_orphans_and_missing_blobs_and_fix_removes_only_orphans(world, capsys):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        thread = await world.seed(layer, alice, files=2)
        # A long answer: on DynamoDB it moves to storage as a large attribute, which is
        # referenced by its item, not by an element, and must not look like an orphan.
        await layer.create_step({"id": new_id(), "threadId": thread.thread_id, "name": "Assistant",
                                 "type": "assistant_message", "streaming": False, "output": "x" * 120_000,
                                 "createdAt": "2026-01-01T00:00:09.000000Z"})
        await layer.flush()
        orphan = f"{alice.identifier}/{new_id()}/{new_id()}/orphan.txt"
        await layer.storage.upload_file(orphan, b"nobody points here")
        lost_key = thread.blob_keys[1]
        await layer.storage.delete_file(lost_key)
        before = await world.blob_keys()
    finally:
        await layer.close()

    code, report, err = await run_cli(["--json", "sweep"], capsys)
    assert code == 1, err
    assert report["orphans"] == 1 and report["orphan_examples"] == [orphan]
    assert report["orphans_in_grace"] == 1 and report["removed"] == 0
    assert report["missing"] == 1 and report["missing_large"] == 0
    assert report["missing_examples"] == [{"thread": thread.thread_id, "element": thread.element_ids[1],
                                           "key": lost_key}]
    assert report["blobs"] == len(before)

    # Young orphans stay even with --fix: an upload in flight writes its row after its blob.
    code, report, _ = await run_cli(["--json", "sweep", "--fix"], capsys)
    assert report["removed"] == 0 and orphan in await world.blob_keys()

    code, report, _ = await run_cli(["--json", "sweep", "--fix", "--grace-minutes", "0"], capsys)
    assert code == 1  # the missing blob is still to be dealt with
    assert report["removed"] == 1 and report["missing"] == 1
    assert await world.blob_keys() == before - {orphan}
    layer = await world.layer()
    try:
        # The element whose file is lost keeps its row (reported, not deleted).
        assert await layer.get_element(thread.thread_id, thread.element_ids[1]) is not None
        assert len((await layer.get_thread(thread.thread_id))["steps"]) == 3
    finally:
        await layer.close()


@pytest.mark.parametrize("world", [CASES[0]], indirect=True)
async def test_an_old_orphan_goes_with_the_default_grace_and_a_clean_store_exits_0(world, capsys):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        await world.seed(layer, alice)
        orphan = f"{alice.identifier}/{new_id()}/{new_id()}/old.txt"
        await layer.storage.upload_file(orphan, b"old")
    finally:
        await layer.close()
    path = world.tmp / "blobs" / "objects" / orphan
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))

    code, text, err = await run_cli(["sweep", "--fix"], capsys)
    assert code == 0, err
    assert "1 orphan(s) (0 younger than 60 min, left alone), 1 removed" in text
    assert not path.exists()
    code, text, _ = await run_cli(["sweep"], capsys)
    assert code == 0 and "0 orphan(s)" in text


@pytest.mark.parametrize("world", [CASES[0]], indirect=True)
async def test_a_blob_whose_row_waits_in_the_apps_journal_is_no_orphan(world, capsys):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        thread = await world.seed(layer, alice)
        waiting = f"{alice.identifier}/{thread.thread_id}/{new_id()}/saving.txt"
        await layer.storage.upload_file(waiting, b"row still in the journal")
    finally:
        await layer.close()
    path = world.tmp / "blobs" / "objects" / waiting
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    # The app's journal holds the element row (a database outage, say).
    journal = WriteJournal(world.env["WRITE_JOURNAL_PATH"])
    await journal.open()
    await journal.append(Entry(thread.thread_id, "element", {"id": new_id(), "row": {"objectKey": waiting}}, "x"))
    await journal.close()

    code, report, err = await run_cli(["--json", "sweep", "--fix"], capsys)
    assert code == 0, err
    assert report["orphans"] == 0 and path.exists()


async def test_sweep_refuses_a_foreign_data_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("APP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATA_LAYER_CLASS", "tests.ops.test_sweep:ForeignLayer")
    code, _, err = await run_cli(["sweep"], capsys)
    assert code == 1 and "not on ForeignLayer" in err


class ForeignLayer:
    @classmethod
    def from_url(cls, url, *, storage, auto_migrate, **kwargs):
        layer = cls()
        layer.storage = storage
        return layer

    async def close(self):
        await self.storage.close()
