"""Export and import through an archive: a corrupted blob is refused before anything is
written, an import killed half-way (SIGKILL) and run again ends with exactly the data of an
uninterrupted one, `--dry-run` writes nothing, `export --user` holds only that user's data,
`export --since` only threads active since then, and a second import changes no row."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime

from tests.ops.dataset import dump, new_id, seed


async def _store_rows(backends, endpoint: str) -> tuple[int, int, set[str]]:
    """(rows in every table, users, blob keys) of a SQL store, read directly."""
    from sqlalchemy import func, select

    from datalayers.sqlalchemy.schema import TABLES

    async with backends.open(endpoint) as layer:
        await layer.migrate()  # an import refused before writing created no schema either
        total = 0
        async with layer.engine.connect() as conn:
            for table in TABLES:
                total += (await conn.execute(select(func.count()).select_from(table))).scalar()
        users = [u async for u in layer.iter_users()]
        keys = {key async for key in layer.storage.list_keys()}
    return total, len(users), keys


async def _exported(backends, cli, tmp_path, threads_per_user: int = 2):
    source = await backends.endpoint("sqlite", "local")
    async with backends.open(source) as layer:
        written = await seed(layer, threads_per_user)
        original = await dump(layer)
    archive = tmp_path / "archive"
    code, summary, err = await cli("--json", "export", str(archive), "--from", source)
    assert code == 0, err
    return source, archive, written, original, summary


async def test_archive_layout_and_checksums(backends, cli, tmp_path):
    _, archive, written, _, summary = await _exported(backends, cli, tmp_path)
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["format"] == "chainlit-persist-archive" and manifest["version"] == 1
    assert manifest["counts"]["threads"] == len(written["threads"]) == summary["threads"]
    assert "sqlite" in manifest["source"]["database"]
    import hashlib

    for name, entry in manifest["files"].items():
        assert hashlib.sha256((archive / name).read_bytes()).hexdigest() == entry["sha256"], name
    for line in (archive / "blobs.jsonl").read_text().splitlines():
        blob = json.loads(line)
        data = (archive / "blobs" / blob["sha256"][:2] / blob["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == blob["sha256"] and len(data) == blob["size"]


async def test_corrupted_blob_is_refused_and_nothing_is_written(backends, cli, tmp_path):
    _, archive, _, _, _ = await _exported(backends, cli, tmp_path)
    victim = next((archive / "blobs").rglob("*"))
    while victim.is_dir():
        victim = next(victim.iterdir())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    target = await backends.endpoint("sqlite", "local")
    code, result, err = await cli("--json", "import", str(archive), "--to", target)
    assert code == 1
    assert "corrupted" in result["error"] and victim.name in result["error"] and "nothing imported" in result["error"]
    rows, users, keys = await _store_rows(backends, target)
    assert (rows, users, keys) == (0, 0, set())
    # A changed JSONL file is refused the same way.
    victim.write_bytes(bytes(data[: len(data) // 2]) + bytes([data[len(data) // 2] ^ 0xFF]) + bytes(data[len(data) // 2 + 1:]))
    with open(archive / "steps.jsonl", "ab") as handle:
        handle.write(b"\n")
    code, result, _ = await cli("--json", "import", str(archive), "--to", target)
    assert code == 1 and "steps.jsonl" in result["error"]
    # No manifest: an unfinished export.
    (archive / "manifest.json").unlink()
    code, result, _ = await cli("--json", "import", str(archive), "--to", target)
    assert code == 1 and "unfinished" in result["error"]


async def test_dry_run_then_import_then_nothing_changes(backends, cli, tmp_path):
    _, archive, written, original, _ = await _exported(backends, cli, tmp_path)
    target = await backends.endpoint("sqlite", "local")
    code, planned, err = await cli("--json", "import", str(archive), "--to", target, "--dry-run")
    assert code == 0, err
    assert planned["dry_run"] and planned["threads"]["created"] == len(written["threads"])
    assert planned["steps"]["created"] == len(written["steps"]) and planned["elements"]["created"] == len(
        written["elements"])
    assert planned["users"]["created"] == 3
    assert await _store_rows(backends, target) == (0, 0, set())
    code, first, err = await cli("--json", "import", str(archive), "--to", target)
    assert code == 0 and first["changes"] == planned["changes"]
    rows_after_first = await _store_rows(backends, target)
    code, second, err = await cli("--json", "import", str(archive), "--to", target)
    assert code == 0 and second["changes"] == 0 and second["blobs"]["uploaded"] == 0
    assert await _store_rows(backends, target) == rows_after_first
    async with backends.open(target) as layer:
        assert await dump(layer) == original
    code, planned, _ = await cli("--json", "import", str(archive), "--to", target, "--dry-run")
    assert planned["changes"] == 0 and planned["steps"]["unchanged"] == len(written["steps"])


async def test_dry_run_reports_a_changed_step(backends, cli, tmp_path):
    source, archive, written, _, _ = await _exported(backends, cli, tmp_path)
    target = await backends.endpoint("sqlite", "local")
    assert (await cli("--json", "import", str(archive), "--to", target))[0] == 0
    async with backends.open(source) as layer:
        thread = await layer.get_thread(written["threads"][0])
        step = dict(thread["steps"][1], output="an edited answer")
        step.pop("feedback", None)
        await layer.update_step(step)
    code, planned, err = await cli("--json", "copy", "--from", source, "--to", target, "--dry-run")
    assert code == 0, err
    assert planned["changes"] == 1 and planned["steps"]["changed"] == 1, planned
    code, done, _ = await cli("--json", "copy", "--from", source, "--to", target)
    assert done["steps"]["changed"] == 1
    async with backends.open(target) as layer:
        assert (await layer.get_thread(written["threads"][0]))["steps"][1]["output"] == "an edited answer"


async def test_export_one_user_and_since(backends, cli, tmp_path):
    source, _, written, original, _ = await _exported(backends, cli, tmp_path)
    alice = tmp_path / "alice"
    code, summary, err = await cli("--json", "export", str(alice), "--from", source, "--user", "alice")
    assert code == 0, err
    users = [json.loads(line) for line in (alice / "users.jsonl").read_text().splitlines()]
    threads = [json.loads(line) for line in (alice / "threads.jsonl").read_text().splitlines()]
    assert [u["identifier"] for u in users] == ["alice"]
    assert {t["id"] for t in threads} == {i for i, t in original["threads"].items() if t["owner"] == "alice"}
    assert len(threads) == 2
    steps = [json.loads(line) for line in (alice / "steps.jsonl").read_text().splitlines()]
    assert {s["threadId"] for s in steps} == {t["id"] for t in threads}
    everything = (alice / "steps.jsonl").read_text() + (alice / "elements.jsonl").read_text()
    assert not any(thread_id in everything for thread_id, t in original["threads"].items() if t["owner"] != "alice")
    code, result, _ = await cli("--json", "export", str(tmp_path / "nobody"), "--from", source, "--user", "nobody")
    assert code == 1 and "nobody" in result["error"]

    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.01)
    touched = written["threads"][3]
    async with backends.open(source) as layer:
        await layer.create_step({"id": new_id(), "threadId": touched, "type": "user_message", "name": "User",
                                 "output": "a later message", "createdAt": since})
        await layer.flush()
    recent = tmp_path / "recent"
    code, summary, err = await cli("--json", "export", str(recent), "--from", source, "--since", since)
    assert code == 0, err
    assert [json.loads(line)["id"] for line in (recent / "threads.jsonl").read_text().splitlines()] == [touched]
    assert summary["threads"] == 1 and summary["steps"] == 5


async def test_import_killed_half_way_resumes_to_the_same_result(backends, cli, console, tmp_path):
    source, archive, written, original, _ = await _exported(backends, cli, tmp_path, threads_per_user=30)
    target = await backends.endpoint("postgresql", "local")
    process = subprocess.Popen([str(console.script), "import", str(archive), "--to", target, "--concurrency", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=console.env, cwd=tmp_path)
    progress = None
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        files = list(archive.glob(".import-progress-*.json"))
        if files:
            try:
                progress = json.loads(files[0].read_text())
            except ValueError:
                progress = None
            if progress and progress["threads_done"] >= 20:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    assert progress is not None and progress["threads_done"] < len(written["threads"])
    async with backends.open(target) as layer:
        partial = await dump(layer)
    assert 0 < len(partial["threads"]) < len(written["threads"])

    code, resumed, err = await cli("--json", "import", str(archive), "--to", target)
    assert code == 0, err
    assert resumed["resumed_after"] >= 20
    assert not list(archive.glob(".import-progress-*.json"))  # done: no progress left behind
    async with backends.open(target) as layer:
        assert await dump(layer) == original
    # The same as an uninterrupted import elsewhere, row for row (ids, times, owners).
    clean = await backends.endpoint("postgresql", "local")
    assert (await cli("--json", "import", str(archive), "--to", clean))[0] == 0
    assert await _store_rows(backends, target) == await _store_rows(backends, clean)
    async with backends.open(clean) as layer:
        assert await dump(layer) == original
    code, again, _ = await cli("--json", "import", str(archive), "--to", target, "--restart")
    assert again["changes"] == 0
