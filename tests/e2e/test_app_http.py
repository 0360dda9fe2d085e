"""The real app over HTTP, without a browser: a fresh start with nothing configured (offline
model, generated first admin), password and header logins, and Chainlit's feature flags."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.app_runner import RunningApp


@pytest.fixture
def fresh_app(tmp_path):
    running = RunningApp(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        None,
        APP_AUTH_HEADER="X-Remote-User",
        # Chainlit's standard OAuth settings: the provider appears on the login page.
        OAUTH_GITHUB_CLIENT_ID="e2e-client",
        OAUTH_GITHUB_CLIENT_SECRET="e2e-secret",
    )
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


async def test_fresh_start_offline_with_generated_admin_header_and_oauth_logins(fresh_app):
    log = fresh_app.log_text()
    assert "chat provider: offline (no LLM configured)" in log
    password = fresh_app.admin_password()
    assert len(password) >= 12

    async with httpx.AsyncClient(base_url=fresh_app.url, timeout=20) as client:
        auth = (await client.get("/auth/config")).json()
        assert auth["requireLogin"] and auth["passwordAuth"] and auth["headerAuth"]
        assert auth["oauthProviders"] == ["github"]

        assert (await client.post("/login", data={"username": "admin", "password": "wrong"})).status_code == 401
        assert (await client.post("/login", data={"username": "admin", "password": password})).status_code == 200
        me = (await client.get("/user")).json()
        assert me["identifier"] == "admin" and me["metadata"]["role"] == "admin"

        health = await client.get("/health")
        assert health.status_code == 200 and health.headers["content-type"] == "application/json"
        assert health.json()["status"] == "ok"
        journal = health.json()["journal"]
        assert journal["pending"] == 0 and journal["rejected"] == 0
        assert journal["journal"].endswith("journal.sqlite3")  # on disk, in the data folder

        settings = (await client.get("/project/settings", params={"language": "en-US"})).json()
        assert settings["dataPersistence"] is True
        assert settings["threadResumable"] is True
        assert settings["threadSharing"] is True
        assert settings["features"]["spontaneous_file_upload"]["enabled"] is True
        assert settings["ui"]["name"] == "Chainlit Persist"

    async with httpx.AsyncClient(base_url=fresh_app.url, timeout=20) as proxy_user:
        assert (await proxy_user.post("/auth/header")).status_code == 401  # no header, no login
        ok = await proxy_user.post("/auth/header", headers={"X-Remote-User": "carol"})
        assert ok.status_code == 200, ok.text
        assert (await proxy_user.get("/user")).json()["identifier"] == "carol"
