"""The session revocation store (`revoke_sessions` / `sessions_revoked_at`) on SQLite,
PostgreSQL, MariaDB and DynamoDB (`open_layer`, conftest.py): per user, only forward,
untouched by logins, and still there for a new layer on the same database (an app
restart, another instance, the CLI)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from chainlit.user import User

from datalayers.errors import RequestError
from datalayers.timestamps import format_timestamp


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


async def test_a_revocation_is_stored_per_user_and_seen_by_another_layer(open_layer):
    layer = await open_layer()
    alice, bob = user(), user()
    assert await layer.sessions_revoked_at(alice) is None
    before = datetime.now(UTC)
    revoked = await layer.revoke_sessions(alice, "logout")
    assert before <= revoked <= datetime.now(UTC)
    assert await layer.sessions_revoked_at(alice) == revoked
    assert await layer.sessions_revoked_at(bob) is None
    # A restart, another app instance or the CLI: a new layer on the same database.
    other = await open_layer()
    assert await other.sessions_revoked_at(alice) == revoked
    later = await other.revoke_sessions(alice, "password changed")
    assert later > revoked
    assert await layer.sessions_revoked_at(alice) == later


async def test_the_stored_time_never_moves_back(open_layer):
    layer = await open_layer()
    alice = user()
    revoked = await layer.revoke_sessions(alice, "removed")
    # Another instance whose clock is a minute behind writes an earlier time: ignored.
    earlier = format_timestamp(revoked - timedelta(minutes=1))
    await layer._revoke_sessions(alice, earlier, "logout")
    assert await layer.sessions_revoked_at(alice) == revoked
    # The public method reports the time in force, not its own clock's.
    ahead = revoked + timedelta(hours=1)
    await layer._revoke_sessions(alice, format_timestamp(ahead), "logout")
    assert await layer.revoke_sessions(alice, "logout") == ahead
    assert await layer.sessions_revoked_at(alice) == ahead


async def test_a_login_keeps_the_revocation(open_layer):
    """Chainlit upserts the user (metadata and all) on every login; that must not reset it."""
    layer = await open_layer()
    alice = user()
    await layer.create_user(User(identifier=alice, metadata={"role": "user"}))
    revoked = await layer.revoke_sessions(alice, "logout")
    await layer.create_user(User(identifier=alice, metadata={"role": "admin", "provider": "credentials"}))
    assert (await layer.get_user(alice)).metadata["role"] == "admin"
    assert await layer.sessions_revoked_at(alice) == revoked


@pytest.mark.parametrize("identifier", ["", "x" * 256, "nul\x00byte"])
async def test_an_invalid_identifier_is_refused_as_a_bad_request(open_layer, identifier):
    layer = await open_layer()
    with pytest.raises(RequestError):
        await layer.revoke_sessions(identifier)
    with pytest.raises(RequestError):
        await layer.sessions_revoked_at(identifier)
