"""Personal API tokens (`chat.api_tokens.ApiTokens`) on a real data layer (SQLite), and the
`python -m chat.users token …` commands in their own process."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chat.api_tokens import ApiTokens, parse_token
from chat.users import UserStore
from datalayers.errors import DataLayerError
from datalayers.sqlalchemy import SQLAlchemyDataLayer
from tests.chat.test_chat_users import _users_cli

START = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
TOKEN_FORMAT = re.compile(r"^clp_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$")


class Clock:
    """Both clocks the service reads: wall time (`now`) and the throttle's monotonic one."""

    def __init__(self):
        self.wall = START
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
async def layer(tmp_path):
    layer = SQLAlchemyDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'chainlit.db'}")
    yield layer
    await layer.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tokens(layer, clock):
    return ApiTokens(layer, touch_interval_seconds=60, clock=clock.monotonic, now=clock.now)


class Spy:
    """Counts the data layer's token lookups and touches (and can make a touch fail or hang)."""

    def __init__(self, layer, monkeypatch):
        self.lookups = 0
        self.touches: list[datetime] = []
        self.touch_error: Exception | None = None
        self.touch_blocker: asyncio.Event | None = None
        get, touch = layer.get_api_token, layer.touch_api_token

        async def counted_get(token_id):
            self.lookups += 1
            return await get(token_id)

        async def counted_touch(token_id, used_at):
            self.touches.append(used_at)
            if self.touch_blocker is not None:
                await self.touch_blocker.wait()
            if self.touch_error is not None:
                raise self.touch_error
            await touch(token_id, used_at)

        monkeypatch.setattr(layer, "get_api_token", counted_get)
        monkeypatch.setattr(layer, "touch_api_token", counted_touch)


@pytest.fixture
def spy(layer, monkeypatch):
    return Spy(layer, monkeypatch)


async def test_issue_stores_only_the_hash_of_a_well_formed_token(tokens, layer):
    plaintext, token = await tokens.issue("alice", "  laptop  ", expires_in=timedelta(days=30))
    assert TOKEN_FORMAT.match(plaintext)
    assert parse_token(plaintext) == token.id and len(token.id) == 32
    assert token.name == "laptop" and token.user_identifier == "alice"
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert token.created_at == START and token.expires_at == START + timedelta(days=30)
    stored = await layer.get_api_token(token.id)
    assert stored == token
    assert plaintext.split("_", 2)[2] not in repr(stored)
    other, _ = await tokens.issue("alice", "laptop")
    assert other != plaintext


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, None])
async def test_issue_refuses_a_bad_name(tokens, layer, name):
    with pytest.raises(ValueError):
        await tokens.issue("alice", name)
    assert await layer.list_api_tokens("alice") == []


async def test_issue_takes_a_name_of_100_characters_and_refuses_a_lifetime_that_is_not_positive(tokens):
    _, token = await tokens.issue("alice", f" {'n' * 100} ")
    assert token.name == "n" * 100
    with pytest.raises(ValueError):
        await tokens.issue("alice", "x", expires_in=timedelta(0))


async def test_authenticate_finds_the_token_and_refuses_a_wrong_secret(tokens, spy):
    plaintext, token = await tokens.issue("alice", "laptop")
    assert await tokens.authenticate(plaintext) == token
    prefix, token_id, secret = plaintext.split("_", 2)
    forged = f"{prefix}_{token_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    assert await tokens.authenticate(forged) is None
    unknown = f"clp_{'0' * 32}_{secret}"
    assert await tokens.authenticate(unknown) is None
    assert spy.lookups == 3


def _malformed(plaintext: str) -> list:
    prefix, token_id, secret = plaintext.split("_", 2)
    return [
        "", "clp", "clp_", "clp__", f"clp_{token_id}", f"clp_{token_id}_", f"{prefix}_{token_id}_{secret}\n",
        f" {plaintext}", f"CLP_{token_id}_{secret}", f"clq_{token_id}_{secret}", f"clp_{token_id.upper()}_{secret}",
        f"clp_{token_id}x_{secret}", f"clp_{token_id}_{secret}x", f"clp_{token_id}_{secret[:-1]}",
        f"clp_{token_id}_{secret[:-1]}=", f"clp_{token_id}_{secret[:-1]}\x00", plaintext * 3, "x" * 100_000,
        f"Bearer {plaintext}", None, 12, plaintext.encode(),
    ]


async def test_a_malformed_token_is_refused_without_a_lookup(tokens, spy):
    plaintext, _ = await tokens.issue("alice", "laptop")
    for candidate in _malformed(plaintext):
        assert await tokens.authenticate(candidate) is None, candidate
    assert spy.lookups == 0
    assert await tokens.authenticate(plaintext) is not None


async def test_a_secret_with_underscores_is_split_at_the_first_two_only(tokens, monkeypatch):
    monkeypatch.setattr("chat.api_tokens.secrets.token_urlsafe", lambda n: "_a_b_" + "c" * 38)
    plaintext, token = await tokens.issue("alice", "laptop")
    assert plaintext.endswith("__a_b_" + "c" * 38)
    assert await tokens.authenticate(plaintext) == token


async def test_an_expired_token_is_refused(tokens, clock):
    plaintext, _ = await tokens.issue("alice", "short-lived", expires_in=timedelta(hours=1))
    clock.advance(3599)
    assert await tokens.authenticate(plaintext) is not None
    clock.advance(1)
    assert await tokens.authenticate(plaintext) is None


async def test_a_revoked_token_stops_at_once(tokens):
    plaintext, token = await tokens.issue("alice", "laptop")
    kept, _ = await tokens.issue("alice", "desktop")
    assert await tokens.authenticate(plaintext) is not None
    assert await tokens.revoke("bob", token.id) is False  # not bob's
    assert await tokens.authenticate(plaintext) is not None
    assert await tokens.revoke("alice", token.id) is True
    assert await tokens.authenticate(plaintext) is None
    assert await tokens.revoke("alice", token.id) is False
    assert [t.name for t in await tokens.list("alice")] == ["desktop"]
    assert await tokens.revoke_all("alice") == 1
    assert await tokens.authenticate(kept) is None
    assert await tokens.list("alice") == []


async def test_the_last_use_is_recorded_once_per_interval(tokens, spy, clock, layer):
    plaintext, token = await tokens.issue("alice", "laptop")
    other, other_token = await tokens.issue("alice", "desktop")
    for _ in range(5):
        assert await tokens.authenticate(plaintext) is not None
        clock.advance(10)
    await tokens.wait_touches()
    assert spy.touches == [START]
    assert (await layer.get_api_token(token.id)).last_used_at == START
    assert await tokens.authenticate(other) is not None  # each token has its own interval
    clock.advance(10)  # 60 s after the first use
    assert await tokens.authenticate(plaintext) is not None
    await tokens.wait_touches()
    assert spy.touches == [START, START + timedelta(seconds=50), START + timedelta(seconds=60)]
    assert (await layer.get_api_token(token.id)).last_used_at == START + timedelta(seconds=60)
    assert (await layer.get_api_token(other_token.id)).last_used_at == START + timedelta(seconds=50)


async def test_a_failed_touch_is_a_warning_and_the_token_still_works(tokens, spy, caplog):
    plaintext, token = await tokens.issue("alice", "laptop")
    spy.touch_error = DataLayerError("touch_api_token failed: database is locked")
    with caplog.at_level(logging.DEBUG):
        assert await tokens.authenticate(plaintext) == token
        await tokens.wait_touches()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and token.id in warnings[0].getMessage()
    assert warnings[0].name == "chainlit.ApiTokens"
    for record in caplog.records:
        message = record.getMessage()
        assert plaintext.split("_", 2)[2] not in message and token.token_hash not in message


async def test_a_slow_touch_does_not_hold_up_the_request(tokens, spy):
    plaintext, _ = await tokens.issue("alice", "laptop")
    spy.touch_blocker = asyncio.Event()  # the database takes forever to record the use
    started = time.monotonic()
    assert await asyncio.wait_for(tokens.authenticate(plaintext), 2) is not None
    assert time.monotonic() - started < 1
    assert len(spy.touches) == 1
    spy.touch_blocker.set()
    await tokens.wait_touches()


async def test_a_failing_lookup_raises(tokens, layer, monkeypatch):
    plaintext, _ = await tokens.issue("alice", "laptop")

    async def unreachable(token_id):
        raise DataLayerError("get_api_token failed: connection refused")

    monkeypatch.setattr(layer, "get_api_token", unreachable)
    with pytest.raises(DataLayerError):
        await tokens.authenticate(plaintext)


async def test_nothing_logs_a_token_or_its_hash(tokens, caplog):
    with caplog.at_level(logging.DEBUG):
        plaintext, token = await tokens.issue("alice", "laptop")
        await tokens.authenticate(plaintext)
        await tokens.wait_touches()
        await tokens.revoke("alice", token.id)
        await tokens.authenticate(plaintext)
    assert any(token.id in r.getMessage() for r in caplog.records)  # the id is what logs show
    secret = plaintext.split("_", 2)[2]
    leaks = [r for r in caplog.records if secret in r.getMessage() or token.token_hash in r.getMessage()]
    # Ours at no level; a driver's DEBUG trace of statement parameters (aiosqlite's) is not ours.
    assert [(r.name, r.levelname) for r in leaks if r.name.startswith("chainlit") or r.levelno > logging.DEBUG] == []


# ---------------------------------------------------------------------- the CLI
def _cli_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DATABASE_", "STORAGE_", "WRITE_JOURNAL"))}
    env.update({"APP_DATA_DIR": str(tmp_path / "data"), "CHAINLIT_AUTH_SECRET": "x" * 32, **extra})
    return env


@pytest.fixture
def cli(tmp_path):
    """(run the CLI, the app's database URL), with `ada` in the users file, never logged in."""
    env = _cli_env(tmp_path)
    added = _users_cli(env, "add", "ada", "--display-name", "Ada L.", "--role", "admin", "--password-stdin",
                       stdin="long-enough-pw\n")
    assert added.returncode == 0, added.stderr
    return (lambda *args: _users_cli(env, *args)), f"sqlite+aiosqlite:///{tmp_path / 'data' / 'chainlit.db'}"


async def test_cli_token_create_prints_a_working_token_alone_on_the_last_line(cli):
    run, url = cli
    created = run("token", "create", "ada", "--name", "deploy script", "--expires-days", "7")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    plaintext = lines[-1]
    assert TOKEN_FORMAT.match(plaintext)
    assert created.stdout.count(plaintext) == 1 and plaintext not in created.stderr
    assert "shown only this once" in created.stderr
    layer = SQLAlchemyDataLayer(url)
    try:
        token = await ApiTokens(layer).authenticate(plaintext)
        assert token is not None and token.user_identifier == "ada" and token.name == "deploy script"
        assert timedelta(days=7) - timedelta(minutes=5) < token.expires_at - datetime.now(UTC) <= timedelta(days=7)
        # The user record the API needs, as a password login would have made it.
        user = await layer.get_user("ada")
        assert user.metadata == {"role": "admin", "provider": "credentials", "display_name": "Ada L."}
    finally:
        await layer.close()


async def test_cli_token_create_for_a_user_only_the_database_knows(cli):
    run, url = cli
    from chainlit.user import User

    layer = SQLAlchemyDataLayer(url)
    try:
        await layer.create_user(User(identifier="oauth-user@example.com", metadata={"provider": "github"}))
    finally:
        await layer.close()
    created = run("token", "create", "oauth-user@example.com", "--name", "ci")
    assert created.returncode == 0, created.stderr
    layer = SQLAlchemyDataLayer(url)
    try:
        assert await ApiTokens(layer).authenticate(created.stdout.splitlines()[-1]) is not None
        assert (await layer.get_user("oauth-user@example.com")).metadata == {"provider": "github"}  # untouched
    finally:
        await layer.close()


async def test_cli_token_create_refuses_an_unknown_user_and_a_bad_name(cli):
    run, url = cli
    unknown = run("token", "create", "nobody", "--name", "x")
    assert unknown.returncode == 2
    assert "no user 'nobody'" in unknown.stderr and unknown.stdout == ""
    assert run("token", "create", "ada", "--name", "   ").returncode == 2
    assert run("token", "create", "ada", "--name", "x", "--expires-days", "0").returncode == 2
    layer = SQLAlchemyDataLayer(url)
    try:
        assert await layer.get_user("nobody") is None
        assert await layer.list_api_tokens("ada") == []
    finally:
        await layer.close()


def test_cli_token_list_and_revoke(cli):
    run, _ = cli
    first = run("token", "create", "ada", "--name", "laptop").stdout.splitlines()[-1]
    second = run("token", "create", "ada", "--name", "phone", "--expires-days", "30").stdout.splitlines()[-1]
    listed = run("token", "list", "ada")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[0], r[1], r[3]) for r in rows] == [(parse_token(second), "phone", "never"),
                                                  (parse_token(first), "laptop", "never")]
    assert rows[0][4] != "never" and rows[1][4] == "never"
    for secret in (first, second):
        assert secret.split("_", 2)[2] not in listed.stdout + listed.stderr
        assert hashlib.sha256(secret.encode()).hexdigest() not in listed.stdout
    missing = run("token", "revoke", "ada", "0" * 32)
    assert missing.returncode == 1 and "no API token" in missing.stderr
    revoked = run("token", "revoke", "ada", parse_token(first))
    assert revoked.returncode == 0, revoked.stderr
    assert [line.split("\t")[1] for line in run("token", "list", "ada").stdout.splitlines()] == ["phone"]
    assert run("token", "revoke", "ada", parse_token(first)).returncode == 1


async def test_cli_remove_revokes_the_users_tokens(cli, tmp_path):
    run, url = cli
    plaintexts = [run("token", "create", "ada", "--name", f"t{i}").stdout.splitlines()[-1] for i in range(2)]
    removed = run("remove", "ada")
    assert removed.returncode == 0, removed.stderr
    assert "ended every session of 'ada'" in removed.stdout
    assert "revoked 2 API token(s) of 'ada'" in removed.stdout
    assert "ada" not in UserStore(tmp_path / "data" / "users.toml").load()
    layer = SQLAlchemyDataLayer(url)
    try:
        tokens = ApiTokens(layer)
        assert [await tokens.authenticate(p) for p in plaintexts] == [None, None]
        assert await tokens.list("ada") == []
    finally:
        await layer.close()


def test_cli_says_when_the_tokens_could_not_be_deleted(tmp_path):
    env = _cli_env(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    assert _users_cli(env, "add", "ivy", "--password-stdin", stdin="first-password\n").returncode == 0
    removed = _users_cli(env, "remove", "ivy")
    assert removed.returncode == 1
    assert "could not end the sessions and API tokens of 'ivy'" in removed.stderr
    assert "python -m chat.users token revoke ivy --all" in removed.stderr
    created = _users_cli(env, "token", "create", "ivy", "--name", "x")
    assert created.returncode == 1 and created.stdout == ""
