"""End to end, in the browser: while the database is unavailable the conversation goes on, a
notice says the messages are kept, it clears once they are saved, and a reload shows them all.

The outage: this test process holds SQLite's exclusive lock on the app's database file, as
another program (a backup, a migration) would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import httpx
import pytest

from tests.e2e.app_runner import RunningApp
from tests.e2e.test_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    assistant_messages,
    browser_ready,
    llm,
    log_in,
    send,
    title_or_echo,
    user_messages,
    wait_for_text,
)
from tests.servers.openai_compat import Reply

NOTICE = "Saving is delayed"


@pytest.fixture
def sqlite_app(browser_ready, llm, tmp_path):  # noqa: F811
    database = tmp_path / "app.db"
    running = RunningApp(tmp_path, f"sqlite+aiosqlite:///{database}", llm.base_url)
    try:
        running.wait_ready()
        running.database = database
        yield running
    finally:
        running.stop()


class ExclusiveLock:
    """Hold SQLite's write lock from another process until released."""

    def __init__(self, path):
        self.path = path
        self._release = threading.Event()
        self._held = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        self._held.set()
        self._release.wait(120)
        db.execute("COMMIT")
        db.close()

    def __enter__(self):
        self._thread.start()
        assert self._held.wait(30), "could not take the lock"
        return self

    def __exit__(self, *exc):
        self._release.set()
        self._thread.join(30)


async def health(app) -> dict:
    async with httpx.AsyncClient(base_url=app.url, timeout=10) as client:
        return (await client.get("/health")).json()


async def test_the_notice_appears_during_an_outage_and_clears_when_saved(sqlite_app, llm):  # noqa: F811
    from playwright.async_api import async_playwright, expect

    app = sqlite_app
    llm.reset()
    llm.responder = title_or_echo
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            await log_in(page, app)

            llm.script(Reply("First answer, saved at once."))
            await send(page, "First question")
            await wait_for_text(assistant_messages(page).last, "First answer, saved at once.")
            await page.wait_for_url("**/thread/**")
            thread_url = page.url
            await expect(page.get_by_text(NOTICE)).to_have_count(0)

            with ExclusiveLock(app.database):
                llm.script(Reply("Second answer, written while the database is locked."))
                await send(page, "Second question")
                await wait_for_text(assistant_messages(page).last, "written while the database is locked")
                # The conversation went on; the notice tells the person their messages wait.
                await expect(page.get_by_text(NOTICE)).to_be_visible(timeout=20_000)
                status = await health(app)
                assert status["status"] == "degraded" and status["journal"]["pending"] >= 1
                await asyncio.sleep(6)  # past SQLite's busy timeout: the write fails and is retried
            # The lock is gone: the backlog drains and the notice disappears by itself.
            await expect(page.get_by_text(NOTICE)).to_have_count(0, timeout=30_000)
            for _ in range(50):
                status = await health(app)
                if status["journal"]["pending"] == 0 and status["status"] == "ok":
                    break
                await asyncio.sleep(0.2)
            assert status["journal"] == {**status["journal"], "pending": 0, "rejected": 0}

            await page.goto(thread_url)
            await wait_for_text(user_messages(page).last, "Second question")
            await wait_for_text(assistant_messages(page).last, "written while the database is locked")
            assert await user_messages(page).count() == 2
            assert await assistant_messages(page).count() == 2
            await expect(page.get_by_text(NOTICE)).to_have_count(0)  # never stored
            app.log.flush()
            log = app.log_path.read_text(errors="replace")
            assert "kept in the journal" in log and "journal drained" in log
            assert " ERROR " not in log and "Task exception was never retrieved" not in log
        finally:
            await browser.close()
