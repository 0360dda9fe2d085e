"""Document extraction on real files made in the tests: PDF (fpdf2), DOCX (python-docx), HTML,
Markdown and text; the guards (encrypted and broken PDFs, zip bombs, page caps); the process pool."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import time
import zipfile

import pytest

from knowledge import extract as extract_module
from knowledge import extract_pool as pool_module
from knowledge.extract import (
    DOCX_MIME,
    Document,
    ExtractionError,
    Section,
    extract,
    is_document,
)
from knowledge.extract_pool import extract_async
from tests.servers.pages import ARTICLE_FACT, ARTICLE_HTML, ARTICLE_TITLE, BOILERPLATE, make_pdf


def make_docx(*, with_table: bool = True) -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = "Harbour manual"
    document.add_paragraph("Introduction before any heading.")
    document.add_heading("Mooring", level=1)
    document.add_paragraph("Boats moor at the north quay after sunset.")
    document.add_heading("Fees", level=2)
    document.add_paragraph("Fees are charged per night.")
    if with_table:
        table = document.add_table(rows=2, cols=2)
        table.cell(0, 0).text = "Length"
        table.cell(0, 1).text = "Fee"
        table.cell(1, 0).text = "Under 10 m"
        table.cell(1, 1).text = "31 euros"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# ---- which uploads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        ("report.pdf", "application/pdf", True),
        ("report.pdf", None, True),
        ("notes.docx", DOCX_MIME, True),
        ("notes.docx", "application/octet-stream", True),
        ("page.html", "text/html", True),
        ("README.md", "text/markdown", True),
        ("README.md", None, True),
        ("todo.txt", "text/plain", True),
        ("data.csv", "text/csv", True),  # any text/* is readable as text
        ("photo.png", "image/png", False),
        ("report.pdf", "image/png", False),  # an explicit type wins over the name
        ("archive.zip", "application/zip", False),
        ("noext", None, False),
        ("old.doc", "application/msword", False),
    ],
)
def test_is_document(name, mime, expected):
    assert is_document(name, mime) is expected


# ---- text and Markdown ----------------------------------------------------------------------


def test_plain_text_utf8_and_bom():
    doc = extract("Première ligne\n\nSecond paragraph.".encode(), "notes.txt", "text/plain")
    assert doc.kind == "text" and doc.pages is None
    assert doc.title == "Première ligne"
    assert [s.location for s in doc.sections] == [""]
    assert "Second paragraph." in doc.text
    bom = extract(b"\xef\xbb\xbfhello there", "bom.txt", None)
    assert bom.text == "hello there"


def test_plain_text_latin1_fallback_and_binary_refused():
    doc = extract("Café crème, naïve façade.".encode("latin-1"), "old.txt", "text/plain")
    assert doc.text == "Café crème, naïve façade."
    with pytest.raises(ExtractionError, match=r"blob\.txt: not a text file"):
        extract(bytes(range(256)) * 10, "blob.txt", "text/plain")


def test_declared_charset_is_used():
    doc = extract("Grüße".encode("utf-16"), "greeting.txt", "text/plain; charset=utf-16")
    assert doc.text == "Grüße"


def test_markdown_sections_by_heading_ignoring_code_fences():
    text = "# Guide\n\nIntro text.\n\n## Install\n\nRun it:\n\n```sh\n# not a heading\nmake\n```\n\n## Use\n\nOpen the app.\n"
    doc = extract(text.encode(), "guide.md", "text/markdown")
    assert doc.kind == "markdown" and doc.title == "Guide"
    assert [s.location for s in doc.sections] == ["section Guide", "section Install", "section Use"]
    assert "# not a heading" in doc.sections[1].text
    assert doc.sections[2].text.startswith("Use")


def test_unsupported_type_is_refused_with_the_name():
    with pytest.raises(ExtractionError, match=r"photo\.png: unsupported file type image/png"):
        extract(b"\x89PNG\r\n\x1a\n", "photo.png", "image/png")


# ---- HTML -------------------------------------------------------------------------------------


def test_html_main_text_title_and_sections():
    doc = extract(ARTICLE_HTML.encode(), "article.html", "text/html; charset=utf-8")
    assert doc.kind == "html"
    assert doc.title == ARTICLE_TITLE
    assert ARTICLE_FACT in doc.text
    assert BOILERPLATE not in doc.text and "All rights reserved" not in doc.text
    locations = [s.location for s in doc.sections]
    assert "section Diet" in locations and "section Habitat" in locations
    diet = next(s for s in doc.sections if s.location == "section Diet")
    assert ARTICLE_FACT in diet.text


def test_html_header_charset_wins():
    html = (
        "<html><head><title>Zoë</title></head>"
        "<body><article><p>Crème brûlée is served on Fridays in the café downstairs.</p></article></body></html>"
    )
    doc = extract(html.encode("cp1252"), "menu.html", "text/html; charset=windows-1252")
    assert "Crème brûlée" in doc.text


def test_html_fallback_keeps_visible_text_by_heading():
    html = (
        "<html><head><title>Hours</title></head>"
        "<body><nav>Home About</nav><h1>Opening</h1><p>Mon 9-5</p><h2>Holidays</h2><p>Closed</p></body></html>"
    )
    doc = extract_module._html_soup(html, "hours.html", "")
    assert doc.title == "Hours"
    assert [(s.location, s.text) for s in doc.sections] == [
        ("section Opening", "Opening\n\nMon 9-5"),
        ("section Holidays", "Holidays\n\nClosed"),
    ]


# ---- PDF --------------------------------------------------------------------------------------


def test_pdf_text_per_page():
    doc = extract(make_pdf(3, fact_page=2, fact="The tide tables changed in 1987."), "tides.pdf", "application/pdf")
    assert doc.kind == "pdf" and doc.pages == 3 and not doc.truncated
    assert [s.location for s in doc.sections] == ["page 1", "page 2", "page 3"]
    assert "The tide tables changed in 1987." in doc.sections[1].text
    assert doc.title == "A document of 3 pages"  # from the PDF's metadata


def test_pdf_page_cap_is_reported():
    doc = extract(make_pdf(5), "five.pdf", "application/pdf", max_pages=2)
    assert doc.pages == 5 and doc.truncated
    assert [s.location for s in doc.sections] == ["page 1", "page 2"]
    assert doc.notes == ["only the first 2 of 5 pages were read"]


def test_encrypted_pdf_is_refused_and_owner_only_encryption_opens():
    from fpdf import FPDF

    def pdf(**passwords) -> bytes:
        out = FPDF()
        out.add_page()
        out.set_font("Helvetica")
        out.cell(text="Confidential figures")
        out.set_encryption(**passwords)
        return bytes(out.output())

    with pytest.raises(ExtractionError, match=r"^locked\.pdf: the PDF is encrypted"):
        extract(pdf(owner_password="owner", user_password="user"), "locked.pdf", "application/pdf")
    opened = extract(pdf(owner_password="owner"), "restricted.pdf", "application/pdf")
    assert "Confidential figures" in opened.text


@pytest.mark.parametrize("data", [b"%PDF-1.4 this is not really a pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog", b""])
def test_broken_pdf_is_a_clear_error(data):
    with pytest.raises(ExtractionError, match=r"^broken\.pdf: ") as caught:
        extract(data, "broken.pdf", "application/pdf")
    assert isinstance(caught.value, ValueError)


def test_pdf_without_text_says_so():
    from fpdf import FPDF

    out = FPDF()
    out.add_page()  # a blank page, as a scan without OCR looks to a text extractor
    with pytest.raises(ExtractionError, match="no extractable text"):
        extract(bytes(out.output()), "scan.pdf", "application/pdf")


def test_pdf_sniffed_without_type_or_extension():
    doc = extract(make_pdf(1), "download", "application/octet-stream")
    assert doc.kind == "pdf"


# ---- DOCX -------------------------------------------------------------------------------------


def test_docx_headings_make_sections_and_tables_are_read():
    doc = extract(make_docx(), "manual.docx", DOCX_MIME)
    assert doc.kind == "docx" and doc.title == "Harbour manual"
    assert [s.location for s in doc.sections] == ["", "section Mooring", "section Fees"]
    assert doc.sections[0].text == "Introduction before any heading."
    fees = doc.sections[2].text
    assert "Fees are charged per night." in fees
    assert "Length | Fee" in fees and "Under 10 m | 31 euros" in fees


def test_docx_zip_bomb_is_refused_before_inflating():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w") as member:
            zeros = b"\0" * (1 << 20)
            for _ in range(60):  # 60 MB that compress to about 60 KB
                member.write(zeros)
    bomb = out.getvalue()
    assert len(bomb) < 1_000_000
    with pytest.raises(ExtractionError, match=r"^bomb\.docx: the document unpacks to 63 MB, more than the 52 MB allowed"):
        extract(bomb, "bomb.docx", DOCX_MIME)
    # The cap is a parameter: a real document over a tiny cap is refused the same way.
    with pytest.raises(ExtractionError, match="unpacks to"):
        extract(make_docx(), "manual.docx", DOCX_MIME, max_unzipped_bytes=1000)


def test_not_a_docx():
    with pytest.raises(ExtractionError, match=r"^fake\.docx: not a Word document"):
        extract(b"PK\x03\x04 not a zip at all", "fake.docx", DOCX_MIME)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ExtractionError, match="no word/document.xml"):
        extract(out.getvalue(), "other.docx", DOCX_MIME)


# ---- off the event loop -----------------------------------------------------------------------


def test_results_and_errors_pickle():
    doc = Document(title="t", sections=[Section("a", "page 1")], kind="pdf", pages=1, truncated=True, notes=["n"])
    assert pickle.loads(pickle.dumps(doc)) == doc
    error = pickle.loads(pickle.dumps(ExtractionError("x.pdf: broken")))
    assert isinstance(error, ExtractionError) and str(error) == "x.pdf: broken"


async def test_extract_async_runs_in_a_worker_process():
    pool_module.close()
    try:
        data = make_pdf(30, fact_page=17, fact="Seventeen is where the fact hides.")
        doc = await extract_async(data, "long.pdf", "application/pdf")
        assert doc == extract(data, "long.pdf", "application/pdf")
        pool = pool_module._pool
        assert pool is not None, "the process pool did not start"
        pids = {process.pid for process in pool._processes.values()}  # type: ignore[attr-defined]
        assert pids and os.getpid() not in pids
        with pytest.raises(ExtractionError, match=r"^bad\.pdf: not a readable PDF"):
            await extract_async(b"%PDF-1.4 nope", "bad.pdf", "application/pdf")
    finally:
        pool_module.close()
    assert pool_module._pool is None


async def test_a_document_read_for_too_long_is_refused_and_the_worker_goes_on():
    """The worker's own timer interrupts the parser: a clear refusal, the same worker serves on."""
    pool_module.close()
    try:
        data = make_pdf(300)
        with pytest.raises(ExtractionError, match=r"^slow\.pdf: reading it took longer than 0\.01 s$"):
            await extract_async(data, "slow.pdf", "application/pdf", time_limit=0.01)
        pool = pool_module._pool
        assert pool is not None
        pids = {process.pid for process in pool._processes.values()}  # type: ignore[attr-defined]
        doc = await extract_async(b"# Title\n\ntext", "a.md", "text/markdown", time_limit=30)
        assert doc.title == "Title"
        assert pool_module._pool is pool and {p.pid for p in pool._processes.values()} == pids  # type: ignore[attr-defined]
    finally:
        pool_module.close()


async def test_documents_waiting_their_turn_are_not_taken_for_stuck(monkeypatch, caplog):
    """With one worker, documents queue: the app's patience counts the rounds queued ahead
    (each at most the time limit), so the last of many is read, not killed for waiting."""
    pool_module.close()
    monkeypatch.setattr(pool_module, "KILL_GRACE_SECONDS", 0.1)
    try:
        await extract_async(b"# warm\n", "warm.md", "text/markdown")  # the worker is started
        pdf = make_pdf(600)
        queued = [extract_async(pdf, f"d{i}.pdf", "application/pdf", time_limit=2) for i in range(16)]
        last = extract_async(b"# Last\n\ntext", "last.md", "text/markdown", time_limit=2)
        *documents, final = await asyncio.gather(*queued, last)
        assert len(documents) == 16 and final.title == "Last"
        assert "its worker was killed" not in caplog.text
        assert pool_module._in_flight == 0
    finally:
        pool_module.close()


async def test_a_worker_that_ignores_its_timer_is_killed(monkeypatch, caplog):
    """Should the worker not stop (stuck in C code), the app stops waiting, kills the worker
    and refuses the document; the next document gets a new pool. Here the app's wait is made
    shorter than the worker's timer, as a worker that never answers its timer looks."""
    pool_module.close()
    monkeypatch.setattr(pool_module, "KILL_GRACE_SECONDS", -29.9)
    try:
        await extract_async(b"# warm\n", "warm.md", "text/markdown")  # the worker is started
        pool = pool_module._pool
        assert pool is not None
        workers = list(pool._processes.values())  # type: ignore[attr-defined]
        with pytest.raises(ExtractionError, match=r"^big\.pdf: reading it took longer than 30 s$"):
            await extract_async(make_pdf(300), "big.pdf", "application/pdf", time_limit=30)
        assert pool_module._pool is None
        # The executor's own thread may reap a killed worker first; is_alive() then reads
        # its exit code a moment later, so it is polled rather than read once.
        deadline = time.monotonic() + 20
        while any(worker.is_alive() for worker in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(worker.is_alive() for worker in workers)
        assert "did not stop at its 30 s limit: its worker was killed" in caplog.text
        monkeypatch.setattr(pool_module, "KILL_GRACE_SECONDS", 15.0)
        doc = await extract_async(b"# Again\n\ntext", "b.md", "text/markdown")
        assert doc.title == "Again" and pool_module._pool not in (None, pool)
    finally:
        pool_module.close()


async def test_extract_async_falls_back_to_a_thread_when_no_pool_can_start(monkeypatch):
    pool_module.close()

    def no_processes(*args, **kwargs):
        raise OSError("no processes in this sandbox")

    monkeypatch.setattr(pool_module.concurrent.futures, "ProcessPoolExecutor", no_processes)
    monkeypatch.setattr(pool_module, "_pool_failed", False)
    doc = await extract_async(b"# Title\n\ntext", "a.md", "text/markdown")
    assert doc.title == "Title" and pool_module._pool is None


WORKER_SCRIPT = """
import asyncio, os, sys
sys.path.insert(0, {root!r})
if __name__ == "__mp_main__":  # the worker re-ran this script
    with open(os.environ["MARK_FILE"], "a") as mark:
        mark.write("main script re-run in a worker\\n")
if __name__ == "__main__":
    from knowledge import extract_pool as extract

    async def main():
        document = await extract.extract_async(b"# Title\\n\\ntext", "a.md", "text/markdown")
        pids = [p.pid for p in extract._pool._processes.values()]
        print(document.title, extract._pool_failed, os.getpid() not in pids)
        extract.close()

    asyncio.run(main())
"""


def test_workers_do_not_rerun_the_main_script(tmp_path):
    """Started from a script (as `chainlit run` is), the worker imports only the extractor."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "app_main.py"
    script.write_text(WORKER_SCRIPT.format(root=str(Path(__file__).resolve().parents[2])))
    mark = tmp_path / "mark.txt"
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env={**os.environ, "MARK_FILE": str(mark)}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Title", "False", "True"]
    assert not mark.exists(), mark.read_text()
