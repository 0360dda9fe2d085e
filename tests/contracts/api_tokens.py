"""The API-token store's contract (`create_api_token` … `touch_api_token`), the same for
every backend. A test module subclasses `ApiTokenContract` and provides `open_layer`:
`await open_layer()` opens one more layer on the same database (first call: a new one),
as tests/datalayers/conftest.py does for SQLite, PostgreSQL, MariaDB and DynamoDB."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User

from datalayers.credentials import ApiToken
from datalayers.errors import DataLayerError, RequestError

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


def token(identifier: str, created_at: datetime = T0, **fields) -> ApiToken:
    values = {"id": uuid.uuid4().hex, "user_identifier": identifier, "name": "laptop",
              "token_hash": hashlib.sha256(secrets.token_bytes(16)).hexdigest(), "created_at": created_at, **fields}
    return ApiToken(**values)


class ApiTokenContract:
    async def test_a_token_is_stored_as_given_and_found_by_its_id(self, open_layer):
        layer = await open_layer()
        alice = user()
        stored = token(alice, name="CI runner ✓", expires_at=T0 + timedelta(days=30))
        assert await layer.get_api_token(stored.id) is None
        await layer.create_api_token(stored)
        found = await layer.get_api_token(stored.id)
        assert found == stored
        assert found.created_at.tzinfo is not None and found.expires_at == T0 + timedelta(days=30)
        assert found.last_used_at is None
        assert await layer.get_api_token(uuid.uuid4().hex) is None

    async def test_any_text_is_kept_in_the_name(self, open_layer):
        layer = await open_layer()
        for name in ("nul\x00inside", "\ufdd0 mark", "x" * 100, "emoji 🚀 and ümlaut"):
            stored = token(user(), name=name)
            await layer.create_api_token(stored)
            assert (await layer.get_api_token(stored.id)).name == name

    async def test_a_duplicate_id_is_refused_and_the_first_token_stays(self, open_layer):
        layer = await open_layer()
        first = token(user())
        await layer.create_api_token(first)
        with pytest.raises(DataLayerError):
            await layer.create_api_token(replace(token(user()), id=first.id))
        assert await layer.get_api_token(first.id) == first
        assert [t.id for t in await layer.list_api_tokens(first.user_identifier)] == [first.id]

    async def test_a_users_tokens_are_listed_newest_first(self, open_layer):
        layer = await open_layer()
        alice, bob = user(), user()
        oldest = token(alice, T0)
        newest = token(alice, T0 + timedelta(days=2))
        middle = token(alice, T0 + timedelta(seconds=1), expires_at=T0 + timedelta(days=9))
        same_time = sorted([token(alice, T0 - timedelta(days=1)), token(alice, T0 - timedelta(days=1))],
                           key=lambda t: t.id, reverse=True)
        for item in (oldest, *same_time, newest, middle, token(bob)):
            await layer.create_api_token(item)
        listed = await layer.list_api_tokens(alice)
        assert listed == [newest, middle, oldest, *same_time]  # same time: the greater id first
        assert await layer.list_api_tokens(user()) == []

    async def test_a_user_deletes_only_their_own_token(self, open_layer):
        layer = await open_layer()
        alice, bob = user(), user()
        kept, doomed, bobs = token(alice), token(alice, T0 + timedelta(hours=1)), token(bob)
        for item in (kept, doomed, bobs):
            await layer.create_api_token(item)
        assert await layer.delete_api_token(bob, doomed.id) is False  # another user's: refused
        assert await layer.get_api_token(doomed.id) == doomed
        assert await layer.delete_api_token(alice, doomed.id) is True
        assert await layer.get_api_token(doomed.id) is None
        assert await layer.list_api_tokens(alice) == [kept]
        assert await layer.delete_api_token(alice, doomed.id) is False  # gone
        assert await layer.delete_api_token(alice, uuid.uuid4().hex) is False
        assert await layer.list_api_tokens(bob) == [bobs]

    async def test_a_name_that_only_looks_alike_is_another_user(self, open_layer):
        """MySQL/MariaDB's default collation finds 'Alice' and 'alice ' for 'alice'."""
        layer = await open_layer()
        alice = f"alice-{uuid.uuid4().hex[:8]}"
        stored = token(alice)
        await layer.create_api_token(stored)
        for other in (alice.upper(), f"{alice} ", f"{alice}\t"):
            assert await layer.list_api_tokens(other) == []
            assert await layer.delete_api_token(other, stored.id) is False
            assert await layer.delete_api_tokens(other) == 0
        assert await layer.get_api_token(stored.id.upper()) is None
        assert await layer.list_api_tokens(alice) == [stored]

    async def test_deleting_all_of_a_users_tokens_leaves_the_rest(self, open_layer):
        layer = await open_layer()
        alice, bob = user(), user()
        await layer.create_user(User(identifier=alice, metadata={"role": "user"}))
        revoked = await layer.revoke_sessions(alice, "logout")
        alices = [token(alice, T0 + timedelta(minutes=i)) for i in range(30)]
        bobs = token(bob)
        for item in (*alices, bobs):
            await layer.create_api_token(item)
        assert await layer.delete_api_tokens(alice) == 30
        assert await layer.list_api_tokens(alice) == []
        assert all([await layer.get_api_token(t.id) is None for t in alices])
        assert await layer.delete_api_tokens(alice) == 0
        assert await layer.get_api_token(bobs.id) == bobs
        # What else lives with the user is untouched.
        assert (await layer.get_user(alice)).metadata == {"role": "user"}
        assert await layer.sessions_revoked_at(alice) == revoked

    async def test_the_last_use_only_moves_forward(self, open_layer):
        layer = await open_layer()
        stored = token(user())
        await layer.create_api_token(stored)
        used = T0 + timedelta(hours=1)
        await layer.touch_api_token(stored.id, used)
        assert (await layer.get_api_token(stored.id)).last_used_at == used
        await layer.touch_api_token(stored.id, used - timedelta(minutes=5))  # an instance whose clock lags
        assert (await layer.get_api_token(stored.id)).last_used_at == used
        later = used + timedelta(seconds=61)
        await layer.touch_api_token(stored.id, later)
        found = await layer.get_api_token(stored.id)
        assert found == replace(stored, last_used_at=later)  # nothing else changed
        assert (await layer.list_api_tokens(stored.user_identifier))[0].last_used_at == later

    async def test_touching_a_missing_token_creates_nothing(self, open_layer):
        layer = await open_layer()
        gone = token(user())
        await layer.create_api_token(gone)
        assert await layer.delete_api_token(gone.user_identifier, gone.id)
        await layer.touch_api_token(gone.id, T0)
        await layer.touch_api_token(uuid.uuid4().hex, T0)
        assert await layer.get_api_token(gone.id) is None
        assert await layer.list_api_tokens(gone.user_identifier) == []

    @pytest.mark.parametrize("token_id", ["", "x" * 65, "nul\x00byte", "y" * 2000])
    async def test_an_id_no_backend_can_store_finds_nothing(self, open_layer, token_id):
        layer = await open_layer()
        assert await layer.get_api_token(token_id) is None
        assert await layer.delete_api_token(user(), token_id) is False
        await layer.touch_api_token(token_id, T0)
        with pytest.raises(RequestError):
            await layer.create_api_token(replace(token(user()), id=token_id))

    async def test_the_longest_id_is_stored(self, open_layer):
        layer = await open_layer()
        stored = replace(token(user()), id="z" * 64)
        await layer.create_api_token(stored)
        assert await layer.get_api_token("z" * 64) == stored

    @pytest.mark.parametrize("change", [
        {"name": ""}, {"name": "n" * 101}, {"token_hash": "not-hex"}, {"token_hash": "A" * 64},
        {"created_at": datetime(2026, 1, 1)}, {"expires_at": datetime(2026, 1, 1)}, {"user_identifier": ""},
        {"user_identifier": "u" * 256},
    ])
    async def test_a_malformed_record_is_refused(self, open_layer, change):
        layer = await open_layer()
        bad = replace(token(user()), **change)
        with pytest.raises(RequestError):
            await layer.create_api_token(bad)
        assert await layer.get_api_token(bad.id) is None

    @pytest.mark.parametrize("identifier", ["", "x" * 256, "nul\x00byte"])
    async def test_an_invalid_user_identifier_is_a_bad_request(self, open_layer, identifier):
        layer = await open_layer()
        for call in (layer.list_api_tokens(identifier), layer.delete_api_token(identifier, uuid.uuid4().hex),
                     layer.delete_api_tokens(identifier)):
            with pytest.raises(RequestError):
                await call

    async def test_a_second_layer_sees_every_write_at_once(self, open_layer):
        """Another app instance, or the CLI: a revocation anywhere stops the token everywhere."""
        first, second = await open_layer(), await open_layer()
        alice = user()
        stored = token(alice)
        await first.create_api_token(stored)
        assert await second.get_api_token(stored.id) == stored
        assert await second.list_api_tokens(alice) == [stored]
        await second.touch_api_token(stored.id, T0 + timedelta(minutes=1))
        assert (await first.get_api_token(stored.id)).last_used_at == T0 + timedelta(minutes=1)
        assert await second.delete_api_token(alice, stored.id) is True
        assert await first.get_api_token(stored.id) is None
        assert await first.list_api_tokens(alice) == []

    async def test_tokens_stay_out_of_the_users_thread_list(self, open_layer):
        layer = await open_layer()
        alice = user()
        persisted = await layer.create_user(User(identifier=alice, metadata={}))
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name="mine", user_id=persisted.id)
        for i in range(3):
            await layer.create_api_token(token(alice, T0 + timedelta(seconds=i)))
        assert await layer.flush(10)
        page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=persisted.id))
        assert [t["id"] for t in page.data] == [thread_id]
        assert await layer.get_favorite_steps(persisted.id) == []
