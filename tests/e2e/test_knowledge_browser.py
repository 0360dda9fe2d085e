"""End to end in headless Chromium: a person attaches a long PDF, sees it indexed, asks about
a fact on one page, and gets an answer with its sources; the source opens with the passage.
The real app (`chainlit run app.py`) on SQLite with the embedded knowledge index, answers
and embeddings from the OpenAI-compatible test server."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.app_runner import RunningApp
from tests.e2e.test_browser import (  # noqa: F401  (fixtures)
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    browser_ready,
    log_in,
    send,
    wait_for_text,
)
from tests.servers.openai_compat import OpenAICompatServer, default_responder

PAGES = 80
FACT_PAGE = 57
FACT = "The Vardø ferry departs from quay 14 at 06:40 on Tuesdays."


def long_pdf(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for number in range(1, PAGES + 1):
        pdf.add_page()
        for line in range(12):
            pdf.multi_cell(0, 5, f"Page {number}, note {line}: the harbour log lists tides, winds and cargo "
                                 f"for berth {number * 3 + line} in the northern district.",
                           new_x="LMARGIN", new_y="NEXT")
        if number == FACT_PAGE:
            pdf.multi_cell(0, 5, FACT.replace("ø", "o"), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def answer_or_title(body: dict) -> str:
    if not body.get("stream"):
        return "Ferry times"
    return default_responder(body)


@pytest.fixture
def knowledge_app(browser_ready, tmp_path):  # noqa: F811
    with OpenAICompatServer() as llm:
        llm.responder = answer_or_title
        running = RunningApp(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", llm.base_url)
        try:
            running.wait_ready()
            yield running, llm
        finally:
            running.stop()


async def test_a_long_pdf_is_indexed_and_the_answer_cites_it(knowledge_app, tmp_path):
    from playwright.async_api import async_playwright, expect

    app, llm = knowledge_app
    document = tmp_path / "harbour-log.pdf"
    long_pdf(document)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await (await browser.new_context(viewport={"width": 1280, "height": 1000})).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            await log_in(page, app)

            await page.locator("#upload-button-input").set_input_files(str(document))
            await expect(page.locator("#attachments")).to_contain_text("harbour-log.pdf")
            await send(page, "When does the Vardo ferry depart from quay 14?")
            answer = page.locator('[data-step-type="assistant_message"]').last
            await wait_for_text(answer, "Sources", timeout=90_000)
            await wait_for_text(answer, f"harbour-log.pdf, page {FACT_PAGE}")
            # The indexing step is in the conversation.
            await expect(page.get_by_text("Indexing harbour-log.pdf").first).to_be_visible()

            # The model was given the passage of that page, not the whole document.
            request = llm.chat_requests(stream=True)[-1]
            given = "\n".join(m["content"] for m in request["messages"])
            assert "quay 14 at 06:40" in given
            assert "Page 3, note 0" not in given

            # The source of that page opens with its passage.
            number = re.search(rf"Source (\d): harbour-log.pdf, page {FACT_PAGE}", await answer.inner_text(), re.I)
            assert number, await answer.inner_text()
            await answer.get_by_text(f"Source {number.group(1)}", exact=True).first.click()
            await wait_for_text(page.locator("body"), "quay 14 at 06:40")
        except Exception:
            shot = Path(tempfile.gettempdir()) / "e2e-knowledge-failure.png"
            await page.screenshot(path=str(shot), full_page=True)
            shutil.copyfile(app.log_path, shot.with_suffix(".log"))
            print(f"screenshot: {shot}\n--- app log (end) ---\n{app.log_text()}")
            raise
        finally:
            await browser.close()
