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
