"""End to end: the real app (`chainlit run app.py`) in Debian's headless Chromium.

A person logs in, chats (the reply streams in), reloads, reopens the thread from the
sidebar, carries on (the model receives the earlier turns), rates a reply, attaches a file
(still there after reload), renames and deletes the thread. Once on SQLite and once on
PostgreSQL, with local file storage and the OpenAI-compatible test server as the model.

Needs /usr/bin/chromium (`apt-get install chromium`) and the `playwright` package; skipped
with a reason elsewhere, but with CI=true a missing piece fails the run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.e2e.app_runner import ROOT, RunningApp
from tests.servers.openai_compat import Fail, OpenAICompatServer, Reply, default_responder

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
OTHER_USER = ("mallory", "mallory-password")
SCREENSHOT = ROOT / "docs" / "screenshot.png"
TIMEOUT_MS = 30_000


def missing(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true and the browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_ready():
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")


def title_or_echo(body: dict) -> str:
    """Answers like the default test responder; title requests (not streamed) get a title."""
    if not body.get("stream"):
        return "Ada introduction"
    return default_responder(body)


@pytest.fixture(scope="module")
def llm():
    with OpenAICompatServer() as server:
        server.responder = title_or_echo
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request, browser_ready, llm, sql_url_factory, tmp_path):
    database_url = sql_url_factory(request.param)
    running = RunningApp(tmp_path, database_url, llm.base_url)
    try:
        running.wait_ready()
        running.backend = request.param
        yield running
    finally:
        running.stop()


async def wait_for_text(locator, text: str, timeout: float = TIMEOUT_MS):
    from playwright.async_api import expect

    await expect(locator).to_contain_text(text, timeout=timeout)


async def test_a_person_chats_and_finds_the_conversation_again(app, llm, tmp_path):
    from playwright.async_api import async_playwright

    llm.reset()
    llm.responder = title_or_echo
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1280, "height": 1000})
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            await run_story(page, app, llm, tmp_path)
        except Exception:
            shot = Path(tempfile.gettempdir()) / f"e2e-{app.backend}-failure.png"
            await page.screenshot(path=str(shot), full_page=True)
            log = shot.with_suffix(".log")
            shutil.copyfile(app.log_path, log)
            print(f"screenshot: {shot}\napp log: {log}\n--- app log (end) ---\n{app.log_text()}")
            raise
        finally:
            await browser.close()


def assistant_messages(page):
    return page.locator('[data-step-type="assistant_message"]')


def user_messages(page):
    return page.locator('[data-step-type="user_message"]')


async def log_in(page, app, user: str = "admin", password: str | None = None) -> None:
    """Log in through the login page and wait for the chat."""
    from playwright.async_api import expect

    await page.goto(f"{app.url}/login")
    await page.locator("#email").fill(user)
    await page.locator("#password").fill(password or app.admin_password())
    await page.locator('button[type="submit"]').click()
    await expect(page.locator("#chat-input")).to_be_visible()


async def send(page, text: str) -> None:
    box = page.locator("#chat-input")
    await box.click()
    await box.fill(text)
    await page.locator("#chat-submit").click()


async def run_story(page, app, llm, tmp_path):
    from playwright.async_api import expect

    # ---- log in ------------------------------------------------------------------------
    await page.goto(f"{app.url}/login")
    await page.locator("#email").fill("admin")
    await page.locator("#password").fill(app.admin_password())
    await page.locator('button[type="submit"]').click()
    await expect(page.locator("#chat-input")).to_be_visible()

    # ---- first message: the reply streams in -------------------------------------------
    llm.script(
        Reply(
            "Nice to meet you, Ada. I will remember your name.",
            chunks=["Nice", " to meet", " you,", " Ada.", " I will", " remember", " your name."],
            chunk_delay=0.35,
        )
    )
    await send(page, "Hello, my name is Ada")
    reply = assistant_messages(page).last
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if await reply.count():
            text = (await reply.inner_text()).strip()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if "your name." in text:
                break
        await asyncio.sleep(0.1)
    assert any("Ada" in s and "your name." not in s for s in seen), f"no partial reply was shown: {seen}"
    await wait_for_text(reply, "Nice to meet you, Ada. I will remember your name.")

    # The sidebar lists the thread under the model-generated title.
    history = page.locator("#thread-history")
    await wait_for_text(history, "Ada introduction")
    thread_link = history.locator("a", has_text="Ada introduction").first

    # ---- reload, reopen from the sidebar: the history is there --------------------------
    await page.reload()
    await expect(page.locator("#chat-input")).to_be_visible()
    await thread_link.click()
    await page.wait_for_url(re.compile(r".*/thread/[0-9a-f-]+$"))
    thread_id = page.url.rsplit("/", 1)[1]
    await wait_for_text(user_messages(page).first, "Hello, my name is Ada")
    await wait_for_text(assistant_messages(page).first, "I will remember your name.")

    # ---- per-thread settings: answer length and prompt template ------------------------
    await page.locator("#chat-settings-open-modal").click()
    settings = page.get_by_role("dialog")
    await settings.locator("#max_tokens").fill("64")
    await settings.locator("#prompt").click()
    await page.get_by_role("option", name="Concise").click()
    await settings.get_by_role("button", name="Confirm").click()
    await expect(settings).to_have_count(0)

    # ---- carry on: the model receives the earlier turns --------------------------------
    llm.script(Reply("Your name is **Ada**: you told me in your first message."))
    await send(page, "What is my name?")
    await wait_for_text(assistant_messages(page).last, "Your name is Ada: you told me in your first message.")
    request = llm.chat_requests(stream=True)[-1]
    assert request["max_tokens"] == 64
    sent = request["messages"]
    assert sent[0]["content"].startswith("You are a terse assistant.")
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "Hello, my name is Ada"
    assert sent[2]["content"] == "Nice to meet you, Ada. I will remember your name."

    # ---- rate the reply ---------------------------------------------------------------
    last_reply = page.locator('[data-step-type="assistant_message"]').last
    await last_reply.hover()
    await last_reply.locator(".positive-feedback-off").click()
    await page.get_by_placeholder("Your feedback...").fill("Correct, thanks")
    await page.locator("#submit-feedback").click()
    await expect(last_reply.locator(".positive-feedback-on")).to_be_visible()

    # ---- attach a file ----------------------------------------------------------------
    notes = tmp_path / "notes.txt"
    notes.write_text("The secret word is pineapple.\n")
    await page.locator("#upload-button-input").set_input_files(str(notes))
    await expect(page.locator("#attachments")).to_contain_text("notes.txt")
    llm.script(Reply("Your file **notes.txt** says that the secret word is *pineapple*."))
    await send(page, "What does my file say?")
    await wait_for_text(assistant_messages(page).last, "the secret word is pineapple")
    sent = llm.chat_requests(stream=True)[-1]["messages"]
    assert "The secret word is pineapple." in sent[-1]["content"]

    # ---- reload: the file, the rating and the whole conversation are still there ---------
    await page.reload()
    await wait_for_text(user_messages(page).last, "What does my file say?")
    await expect(page.get_by_text("notes.txt").first).to_be_visible()
    await expect(page.locator('[data-step-type="assistant_message"] .positive-feedback-on')).to_have_count(1)
    assert await user_messages(page).count() == 3
    assert await assistant_messages(page).count() == 3
    if app.backend == "sqlite":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await user_messages(page).first.scroll_into_view_if_needed()
        await page.mouse.move(760, 400)
        await page.mouse.wheel(0, -5000)  # show the conversation from its start
        await asyncio.sleep(0.5)
        await page.screenshot(path=str(SCREENSHOT))

    # What the data layer stored, read back through Chainlit's own API.
    response = await page.request.get(f"{app.url}/project/thread/{thread_id}")
    assert response.ok, await response.text()
    stored = await response.json()
    replies = [s for s in stored["steps"] if s["type"] == "assistant_message"]
    assert [r["generation"]["metadata"]["status"] for r in replies] == ["success"] * 3
    assert all(r["generation"]["model"] == "test-model" and r["generation"]["tokenCount"] > 0 for r in replies)
    # Chainlit's UI rates the `on_message` run that produced the reply.
    rated = [s for s in stored["steps"] if s.get("feedback")]
    assert len(rated) == 1 and rated[0]["feedback"]["value"] == 1
    rated_reply = [r for r in replies if r.get("parentId") == rated[0]["id"]]
    assert rated_reply and rated_reply[0]["output"].startswith("Your name is **Ada**")
    assert rated[0]["feedback"]["comment"] == "Correct, thanks"
    assert [e["name"] for e in stored["elements"]] == ["notes.txt"]
    file_response = await page.request.get(urljoin(app.url, stored["elements"][0]["url"]))
    assert file_response.ok and await file_response.text() == "The secret word is pineapple.\n"

    # Another user can neither read this thread nor overwrite its rating (Chainlit's
    # /feedback route checks no ownership; app.py tells the data layer who is asking).
    await app.add_user(*OTHER_USER)
    async with httpx.AsyncClient(base_url=app.url, timeout=20) as other:
        login = await other.post("/login", data={"username": OTHER_USER[0], "password": OTHER_USER[1]})
        assert login.status_code == 200, login.text
        assert (await other.get(f"/project/thread/{thread_id}")).status_code in (401, 403, 404)
        attack = await other.put(
            "/feedback",
            json={"feedback": {"forId": rated[0]["id"], "value": 0, "comment": "overwritten"}, "sessionId": "x"},
        )
        assert attack.status_code >= 400, attack.text
    again = await (await page.request.get(f"{app.url}/project/thread/{thread_id}")).json()
    (still,) = [s for s in again["steps"] if s.get("feedback")]
    assert (still["feedback"]["value"], still["feedback"]["comment"]) == (1, "Correct, thanks")

    # ---- a failing model call shows an error; the thread stays usable ------------------
    llm.script(Fail(429, message="Rate limit reached for test-model"))
    await send(page, "Are you still there?")
    await wait_for_text(assistant_messages(page).last, "The model provider is rate-limiting requests (HTTP 429)")
    await send(page, "Try again please")
    await wait_for_text(assistant_messages(page).last, "Echo: Try again please")
    request = llm.chat_requests(stream=True)[-1]
    assert request["max_tokens"] == 64  # the thread's settings survived the reload
    contents = [m["content"] for m in request["messages"]]
    assert "Are you still there?" in contents
    assert not any("rate-limiting" in c for c in contents)  # errors are not model context

    # ---- rename -----------------------------------------------------------------------
    item = history.locator(f'a[href$="{thread_id}"]').first
    await item.hover()
    await item.locator("#thread-options").click()
    await page.locator("#rename-thread").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.locator("input")).to_have_value("Ada introduction")
    await dialog.locator("input").fill("Renamed by the test")
    await dialog.get_by_role("button", name="Confirm").click()
    await wait_for_text(history, "Renamed by the test")
    await page.reload()
    await wait_for_text(page.locator("#thread-history"), "Renamed by the test")

    # ---- delete -----------------------------------------------------------------------
    item = page.locator("#thread-history").locator(f'a[href$="{thread_id}"]').first
    await item.hover()
    await item.locator("#thread-options").click()
    await page.locator("#delete-thread").click()
    await page.get_by_role("alertdialog").get_by_role("button", name=re.compile("confirm|delete|continue", re.I)).click()
    await expect(page.locator("#thread-history").locator(f'a[href$="{thread_id}"]')).to_have_count(0)
    await page.reload()
    await expect(page.locator("#chat-input")).to_be_visible()
    await expect(page.locator(f'a[href$="{thread_id}"]')).to_have_count(0)


# ---- a newcomer's first run: nothing but the app is asked for anything ----------------------
@pytest.fixture
def offline_app(browser_ready, tmp_path):
    """The app as `make run` starts it on a fresh machine: SQLite, no model configured."""
    running = RunningApp(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", None)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


class AssetWatch:
    """Every request the page makes; what went wrong: a 4xx/5xx answer, a request that
    failed, or one to another origin (which the browser context refuses, as a locked-down
    network would). The one 4xx expected: before login, the page asks `/user` who is logged
    in and gets 401."""

    def __init__(self, origin: str):
        self.origin = urlsplit(origin)
        self.urls: list[str] = []
        self.problems: list[str] = []
        self.logged_in = False

    def same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("data", "blob") or (
            parts.scheme in ("http", "ws") and parts.netloc == self.origin.netloc
        )

    def request(self, request) -> None:
        self.urls.append(request.url)
        if not self.same_origin(request.url):
            self.problems.append(f"request to another origin: {request.url}")

    def response(self, response) -> None:
        if (response.status, urlsplit(response.url).path, self.logged_in) == (401, "/user", False):
            return
        if response.status >= 400:
            self.problems.append(f"{response.status} for {response.request.method} {response.url}")

    def failed(self, request) -> None:
        if self.same_origin(request.url):  # another origin's abort is reported above
            self.problems.append(f"failed: {request.method} {request.url} ({request.failure})")

    def websocket(self, socket) -> None:
        self.request(socket)


async def test_a_newcomers_first_chat_loads_everything_from_the_app(offline_app):
    from playwright.async_api import async_playwright, expect

    app = offline_app
    watch = AssetWatch(app.url)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1280, "height": 1000})
        await context.route(lambda url: not watch.same_origin(url), lambda route: route.abort())
        context.on("request", watch.request)
        context.on("response", watch.response)
        context.on("requestfailed", watch.failed)
        page = await context.new_page()
        page.on("websocket", watch.websocket)
        page.set_default_timeout(TIMEOUT_MS)
        try:
            # ---- log in: the form asks for a user name ---------------------------------
            await page.goto(f"{app.url}/login")
            await expect(page.get_by_text("User name", exact=True)).to_be_visible()
            await expect(page.locator("#email")).to_have_attribute("placeholder", "Your user name")
            await expect(page.get_by_text("Email address")).to_have_count(0)
            await page.locator("#email").fill("admin")
            await page.locator("#password").fill(app.admin_password())
            await page.locator('button[type="submit"]').click()
            await expect(page.locator("#chat-input")).to_be_visible()
            watch.logged_in = True

            # ---- chat: the offline reply, with its avatar --------------------------------
            await send(page, "Hello, I am new here")
            reply = assistant_messages(page).last
            await wait_for_text(reply, "Offline mode")
            avatar = reply.locator('img[src*="/avatars/"]').first
            await expect(avatar).to_be_visible()
            await page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=await avatar.element_handle())

            # ---- the readme names the gear --------------------------------------------------
            await page.locator("#readme-button").click()
            readme = page.get_by_role("dialog")
            await wait_for_text(readme, "the gear button in the message box")
            assert "slider" not in (await readme.inner_text()).lower()
            await page.keyboard.press("Escape")
            await expect(readme).to_have_count(0)

            # ---- the sidebar lists the conversation ----------------------------------------
            history = page.locator("#thread-history")
            if not await history.is_visible():
                await page.locator("#sidebar-trigger-button").click()
            await wait_for_text(history, "Hello, I am new here")

            # ---- New Chat says the conversation is kept -------------------------------------
            await page.locator("#new-chat-button").click()
            dialog = page.locator("#new-chat-dialog")
            await wait_for_text(dialog, "Your current chat stays saved")
            assert "clear" not in (await dialog.inner_text()).lower()
            await dialog.get_by_role("button", name="Cancel").click()
            await expect(dialog).to_have_count(0)

            # The page's font is the app's copy of Inter, loaded.
            inter = await page.evaluate(
                """document.fonts.ready.then(() => [...document.fonts].filter(
                       f => f.family.replace(/["']/g, '') === 'Inter' && f.status === 'loaded').length)"""
            )
            assert inter > 0, "the Inter font did not load"
            await page.wait_for_load_state("networkidle")

            # A browser set to another language gets the same corrected texts.
            german = await (await page.request.get(f"{app.url}/project/translations?language=de-DE")).json()
            assert german["translation"]["auth"]["login"]["form"]["email"]["label"] == "User name"
        except Exception:
            shot = Path(tempfile.gettempdir()) / "e2e-newcomer-failure.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}\nrequests: {watch.urls}\n--- app log (end) ---\n{app.log_text()}")
            raise
        finally:
            await browser.close()

    assert watch.problems == []
    local = [urlsplit(url).path for url in watch.urls]
    assert "/public/vendor/inter/inter.css" in local and "/public/vendor/katex/katex.min.css" in local
    assert any(path.startswith("/public/vendor/inter/files/") for path in local)
    assert "/avatars/Offline%20assistant" in local
