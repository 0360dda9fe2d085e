"""Password users: scrypt hashes, the users file, APP_USERS, the first admin, the CLI."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chat.users import UserConfigError, UserStore, hash_password, parse_users_env, verify_password

ROOT = Path(__file__).resolve().parents[2]


def test_hash_and_verify():
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong horse", encoded)
    assert hash_password("correct horse") != encoded  # salted
    assert not verify_password("x", "plain-text-password")
    assert not verify_password("x", "scrypt$bad")


def test_file_roundtrip_and_authentication(tmp_path):
    store = UserStore(tmp_path / "users.toml")
    store.add("alice", "s3cret-pass", display_name='Alice "A"', role="admin")
    store.add("bob", "other-pass")
    assert stat.S_IMODE(os.stat(store.users_file).st_mode) == 0o600
    assert "s3cret-pass" not in store.users_file.read_text()
    users = store.load()
    assert users["alice"].display_name == 'Alice "A"' and users["alice"].role == "admin"
    assert store.authenticate("alice", "s3cret-pass").name == "alice"
    assert store.authenticate("alice", "other-pass") is None
    assert store.authenticate("nobody", "s3cret-pass") is None
    assert store.remove("bob") and not store.remove("bob")
    assert set(store.load()) == {"alice"}


async def test_async_authentication_runs_off_the_event_loop(tmp_path):
    store = UserStore(tmp_path / "users.toml")
    store.add("alice", "s3cret-pass")
    assert (await store.authenticate_async("alice", "s3cret-pass")).name == "alice"
    assert await store.authenticate_async("alice", "nope") is None


def test_users_from_environment_override_the_file(tmp_path):
    store = UserStore(tmp_path / "users.toml", env_users=f"carol:{hash_password('carol-pass')}")
    store.add("carol", "file-pass")
    assert store.authenticate("carol", "carol-pass") is not None
    assert store.authenticate("carol", "file-pass") is None
    with pytest.raises(UserConfigError):
        parse_users_env("dave:plaintext")


def test_plain_passwords_in_the_file_are_refused(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text('[users.eve]\npassword = "hunter2"\n')
    with pytest.raises(UserConfigError, match="not a plain password"):
        UserStore(path).load()


def test_first_start_creates_admin_once(tmp_path):
    store = UserStore(tmp_path / "users.toml")
    out = io.StringIO()
    password = store.ensure_default_admin(tmp_path, out=out)
    assert password and password in out.getvalue()
    note = tmp_path / "admin_password.txt"
    assert note.read_text() == f"user: admin\npassword: {password}\n"
    assert stat.S_IMODE(os.stat(note).st_mode) == 0o600
    assert store.authenticate("admin", password).role == "admin"
    assert store.ensure_default_admin(tmp_path, out=out) is None  # never again


def test_first_admin_password_from_setting_is_not_printed(tmp_path):
    store = UserStore(tmp_path / "users.toml")
    out = io.StringIO()
    assert store.ensure_default_admin(tmp_path, "chosen-password", out=out) == "chosen-password"
    assert out.getvalue() == ""
    assert store.authenticate("admin", "chosen-password") is not None
    # Given by the operator: written nowhere (the users file holds only its hash).
    assert not (tmp_path / "admin_password.txt").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file() and b"chosen-password" in p.read_bytes()] == []


def test_no_default_admin_when_users_are_defined_in_the_environment(tmp_path):
    store = UserStore(tmp_path / "users.toml", env_users=f"ops:{hash_password('ops-pass')}")
    assert store.ensure_default_admin(tmp_path) is None
    assert not store.users_file.exists()


def test_cli_add_list_remove(tmp_path):
    env = {**os.environ, "APP_DATA_DIR": str(tmp_path), "CHAINLIT_AUTH_SECRET": "x" * 32}
    env.pop("APP_USERS", None)
    env.pop("APP_USERS_FILE", None)

    def run(*args, stdin=""):
        return subprocess.run(
            [sys.executable, "-m", "chat.users", *args], input=stdin, capture_output=True, text=True, env=env, cwd=ROOT
        )

    added = run("add", "frank", "--display-name", "Frank", "--password-stdin", stdin="long-enough-pw\n")
    assert added.returncode == 0, added.stderr
    assert UserStore(tmp_path / "users.toml").authenticate("frank", "long-enough-pw") is not None
    assert run("add", "gina", "--password-stdin", stdin="short\n").returncode != 0
    listed = run("list")
    assert listed.stdout.strip() == "frank\tuser\tFrank"
    hashed = run("hash", "--password-stdin", stdin="another-password\n")
    assert verify_password("another-password", hashed.stdout.strip())
    assert run("remove", "frank").returncode == 0
    assert run("remove", "frank").returncode == 1


def _users_cli(env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chat.users", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


async def _revoked_at(database_url: str, name: str):
    from datalayers.sqlalchemy import SQLAlchemyDataLayer

    layer = SQLAlchemyDataLayer(database_url)
    try:
        return await layer.sessions_revoked_at(name)
    finally:
        await layer.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_cli_password_change_remove_and_logout_end_sessions_in_the_apps_database(backend, sql_url_factory,
                                                                                     tmp_path):
    """The CLI runs in its own process: it writes the revocation to the database the app
    reads (DATABASE_URL, or the SQLite file in the data folder)."""
    url = sql_url_factory(backend) if backend == "postgresql" else None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DATABASE_", "STORAGE_", "WRITE_JOURNAL"))}
    env.update({"APP_DATA_DIR": str(tmp_path / "data"), "CHAINLIT_AUTH_SECRET": "x" * 32,
                **({"DATABASE_URL": url} if url else {})})
    url = url or f"sqlite+aiosqlite:///{tmp_path / 'data' / 'chainlit.db'}"

    added = _users_cli(env, "add", "hank", "--password-stdin", stdin="first-password\n")
    assert added.returncode == 0, added.stderr
    assert "ended" not in added.stdout  # a new user has no sessions to end
    changed = _users_cli(env, "add", "hank", "--password-stdin", stdin="second-password\n")
    assert changed.returncode == 0, changed.stderr
    assert "ended every session of 'hank'" in changed.stdout
    first = await _revoked_at(url, "hank")
    assert first is not None
    assert _users_cli(env, "logout", "hank").returncode == 0
    second = await _revoked_at(url, "hank")
    assert second > first
    removed = _users_cli(env, "remove", "hank")
    assert removed.returncode == 0 and "ended every session of 'hank'" in removed.stdout
    assert await _revoked_at(url, "hank") > second
    assert not (tmp_path / "data" / "journal.sqlite3").exists()  # the app's journal is the app's
    for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_cli_says_when_sessions_could_not_be_ended(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DATABASE_", "STORAGE_", "WRITE_JOURNAL"))}
    env.update({"APP_DATA_DIR": str(tmp_path), "CHAINLIT_AUTH_SECRET": "x" * 32,
                "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})  # nothing listens on port 1
    assert _users_cli(env, "add", "ivy", "--password-stdin", stdin="first-password\n").returncode == 0
    changed = _users_cli(env, "add", "ivy", "--password-stdin", stdin="second-password\n")
    assert changed.returncode == 1
    assert "could not end the sessions of 'ivy'" in changed.stderr
    assert "python -m chat.users logout ivy" in changed.stderr
    # The new password is in force all the same.
    assert UserStore(tmp_path / "users.toml").authenticate("ivy", "second-password") is not None

