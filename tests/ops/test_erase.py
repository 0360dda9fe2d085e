"""`chainlit-persist erase-user`, on every backend: nothing of the user is left in any
table, item, blob, chunk or the users file — only the session revocation record, which
keeps their old login tokens refused — and the receipt says what went and what was kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chat.users import UserStore, hash_password
from datalayers.credentials import ApiToken
from ops.retention import LEGAL_HOLD_TAG
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb  # noqa: F401  (fixture)
from tests.ops.helpers_b import CASES, make_world, new_id, run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=CASES)
async def world(request, tmp_path):
    database, storage_kind = request.param
    return await make_world(request, tmp_path, database, storage_kind)


def users_file(world) -> UserStore:
    return UserStore.from_env(world.settings().data_dir, world.env)


async def seed_person(world, layer, index, name: str, **thread_options):
    user = await world.user(layer, name)
    threads = [await world.seed(layer, user, files=2, knowledge=index, **thread_options),
               await world.seed(layer, user, old=False, knowledge=index)]
    await layer.create_api_token(ApiToken(id=new_id()[:12], user_identifier=name, name="laptop",
                                          token_hash="a" * 64, created_at=datetime.now(UTC),
                                          expires_at=datetime.now(UTC) + timedelta(days=1)))
    # A file whose row was lost long ago: still the user's, under their prefix.
    await layer.storage.upload_file(f"{name}/{new_id()}/{new_id()}/lost.txt", b"lost")
    store = users_file(world)
    store.save_file({**store.load_file(), name: _record(name)})
    return user, threads


def _record(name: str):
    from chat.users import UserRecord

    return UserRecord(name, hash_password("a password"))


def mentions(rows: list[str], name: str, user_id: str) -> list[str]:
    """Rows that name the user, except their session revocation (kept on purpose)."""
    return [r for r in rows if (name in r or user_id in r)
            and not r.startswith("session_revocations:") and '"SK": "SESSIONS"' not in r]


async def test_erase_leaves_nothing_of_the_user(world, capsys):
    layer = await world.layer()
    index = await world.knowledge()
    try:
        alice, threads = await seed_person(world, layer, index, f"alice-{new_id()[:6]}")
        bob, bobs = await seed_person(world, layer, index, f"bob-{new_id()[:6]}")
        bob_keys = {k for k in await world.blob_keys() if k.startswith(bob.identifier + "/")}
    finally:
        await layer.close()

    receipt_path = world.tmp / "receipt.json"
    code, receipt, err = await run_cli(["--json", "erase-user", alice.identifier, "--yes",
                                        "--receipt", str(receipt_path)], capsys)
    assert code == 0, err
    assert receipt["removed"] == {"threads": 2, "steps": 4, "feedback": 2, "elements": 3, "blobs": 3, "chunks": 2}
    assert receipt["other_blobs"] == 1 and receipt["api_tokens"] == 1 and receipt["sessions_revoked"] is True
    assert receipt["user_record"] == 1 and receipt["users_file_entry"] == 1 and receipt["kept"] == []
    assert receipt["user"] == alice.identifier and receipt["started_at"] <= receipt["finished_at"]
    assert json.loads(receipt_path.read_text()) == receipt
    assert f"chainlit.Audit: erased user {alice.identifier!r}" in err  # the audit trail

    layer = await world.layer()
    try:
        rows = await world.rows(layer)
        assert mentions(rows, alice.identifier, alice.id) == []
        assert await world.leftovers(layer, threads) == []
        assert not any(k.startswith(alice.identifier + "/") for k in await world.blob_keys())
        assert await index.count(user_id=alice.id) == 0
        assert alice.identifier not in users_file(world).load_file()
        assert await layer.sessions_revoked_at(alice.identifier) is not None
        assert await layer.get_user(alice.identifier) is None
        # Bob keeps everything.
        assert bob.identifier in users_file(world).load_file()
        for thread in bobs:
            assert await layer.get_thread(thread.thread_id) is not None
        assert {k for k in await world.blob_keys() if k.startswith(bob.identifier + "/")} == bob_keys
        assert len(await layer.list_api_tokens(bob.identifier)) == 1
        assert await index.count(user_id=bob.id) == 2
    finally:
        await layer.close()
        await index.close()


@pytest.mark.parametrize("world", [CASES[0], CASES[1], CASES[3]], indirect=True)
async def test_legal_hold_keeps_the_thread_and_the_owner_unless_overridden(world, capsys):
    layer = await world.layer()
    index = await world.knowledge()
    try:
        alice, (held, other) = await seed_person(world, layer, index, f"alice-{new_id()[:6]}",
                                                 tags=[LEGAL_HOLD_TAG])
    finally:
        await layer.close()

    code, text, err = await run_cli(["erase-user", alice.identifier, "--yes"], capsys)
    assert code == 0, err
    assert f"kept thread {held.thread_id}: legal hold" in text
    assert "kept user record" in text and "threads 1," in text

    layer = await world.layer()
    try:
        assert await world.leftovers(layer, [other]) == []
        kept = await layer.get_thread(held.thread_id)
        assert kept is not None and len(kept["elements"]) == 2
        for key in held.blob_keys:
            assert await layer.storage.read_file(key)
        assert await layer.get_user(alice.identifier) is not None
        assert await layer.list_api_tokens(alice.identifier) == []   # access goes all the same
        assert alice.identifier not in users_file(world).load_file()
    finally:
        await layer.close()

    code, receipt, err = await run_cli(["--json", "erase-user", alice.identifier, "--yes", "--override-hold"],
                                       capsys)
    assert code == 0, err
    assert receipt["removed"]["threads"] == 1 and receipt["user_record"] == 1 and receipt["kept"] == []
    layer = await world.layer()
    try:
        assert mentions(await world.rows(layer), alice.identifier, alice.id) == []
        assert not any(k.startswith(alice.identifier + "/") for k in await world.blob_keys())
        assert await index.count(user_id=alice.id) == 0
    finally:
        await layer.close()
        await index.close()


@pytest.mark.parametrize("world", [CASES[0], CASES[3]], indirect=True)
async def test_dry_run_changes_nothing(world, capsys):
    layer = await world.layer()
    index = await world.knowledge()
    try:
        alice, _ = await seed_person(world, layer, index, f"alice-{new_id()[:6]}")
        rows, keys = sorted(await world.rows(layer)), await world.blob_keys()
    finally:
        await layer.close()
        await index.close()

    code, receipt, err = await run_cli(["--json", "erase-user", alice.identifier, "--dry-run"], capsys)
    assert code == 0, err
    assert receipt["would_remove"]["threads"] == 2 and receipt["would_remove"]["chunks"] == 2
    assert receipt["api_tokens"] == 1 and receipt["user_record"] == 1 and receipt["other_blobs"] == 1
    layer = await world.layer()
    try:
        assert sorted(await world.rows(layer)) == rows and await world.blob_keys() == keys
        assert alice.identifier in users_file(world).load_file()
    finally:
        await layer.close()


@pytest.mark.parametrize("world", [CASES[0]], indirect=True)
async def test_without_a_terminal_it_refuses_instead_of_waiting(world):
    layer = await world.layer()
    try:
        alice = await world.user(layer, "alice")
        thread = await world.seed(layer, alice)
    finally:
        await layer.close()
    env = {**os.environ, **world.env}
    env.pop("CI", None)
    for extra in ([], ["--json"]):
        # stdin is not a terminal (as in CI or cron): no prompt, no wait, a refusal.
        done = subprocess.run([str(Path(sys.executable).parent / "chainlit-persist"), *extra, "erase-user", "alice"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=world.tmp,
                              timeout=120)
        assert done.returncode == 1
        assert "without confirmation: pass --yes" in (done.stdout + done.stderr)
    layer = await world.layer()
    try:
        assert await layer.get_thread(thread.thread_id) is not None
    finally:
        await layer.close()


async def test_unknown_user_is_said_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("APP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KNOWLEDGE_URL", "off")
    code, text, err = await run_cli(["erase-user", "nobody", "--yes"], capsys)
    assert code == 0 and "nothing stored for 'nobody'" in err
