"""Readable text out of uploaded documents and fetched pages: PDF, DOCX, HTML, Markdown, text.

`extract(data, name, mime)` returns a `Document`: its title, its sections (text plus where it
came from — `"page 3"`, `"section Results"`, `""`), the kind and the page count. Everything the
caller may show a user about a failure is an `ExtractionError` (a `ValueError`) naming the file
and the reason.

Extraction is CPU-bound pure Python (pypdf, lxml trees, python-docx), so the app runs it in a
process pool (`knowledge/extract_pool.py`): a 300-page PDF then holds a worker's GIL, not the
event loop's. Results are plain dataclasses, so they cross the process boundary by pickling.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import zipfile
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger("chainlit").getChild("Knowledge")

Kind = Literal["pdf", "docx", "html", "markdown", "text"]

DEFAULT_MAX_PAGES = 2_000
#: A DOCX is a zip: its declared uncompressed size is capped before anything is inflated
#: (a few kilobytes can declare gigabytes). Python's zipfile stops inflating a member at its
#: declared size, so the declared total is a real bound.
DEFAULT_MAX_UNZIPPED_BYTES = 50 * 1024 * 1024

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_MIME_KINDS: dict[str, Kind] = {
    "application/pdf": "pdf",
    DOCX_MIME: "docx",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
}
_EXTENSION_KINDS: dict[str, Kind] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
}
#: MIME types that say nothing about the content: the file name decides instead.
_VAGUE_MIMES = {"", "application/octet-stream", "binary/octet-stream", "application/zip"}


class ExtractionError(ValueError):
    """The file cannot be read as a document; the message names the file and why."""


@dataclass
class Section:
    text: str
    location: str = ""  # "page 3", "section <heading>", "" when the format has none


@dataclass
class Document:
    title: str
    sections: list[Section]
    kind: Kind
    pages: int | None = None
    truncated: bool = False  # pages beyond the cap were not read
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections if s.text)


def _mime_base(mime: str | None) -> str:
    return (mime or "").split(";", 1)[0].strip().lower()


def _mime_charset(mime: str | None) -> str | None:
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", mime or "", re.IGNORECASE)
    if not match:
        return None
    try:
        return codecs.lookup(match.group(1)).name
    except LookupError:
        return None


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > name.rfind("/") and dot != -1 else ""


def kind_of(name: str, mime: str | None) -> Kind | None:
    """The document kind by MIME type, else by file extension; None when neither is known."""
    base = _mime_base(mime)
    if base in _MIME_KINDS:
        return _MIME_KINDS[base]
    if base and base not in _VAGUE_MIMES and not base.startswith("text/"):
        return None  # an explicit type we do not read (image/png, application/zip, ...)
    return _EXTENSION_KINDS.get(_extension(name), "text" if base.startswith("text/") else None)


def is_document(name: str, mime: str | None) -> bool:
    """Whether an upload is one we can ingest (PDF, DOCX, HTML, Markdown, plain text)."""
    return kind_of(name, mime) is not None


def extract(
    data: bytes,
    name: str,
    mime: str | None = None,
    *,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
) -> Document:
    """Extract `data` (a file called `name`, of type `mime`) into a `Document`."""
    kind = kind_of(name, mime)
    if kind is None:
        # A vague type and an unknown extension: the bytes themselves may still say.
        if data.startswith(b"%PDF-"):
            kind = "pdf"
        elif _mime_base(mime) in _VAGUE_MIMES and not _looks_binary(data):
            kind = "text"
        else:
            raise ExtractionError(f"{name}: unsupported file type {_mime_base(mime) or _extension(name) or 'unknown'}")
    if kind == "pdf":
        return _pdf(data, name, max_pages)
    if kind == "docx":
        return _docx(data, name, max_unzipped_bytes)
    if kind == "html":
        return _html(data, name, _mime_charset(mime))
    text = _decode_text(data, name, _mime_charset(mime))
    if kind == "markdown":
        return _markdown(text, name)
    return Document(title=_first_line(text) or name, sections=[Section(text.strip())] if text.strip() else [], kind="text")


# ---- text and Markdown -------------------------------------------------------------------


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return controls > len(sample) // 100


def _decode_text(data: bytes, name: str, charset: str | None) -> str:
    if charset:
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            pass  # a wrong declared charset: try what the bytes say below
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # latin-1 decodes any byte string, so it is only a fallback for bytes that look like text.
    if _looks_binary(data):
        raise ExtractionError(f"{name}: not a text file (binary content)")
    return data.decode("latin-1")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _markdown_sections(text: str) -> tuple[list[Section], str]:
    """Sections by ATX heading (`#`..`######`), ignoring `#` lines inside code fences."""
    sections: list[Section] = []
    heading = ""
    first_heading = ""
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(body, f"section {heading}" if heading else ""))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _ATX_HEADING.match(line)
        if match:
            flush()
            heading = match.group(2).strip()
            first_heading = first_heading or heading
            lines.append(heading)  # the heading's words are searchable with its section
        else:
            lines.append(line)
    flush()
    return sections, first_heading


def _markdown(text: str, name: str) -> Document:
    sections, first_heading = _markdown_sections(text)
    return Document(title=first_heading or _first_line(text) or name, sections=sections, kind="markdown")


# ---- HTML ---------------------------------------------------------------------------------


def _html(data: bytes, name: str, charset: str | None) -> Document:
    import trafilatura

    # Bytes go to trafilatura as they are (it reads <meta charset>); a charset from the
    # HTTP header wins, so decode first when there is one.
    source: bytes | str = data
    if charset:
        source = data.decode(charset, errors="replace")
    markdown = trafilatura.extract(source, output_format="markdown", include_comments=False, include_tables=True)
    metadata = trafilatura.extract_metadata(source)
    title = (metadata.title if metadata else None) or ""
    if markdown and markdown.strip():
        sections, first_heading = _markdown_sections(markdown)
        return Document(title=title or first_heading or name, sections=sections, kind="html")
    return _html_soup(source, name, title)


def _html_soup(source: bytes | str, name: str, title: str) -> Document:
    """Every visible text of the page, sectioned by headings: trafilatura found no main text."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(source, "lxml")
    if not title and soup.title and soup.title.string:
        title = soup.title.string.strip()
    for tag in soup(["script", "style", "noscript", "template", "nav", "footer", "header", "aside"]):
        tag.decompose()
    body = soup.body or soup
    sections: list[Section] = []
    heading = ""
    parts: list[str] = []
    for node in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "td", "th", "blockquote"]):
        if node.find_parent(["p", "li", "pre", "td", "th", "blockquote"]):
            continue  # its text is part of the enclosing block's
        text = " ".join(node.get_text(" ").split())
        if not text:
            continue
        if node.name in ("h1", "h2", "h3", "h4", "h5", "h6"):
            if parts:
                sections.append(Section("\n\n".join(parts), f"section {heading}" if heading else ""))
            heading, parts = text, [text]
        else:
            parts.append(text)
    if parts:
        sections.append(Section("\n\n".join(parts), f"section {heading}" if heading else ""))
    if not sections:
        loose = " ".join(body.get_text(" ").split())
        if loose:
            sections.append(Section(loose))
    return Document(title=title or name, sections=sections, kind="html")


# ---- PDF ----------------------------------------------------------------------------------


def _pdf(data: bytes, name: str, max_pages: int) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are "encrypted" with an empty user password only to restrict
            # printing or copying; those open. Others need a password we do not have.
            try:
                opened = reader.decrypt("")
            except (PyPdfError, NotImplementedError) as exc:
                raise ExtractionError(f"{name}: the PDF is encrypted ({exc})") from exc
            if not opened:
                raise ExtractionError(f"{name}: the PDF is encrypted with a password")
        total = len(reader.pages)
        sections: list[Section] = []
        for number in range(1, min(total, max_pages) + 1):
            text = (reader.pages[number - 1].extract_text() or "").strip()
            if text:
                sections.append(Section(text, f"page {number}"))
        title = ""
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title).strip()
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OSError) as exc:
        # pypdf raises many kinds on a broken file; each means "not a readable PDF".
        raise ExtractionError(f"{name}: not a readable PDF ({type(exc).__name__}: {exc})") from exc
    if not sections:
        raise ExtractionError(f"{name}: the PDF has no extractable text (scanned images?)")
    document = Document(title=title or _first_line(sections[0].text) or name, sections=sections, kind="pdf", pages=total)
    if total > max_pages:
        document.truncated = True
        document.notes.append(f"only the first {max_pages} of {total} pages were read")
    return document


# ---- DOCX ---------------------------------------------------------------------------------


def _docx(data: bytes, name: str, max_unzipped_bytes: int) -> Document:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            declared = sum(info.file_size for info in archive.infolist())
            if "word/document.xml" not in archive.namelist():
                raise ExtractionError(f"{name}: not a Word document (no word/document.xml)")
    except zipfile.BadZipFile as exc:
        raise ExtractionError(f"{name}: not a Word document ({exc})") from exc
    if declared > max_unzipped_bytes:
        raise ExtractionError(
            f"{name}: the document unpacks to {declared / 1e6:.0f} MB, more than the {max_unzipped_bytes / 1e6:.0f} MB allowed"
        )

    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ExtractionError(f"{name}: not a readable Word document ({exc})") from exc

    sections: list[Section] = []
    heading = ""
    title = (document.core_properties.title or "").strip()
    parts: list[str] = []

    def flush() -> None:
        body = "\n\n".join(parts).strip()
        if body:
            sections.append(Section(body, f"section {heading}" if heading else ""))
        parts.clear()

    # Paragraphs and tables in document order (document.paragraphs would skip the tables).
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            paragraph = Paragraph(block, document)
            text = paragraph.text.strip()
            if not text:
                continue
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
            if style == "Title":
                title = title or text
                parts.append(text)
            elif style.startswith("Heading"):
                flush()
                heading = text
                parts.append(text)
            else:
                parts.append(text)
        elif tag == "tbl":
            parts.extend(_table_rows(Table(block, document)))
    flush()
    return Document(title=title or (sections[0].text.splitlines()[0][:200] if sections else name), sections=sections, kind="docx")


def _table_rows(table) -> list[str]:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            # A merged cell is returned once per grid column it spans.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return rows
