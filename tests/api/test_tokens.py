"""API tokens against the real app: made by the operator's CLI (also for a user who never
logged in) and by the user from the browser, revoked at once, gone with their user, rate
limited per token."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.api.conftest import launch, make_token
from tests.e2e.app_runner import ROOT


def cli(api_app, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chat.users", *args], cwd=ROOT, env=api_app.running.env,
                          capture_output=True, text=True, timeout=60)


async def test_operator_made_token_for_a_user_who_never_logged_in(api_app, llm):
    await api_app.running.add_user("carol", "carol-secret-pw-3")
    token = make_token(api_app.running, "carol", "carol's script")
    async with api_app.client(None, token=token) as http:
        answer = await http.post("/chat", json={"query": "hello from carol", "stream": False})
        assert answer.status_code == 200, answer.text
        cid = answer.json()["conversation_id"]
        assert [c["id"] for c in (await http.get("/conversations")).json()["data"]] == [cid]
    listed = cli(api_app, "token", "list", "carol")
    assert listed.returncode == 0 and "carol's script" in listed.stdout
    assert token not in listed.stdout and token.split("_")[-1] not in listed.stdout
    unknown = cli(api_app, "token", "create", "nobody-at-all", "--name", "x")
    assert unknown.returncode == 2 and "nobody-at-all" in (unknown.stdout + unknown.stderr)


async def test_revoked_token_and_removed_user_stop_at_once(api_app, llm):
    await api_app.running.add_user("dave", "dave-secret-pw-4")
    keep, drop = make_token(api_app.running, "dave", "keep"), make_token(api_app.running, "dave", "drop")
    async with api_app.client(None, token=drop) as http:
        tokens = (await http.get("/tokens")).json()["data"]
        assert {t["name"] for t in tokens} == {"keep", "drop"}
        drop_id = next(t["id"] for t in tokens if t["name"] == "drop")
    revoked = cli(api_app, "token", "revoke", "dave", drop_id)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    async with api_app.client(None, token=drop) as http:
        assert (await http.get("/conversations")).status_code == 401
    async with api_app.client(None, token=keep) as http:
        assert (await http.get("/conversations")).status_code == 200
        # The user's own last-used time is shown, never the secret. It is recorded in the
        # background after the request it describes: wait for it (bounded).
        for _ in range(100):
            listed = (await http.get("/tokens")).json()["data"]
            if listed and listed[0]["last_used_at"]:
                break
            await asyncio.sleep(0.1)
        assert [t["name"] for t in listed] == ["keep"] and listed[0]["last_used_at"]
        assert "token" not in listed[0]
    removed = cli(api_app, "remove", "dave")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    async with api_app.client(None, token=keep) as http:
        assert (await http.get("/conversations")).status_code == 401


async def test_browser_user_manages_own_tokens(api_app, llm):
    browser = await api_app.browser("bob")
    async with api_app.client(None, cookies=browser.cookies) as http:
        page = await http.get("/account/tokens")
        assert page.status_code == 200 and "API tokens" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        created = await http.post("/tokens", json={"name": "from the UI", "expires_in_days": 30})
        assert created.status_code == 201, created.text
        secret, token_id = created.json()["token"], created.json()["id"]
        assert created.json()["expires_at"]
        assert "from the UI" in [t["name"] for t in (await http.get("/tokens")).json()["data"]]
        # The login cookie manages tokens only: the conversation API wants a token.
        assert (await http.get("/conversations")).status_code == 401
    async with api_app.client(None, token=secret) as api:
        assert (await api.get("/conversations")).status_code == 200
    async with api_app.client("alice") as alice:  # another user cannot revoke it
        assert (await alice.delete(f"/tokens/{token_id}")).status_code == 404
    async with api_app.client(None, cookies=browser.cookies) as http:
        assert (await http.delete(f"/tokens/{token_id}")).status_code == 204
    async with api_app.client(None, token=secret) as api:
        assert (await api.get("/conversations")).status_code == 401
    await browser.close()


@pytest.fixture(scope="module")
def limited_app(request, tmp_path_factory):
    app = launch(request, tmp_path_factory.mktemp("api-rate"), "sqlite", API_RATE_LIMIT_PER_MINUTE="5")
    try:
        yield app
    finally:
        app.stop()


async def test_rate_limit_per_token(limited_app):
    async with limited_app.client("alice") as alice:
        statuses = [(await alice.get("/conversations")).status_code for _ in range(7)]
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
        limited = await alice.get("/conversations")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    async with limited_app.client("bob") as bob:  # per token: bob is not slowed by alice
        assert (await bob.get("/conversations")).status_code == 200
