"""A user manages their API tokens from the browser (headless Chromium): the chat header's
"API tokens" link, create a token (shown once), use it, revoke it."""

from __future__ import annotations

import pytest

from tests.api.conftest import PASSWORDS, launch
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, browser_ready  # noqa: F401  (fixture)


@pytest.fixture
def app(request, tmp_path, browser_ready):  # noqa: F811  (the imported fixture)
    started = launch(request, tmp_path, "sqlite")
    yield started
    started.stop()


async def test_create_use_and_revoke_a_token_in_the_browser(app):
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        failures: list[str] = []
        page.on("pageerror", lambda error: failures.append(str(error)))
        await page.goto(f"{app.url}/login")
        await page.locator("#email").fill("alice")
        await page.locator("#password").fill(PASSWORDS["alice"])
        await page.locator('button[type="submit"]').click()
        await expect(page.locator("#chat-input")).to_be_visible(timeout=30_000)

        await page.get_by_role("link", name="API tokens").first.click()
        await expect(page.get_by_role("heading", name="API tokens")).to_be_visible(timeout=30_000)
        await page.locator("#name").fill("browser-made")
        await page.get_by_role("button", name="Create token").click()
        secret = page.locator("#secret")
        await expect(secret).to_contain_text("clp_", timeout=30_000)
        token = (await secret.text_content() or "").strip()
        await expect(page.locator("#tokens")).to_contain_text("browser-made")

        async with app.client(None, token=token) as http:
            assert (await http.get("/conversations")).status_code == 200

        page.on("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("row").filter(has_text="browser-made").get_by_role("button", name="Revoke").click()
        await expect(page.locator("#status")).to_contain_text("Revoked", timeout=30_000)
        await expect(page.locator("#tokens")).not_to_contain_text("browser-made")
        async with app.client(None, token=token) as http:
            assert (await http.get("/conversations")).status_code == 401
        assert failures == []
        await browser.close()
