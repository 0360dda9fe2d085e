"""The round trip of the issue, on the real services: SQLite → PostgreSQL → DynamoDB (moto)
→ MariaDB → SQLite, with blobs on local files → S3 (moto) → Azure (the ADLS test server) →
local → S3, through archives (export + import) and `copy`, gives back exactly the original
users, threads, steps, elements (bytes and checksums), feedback, names, tags and metadata;
a second import or copy changes nothing."""

from __future__ import annotations

import json

from tests.ops.dataset import dump, seed

CHAIN = [("postgresql", "s3"), ("dynamodb", "azure"), ("mariadb", "local"), ("sqlite", "s3")]


def differences(before: dict, after: dict) -> list[str]:
    """Readable differences of two dumps (empty: identical)."""
    found = []
    if before["users"] != after["users"]:
        found.append(f"users: {before['users']!r} != {after['users']!r}")
    for thread_id in sorted(set(before["threads"]) | set(after["threads"])):
        want, got = before["threads"].get(thread_id), after["threads"].get(thread_id)
        if want != got:
            found.append(f"thread {thread_id}:\n{json.dumps(want, sort_keys=True, default=str)}\n"
                         f"{json.dumps(got, sort_keys=True, default=str)}")
    return found


async def test_round_trip_through_every_backend(backends, cli, tmp_path):
    source = await backends.endpoint("sqlite", "local")
    async with backends.open(source) as layer:
        written = await seed(layer)
        original = await dump(layer)
    assert set(original["threads"]) == set(written["threads"])
    assert sum(len(t["elements"]) for t in original["threads"].values()) == len(written["elements"])
    assert all(t["feedback"] for t in original["threads"].values())

    previous = source
    for hop, (database, storage) in enumerate(CHAIN):
        target = await backends.endpoint(database, storage)
        if hop % 2 == 0:  # through an archive
            archive = tmp_path / f"archive-{hop}"
            code, exported, err = await cli("--json", "export", str(archive), "--from", previous)
            assert code == 0, err
            assert exported["threads"] == len(written["threads"]) and exported["elements"] == len(written["elements"])
            assert exported["blobs"] < exported["elements"]  # the shared picture is stored once
            code, imported, err = await cli("--json", "import", str(archive), "--to", target)
            assert code == 0, err
            again = ("--json", "import", str(archive), "--to", target)
        else:
            code, imported, err = await cli("--json", "copy", "--from", previous, "--to", target)
            assert code == 0, err
            again = ("--json", "copy", "--from", previous, "--to", target)
        assert imported["threads"]["created"] == len(written["threads"]), imported
        assert imported["steps"]["created"] == len(written["steps"]), imported
        async with backends.open(target) as layer:
            copied = await dump(layer)
        assert not differences(original, copied), f"after {database}+{storage}:\n" + "\n".join(
            differences(original, copied))
        # Idempotent: the same import again writes nothing and says so.
        code, second, err = await cli(*again)
        assert code == 0, err
        assert second["changes"] == 0 and second["blobs"]["uploaded"] == 0, second
        assert second["threads"]["unchanged"] == len(written["threads"])
        async with backends.open(target) as layer:
            assert await dump(layer) == copied
        previous = target
