"""`chainlit-persist purge` and the app's scheduled retention, on every backend: threads
inactive past the window go with every row, item, blob and knowledge chunk that hangs off
them; legal holds and active threads stay; a dry run changes nothing."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from ops.retention import LEGAL_HOLD_TAG, RetentionSchedule, parse_age, purge
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb  # noqa: F401  (fixture)
from tests.ops.helpers_b import CASES, eventually, make_world, run_cli


@pytest.fixture(params=CASES)
async def world(request, tmp_path):
    database, storage_kind = request.param
    return await make_world(request, tmp_path, database, storage_kind)


@pytest.mark.parametrize(("text", "expected"), [
    ("36h", timedelta(hours=36)), ("90d", timedelta(days=90)), ("12w", timedelta(weeks=12)),
    ("6m", timedelta(days=180)), ("1y", timedelta(days=365)), (" 2D ", timedelta(days=2)),
])
def test_ages(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "-1d", "1.5d", "3x", "90 days", "1e3d"])
def test_bad_ages_say_what_is_expected(text):
    with pytest.raises(ValueError, match="h \\(hours\\), d \\(days\\)"):
        parse_age(text)


def test_a_zero_age_is_refused():
    with pytest.raises(ValueError, match="more than zero"):
        parse_age("0d")


async def test_bad_age_is_a_usage_error(capsys):
    code, _, err = await run_cli(["purge", "--older-than", "ninety"], capsys)
    assert code == 2 and "invalid age 'ninety'" in err


async def test_purge_leaves_nothing_behind_and_keeps_held_and_active_threads(world, capsys):
    layer = await world.layer()
    index = await world.knowledge()
    try:
        alice, bob = await world.user(layer), await world.user(layer)
        stale = [await world.seed(layer, alice, files=2, knowledge=index),
                 await world.seed(layer, bob, knowledge=index)]
        held = await world.seed(layer, alice, tags=["work", LEGAL_HOLD_TAG], knowledge=index)
        active = await world.seed(layer, alice, old=False, knowledge=index)
        before = await world.blob_keys()
        assert set(stale[0].blob_keys + stale[1].blob_keys + held.blob_keys + active.blob_keys) <= before
    finally:
        await layer.close()

    code, report, err = await run_cli(["--json", "purge", "--older-than", "90d"], capsys)
    assert code == 0, err
    assert report["removed"] == {"threads": 2, "steps": 4, "feedback": 2, "elements": 3, "blobs": 3, "chunks": 2}
    assert report["held"] == 1 and report["failed"] == 0 and report["not_finished"] == 0

    layer = await world.layer()
    try:
        assert await world.leftovers(layer, stale) == []
        for kept in (held, active):
            thread = await layer.get_thread(kept.thread_id)
            assert thread is not None and len(thread["steps"]) == 2 and len(thread["elements"]) == 1
            for key in kept.blob_keys:
                assert await layer.storage.read_file(key)
            assert await index.count(thread_id=kept.thread_id) == 1
        for gone in stale:
            assert await index.count(thread_id=gone.thread_id) == 0
        assert await world.blob_keys() == set(held.blob_keys + active.blob_keys)
    finally:
        await layer.close()
        await index.close()


async def test_dry_run_counts_and_changes_nothing(world, capsys):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        await world.seed(layer, alice)
        await world.seed(layer, alice, tags=[LEGAL_HOLD_TAG])
        rows, keys = sorted(await world.rows(layer)), await world.blob_keys()
    finally:
        await layer.close()

    code, report, err = await run_cli(["--json", "purge", "--older-than", "1y", "--dry-run"], capsys)
    assert code == 0, err
    assert report["dry_run"] is True and report["held"] == 1
    assert report["would_remove"] == {"threads": 1, "steps": 2, "feedback": 1, "elements": 1, "blobs": 1, "chunks": 0}

    layer = await world.layer()
    try:
        assert sorted(await world.rows(layer)) == rows
        assert await world.blob_keys() == keys
    finally:
        await layer.close()


@pytest.mark.parametrize("world", [CASES[0], CASES[3]], indirect=True)
async def test_purge_of_one_user_and_the_human_summary(world, capsys):
    layer = await world.layer()
    try:
        alice, bob = await world.user(layer), await world.user(layer)
        mine = await world.seed(layer, alice)
        theirs = await world.seed(layer, bob)
    finally:
        await layer.close()

    code, text, err = await run_cli(["purge", "--older-than", "36h", "--user", alice.identifier], capsys)
    assert code == 0, err
    assert "removed 1 thread(s)" in text and "0 kept under legal hold" in text

    layer = await world.layer()
    try:
        assert await world.leftovers(layer, [mine]) == []
        assert await layer.get_thread(theirs.thread_id) is not None
    finally:
        await layer.close()


@pytest.mark.parametrize("world", [CASES[0], CASES[3]], indirect=True)
async def test_hold_and_release(world, capsys):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        thread = await world.seed(layer, alice, tags=["work"])
    finally:
        await layer.close()

    code, report, _ = await run_cli(["--json", "hold", thread.thread_id, "no-such-thread"], capsys)
    assert code == 1 and report["held"] == [thread.thread_id] and report["not_found"] == ["no-such-thread"]
    code, report, _ = await run_cli(["--json", "purge", "--older-than", "90d"], capsys)
    assert code == 0 and report["held"] == 1 and report["removed"]["threads"] == 0

    code, report, _ = await run_cli(["--json", "hold", "--release", thread.thread_id], capsys)
    assert code == 0 and report["released"] == [thread.thread_id]
    layer = await world.layer()
    try:
        assert (await layer.get_thread(thread.thread_id))["tags"] == ["work"]
    finally:
        await layer.close()
    code, report, _ = await run_cli(["--json", "purge", "--older-than", "90d"], capsys)
    assert code == 0 and report["removed"]["threads"] == 1


@pytest.mark.parametrize("world", [CASES[0]], indirect=True)
async def test_a_thread_active_again_before_its_turn_is_kept(world):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        first = await world.seed(layer, alice)
        second = await world.seed(layer, alice)
        original = layer.get_thread

        async def get_thread(thread_id):
            # The user writes in the second thread while the job is looking at it.
            if thread_id == second.thread_id:
                await world.age(layer, second.thread_id, "2999-01-01T00:00:00.000000Z")
            return await original(thread_id)

        layer.get_thread = get_thread
        report = await purge(layer, older_than=timedelta(days=90))
        assert report.removed.threads == 1 and report.became_active == 1
        assert await layer.get_thread(first.thread_id) is None
        assert await original(second.thread_id) is not None
    finally:
        await layer.close()


@pytest.mark.parametrize("world", [CASES[0]], indirect=True)
async def test_the_schedule_purges_and_logs(world, caplog):
    layer = await world.layer()
    try:
        alice = await world.user(layer)
        stale = await world.seed(layer, alice)
        kept = await world.seed(layer, alice, tags=[LEGAL_HOLD_TAG])
        schedule = RetentionSchedule(layer, timedelta(days=90), interval=0.05, first_delay=0)
        with caplog.at_level(logging.INFO, logger="chainlit.Retention"):
            import asyncio

            task = asyncio.create_task(schedule.run_forever())
            try:
                async def ran_twice():
                    return schedule.runs >= 2

                await eventually(ran_twice, "two scheduled runs")
            finally:
                task.cancel()
        assert await layer.get_thread(stale.thread_id) is None
        assert await layer.get_thread(kept.thread_id) is not None
        messages = [r.getMessage() for r in caplog.records if r.name == "chainlit.Retention"]
        assert any("removed 1 thread(s)" in m and "1 kept under legal hold" in m for m in messages)
        assert any("removed 0 thread(s)" in m for m in messages)  # the second run found nothing more
    finally:
        await layer.close()


async def test_a_failing_scheduled_run_is_logged_and_retried(tmp_path, caplog):
    from datalayers.sqlalchemy import SQLAlchemyDataLayer

    # A database file in a folder that does not exist: every run fails.
    layer = SQLAlchemyDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'db.sqlite3'}")
    schedule = RetentionSchedule(layer, timedelta(days=90), interval=0.01, first_delay=0)
    try:
        with caplog.at_level(logging.INFO, logger="chainlit.Retention"):
            assert await schedule.run_once() is None
            assert await schedule.run_once() is None
        errors = [r for r in caplog.records if r.name == "chainlit.Retention" and r.levelno == logging.ERROR]
        assert len(errors) == 2 and "retention run failed" in errors[0].getMessage()
        assert schedule.runs == 2 and schedule.last_error is not None
    finally:
        await layer.close()


def test_retention_settings(tmp_path):
    from settings import ConfigurationError, load_settings

    base = {"APP_DATA_DIR": str(tmp_path), "CHAINLIT_AUTH_SECRET": "s" * 48}
    off = load_settings(base)
    assert off.retention_days is None and off.retention_interval_hours == 24
    on = load_settings({**base, "APP_RETENTION_DAYS": "90", "APP_RETENTION_INTERVAL_HOURS": "6"})
    assert on.retention_days == 90 and on.retention_interval_hours == 6
    for name, value in (("APP_RETENTION_DAYS", "0.5"), ("APP_RETENTION_DAYS", "ninety"),
                        ("APP_RETENTION_INTERVAL_HOURS", "0")):
        with pytest.raises(ConfigurationError, match=name):
            load_settings({**base, "APP_RETENTION_DAYS": "30", name: value})
