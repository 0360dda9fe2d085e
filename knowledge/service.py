"""Knowledge in a chat turn: the documents a message brings, the pages it links, the passages
retrieved for its question, and the sources shown with the answer.

One `KnowledgeService` per process, used by `chat.service.ChatService` for the browser and
the HTTP API alike (it runs inside a Chainlit context: a socket or the API's HTTP session).
What the user sees is stored with the thread like any message: a "Reading links" step lists
each page read (title, address, size) or refused (and why), with the page text attached; an
"Indexing <file>" step shows a long document's progress; the answer lists its sources, each
an element the user can open. The index is also a derived store of the data layer
(`datalayers/derived.py`): deleting a thread, message or attachment removes its chunks.

Chunks are owned by the user's identifier (not the database's user id), so they stay the
user's after the conversations are copied to another backend.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import chainlit as cl

from chat.files import describe_attachment
from chat.history import estimate_tokens
from settings import MissingExtra

from .config import KnowledgeConfig, load_knowledge_config
from .context import PageText, Passage
from .index import Chunk, KnowledgeIndex, Scope, logger

#: Modules the `knowledge` extra installs (document extraction, page reading).
EXTRACTION_MODULES = ("pypdf", "docx", "trafilatura", "bs4", "lxml")
#: After the index failed to start, how long turns go on without it before the next try.
RESTART_SECONDS = 30
#: How long a delete is remembered for documents whose indexing was under way.
FORGOTTEN_SECONDS = 600
#: Embedding and indexing work per round (and how often the progress step is updated).
BATCH = 64
PROGRESS_EVERY_SECONDS = 0.5
#: Text of a page given to the model whole is cut by the context builder; this caps what is
#: kept in memory per page before that.
MAX_PAGE_CHARS = 400_000


@dataclass(frozen=True)
class Attachment:
    """A file that came with a message (a browser upload or an API file)."""

    element_id: str
    name: str
    mime: str | None
    data: bytes | None


@dataclass
class Prepared:
    """What a turn adds to the model's request beyond the user's text."""

    blocks: list[str] = field(default_factory=list)  # attachments given whole, or notes about them
    passages: list[Passage] = field(default_factory=list)
    pages: list[PageText] = field(default_factory=list)


class KnowledgeService:
    name = "knowledge index"  # as a derived store of the data layer (journaled retries use it)

    def __init__(self, config: KnowledgeConfig, index: KnowledgeIndex | None, embedder: Any = None,
                 max_file_chars: int = 20000):
        self.config = config
        self.index = index
        self.embedder = embedder
        self.max_file_chars = max_file_chars
        self.embedding_problem: str | None = None
        self._links: Any = None
        self._started = False
        self._failed_at = -float(RESTART_SECONDS)
        self._start_lock = asyncio.Lock()
        self.problem: str | None = None  # why the index is unavailable now
        # Deletes of the last minutes, for documents still being indexed when they happened.
        self._forgotten: list[tuple[float, dict[str, str]]] = []

    @classmethod
    def from_settings(cls, settings: Any, max_file_chars: int, env: Mapping[str, str] | None = None
                      ) -> KnowledgeService | None:
        """The service the settings describe; None when the `knowledge` extra is missing and
        KNOWLEDGE_URL was not asked for explicitly (files are then given whole, as before)."""
        env = os.environ if env is None else env
        config = load_knowledge_config(settings.data_dir, env)
        missing = [m for m in EXTRACTION_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            if env.get("KNOWLEDGE_URL"):
                raise MissingExtra(f"KNOWLEDGE_URL needs {', '.join(missing)}: pip install 'chainlit-persist[knowledge]'")
            logger.warning("the knowledge extra is not installed (%s missing): links are not read and documents "
                           "are not indexed", ", ".join(missing))
            return None
        index = settings.build_knowledge_index()
        embedder = None
        if index is not None:
            from .embeddings import build_embedder

            embedder = build_embedder(env)
        return cls(config, index, embedder, max_file_chars=max_file_chars)

    # ---- life cycle ----------------------------------------------------------------------
    async def ensure_started(self) -> bool:
        """Start once; after a failure (the index server is down) try again at most every
        RESTART_SECONDS. False while the index is unavailable (turns go on without it)."""
        if self._started:
            return True
        if time.monotonic() - self._failed_at < RESTART_SECONDS:
            return False
        async with self._start_lock:
            if not self._started:
                try:
                    await self.start()
                except Exception as exc:
                    self._failed_at = time.monotonic()
                    self.problem = f"{type(exc).__name__}: {exc}"
                    logger.error("the knowledge index %s could not be started (%s); retrying in %d s",
                                 type(self.index).__name__, self.problem, RESTART_SECONDS)
                    return False
        return True

    async def start(self) -> None:
        dimensions = None
        if self.embedder is not None:
            from .embeddings import EmbeddingError

            try:
                await self.embedder.start()
                dimensions = self.embedder.dimensions
            except EmbeddingError as exc:
                self.embedding_problem = str(exc)
                logger.warning("embedding model %s unavailable (%s): documents are searched by their words only",
                               getattr(self.embedder, "label", "?"), exc)
                self.embedder = None
        if self.index is not None:
            await self.index.start(dimensions)
        self._started, self.problem = True, None
        logger.info("knowledge: %s", self.mode)

    async def close(self) -> None:
        if self.embedder is not None:
            await self.embedder.aclose()
        if self.index is not None:
            await self.index.close()
        from . import extract_pool

        extract_pool.close()

    @property
    def mode(self) -> str:
        """How documents are searched, in words a user understands (shown in the UI)."""
        if self.index is None:
            return "documents are not indexed (KNOWLEDGE_URL is off): files are given to the model whole, as far as they fit"
        if self.problem:
            return f"document search is unavailable now ({self.problem})"
        if self.index.vector_search and self.embedder is not None:
            return f"documents are searched by words and by meaning ({self.embedder.label})"
        reason = self.embedding_problem or "no embedding model is configured"
        note = self.index.status().note
        return f"documents are searched by their words only ({note or reason})"

    # ---- the derived store ---------------------------------------------------------------
    async def forget(self, *, thread_id: str | None = None, step_id: str | None = None,
                     element_id: str | None = None) -> None:
        now = time.monotonic()
        keys = {k: v for k, v in (("thread_id", thread_id), ("step_id", step_id), ("element_id", element_id)) if v}
        self._forgotten = [(at, k) for at, k in self._forgotten if now - at < FORGOTTEN_SECONDS] + [(now, keys)]
        if self.index is not None and not await self.ensure_started():
            # The data layer journals the delete and tells us again until the index is up.
            raise ConnectionError(f"the knowledge index is unavailable ({self.problem})")
        if self.index is not None:
            await self.index.delete(thread_id=thread_id, step_id=step_id, document_id=element_id)

    async def forget_user(self, identifier: str) -> int:
        """Every chunk of one user (erasure); the number removed."""
        if self.index is None:
            return 0
        if not await self.ensure_started():
            raise ConnectionError(f"the knowledge index is unavailable ({self.problem})")
        return await self.index.delete(user_id=identifier)

    # ---- a turn --------------------------------------------------------------------------
    async def prepare(self, text: str, attachments: Sequence[Attachment], *, user: str, thread_id: str,
                      message_id: str, read_links: bool, all_threads: bool) -> Prepared:
        """Read the message's documents and links, then retrieve passages for its question."""
        prepared = Prepared()
        indexing = self.index is not None and await self.ensure_started()
        if self.index is not None and not indexing and attachments:
            await _notice(f"Document search is unavailable now ({self.problem}); files are given to the model "
                          "whole, as far as they fit.")
        # Pages are fetched while the documents are read.
        links = asyncio.create_task(self._read_links(text, user, thread_id, message_id)) if read_links else None
        try:
            for attachment in attachments:
                prepared.blocks.append(await self._attachment(attachment, user, thread_id, message_id, indexing))
        except BaseException:
            if links is not None:
                links.cancel()
            raise
        if links is not None:
            prepared.pages = await links
        if indexing:
            prepared.passages = await self._retrieve(text, user, thread_id, all_threads)
        return prepared

    def is_document(self, name: str, mime: str | None) -> bool:
        from . import extract

        return extract.is_document(name, mime)

    async def stored_block(self, element_id: str, name: str, mime: str | None,
                           read: Callable[[], Awaitable[bytes | None]]) -> str:
        """What the model is given for a stored attachment when a conversation resumes: a
        note for an indexed document (its passages are retrieved per question; the file is
        not read again), else the whole text of a small document, or the file's description."""
        from . import extract

        if self.index is not None and self.is_document(name, mime) and await self.index.count(document_id=element_id):
            return f"[Attached document: {name}. It is indexed: the passages relevant to each question are given as sources.]"
        data = await read()
        if data is None or not self.is_document(name, mime):
            return describe_attachment(name, mime, data, self.max_file_chars)
        try:
            document = await self._extract(data, name, mime)
        except extract.ExtractionError as exc:
            return f"[Attached file: {name}; it could not be read: {exc}]"
        return _whole(name, _document_text(document), self.max_file_chars)

    async def cite(self, answer: cl.Message, passages: Sequence[Passage], included: Sequence[str] | None) -> str:
        """Show the passages the model was given as the answer's sources: a line naming each
        and an element with its text (Chainlit links an element whose name is in the text).
        Returns the text added to the answer ("" when none)."""
        given = [p for p in passages if included is None or p.label in included]
        if not given or getattr(answer, "is_error", False):
            return ""
        elements: list[cl.Element] = []
        lines = []
        for number, passage in enumerate(given, start=1):
            name = f"Source {number}"
            where = f"{passage.source}, {passage.location}" if passage.location else passage.source
            lines.append(f"{name}: {where}")
            elements.append(cl.Text(name=name, content=f"{where}\n\n{passage.text}", display="side"))
        footer = "\n\n**Sources** — " + "; ".join(lines)
        answer.content = f"{answer.content}{footer}"
        answer.elements = [*(answer.elements or []), *elements]
        await answer.update()
        return footer

    # ---- documents -----------------------------------------------------------------------
    async def _attachment(self, attachment: Attachment, user: str, thread_id: str, message_id: str,
                          indexing: bool) -> str:
        from . import extract

        name, mime, data = attachment.name or "file", attachment.mime, attachment.data
        if data is None or not extract.is_document(name, mime):
            return describe_attachment(name, mime, data, self.max_file_chars)
        try:
            document = await self._extract(data, name, mime)
        except extract.ExtractionError as exc:
            logger.warning("document %s of thread %s could not be read: %s", name, thread_id, exc)
            await _notice(f"**{name}** could not be read: {exc}")
            return f"[Attached file: {name}; it could not be read: {exc}]"
        text = _document_text(document)
        if not indexing or estimate_tokens(text) <= self.config.whole_document_tokens:
            return _whole(name, text, self.max_file_chars)
        await self._ingest(document, attachment, user, thread_id, message_id)
        return _indexed_note(name, document)

    async def _ingest(self, document: Any, attachment: Attachment, user: str, thread_id: str,
                      message_id: str) -> None:
        """Chunk, embed and index a document with its progress shown in a step. The CPU work
        runs in a process (extraction) and in threads (the model, the index), so other users'
        turns go on meanwhile; this user's answer waits for it, since it is about the file."""
        from .chunking import split

        name = attachment.name
        pieces = split(document, target_tokens=self.config.chunk_tokens, overlap_tokens=self.config.chunk_overlap_tokens)
        chunks = [Chunk(id=f"{attachment.element_id}:{p.ordinal}", user_id=user, thread_id=thread_id,
                        document_id=attachment.element_id, ordinal=p.ordinal, text=p.text, source=name,
                        location=p.location, step_id=message_id, kind="document") for p in pieces]
        pages = f"{document.pages} pages, " if getattr(document, "pages", None) else ""
        started = time.monotonic()
        async with cl.Step(name=f"Indexing {name}", type="tool", show_input=False) as step:
            await self._index_chunks(chunks, step, f"{name}: {pages}")
            step.output = f"{name}: {pages}{len(chunks)} passages indexed; {self.mode}."
        await self._drop_if_forgotten(started, thread_id, message_id, attachment.element_id)

    async def _index_chunks(self, chunks: list[Chunk], step: cl.Step | None, label: str) -> None:
        assert self.index is not None
        from .embeddings import EmbeddingError

        last = 0.0
        for start in range(0, len(chunks), BATCH):
            batch = chunks[start:start + BATCH]
            vectors = None
            if self.embedder is not None and self.index.vector_search:
                try:
                    vectors = await self.embedder.embed([c.text for c in batch])
                except EmbeddingError as exc:
                    # Indexed for word search now; the passages stay findable by their words.
                    logger.warning("embedding %d passages of %s failed (%s): indexed for word search only",
                                   len(batch), batch[0].source, exc)
            await self.index.add(batch, vectors)
            done = start + len(batch)
            if step is not None and time.monotonic() - last > PROGRESS_EVERY_SECONDS and done < len(chunks):
                last = time.monotonic()
                step.output = f"{label}{done} of {len(chunks)} passages indexed ({100 * done // len(chunks)} %)…"
                await step.update()

    def _forgotten_since(self, started: float, thread_id: str, step_id: str, element_id: str) -> bool:
        """Was this document's attachment, message or thread deleted after `started`?"""
        wanted = {"thread_id": thread_id, "step_id": step_id, "element_id": element_id}
        return any(at >= started and any(wanted.get(k) == v for k, v in keys.items())
                   for at, keys in self._forgotten)

    async def _drop_if_forgotten(self, started: float, thread_id: str, message_id: str, element_id: str) -> None:
        """The attachment (or its message, or thread) may have been deleted while it was
        indexed, when its delete found no chunks yet: then remove what was just added."""
        if self.index is not None and self._forgotten_since(started, thread_id, message_id, element_id):
            removed = await self.index.delete(thread_id=thread_id, document_id=element_id)
            logger.info("attachment %s of thread %s was deleted while it was indexed; removed its %d chunks",
                        element_id, thread_id, removed)

    async def _retrieve(self, question: str, user: str, thread_id: str, all_threads: bool) -> list[Passage]:
        if self.index is None or not question.strip():
            return []
        scope = Scope(user_id=user, thread_id=None if all_threads else thread_id)
        if not await self.index.count(user_id=user, thread_id=scope.thread_id):
            return []  # nothing indexed here: no embedding call for the question
        vector = None
        if self.embedder is not None and self.index.vector_search:
            from .embeddings import EmbeddingError

            try:
                vector = (await self.embedder.embed([question]))[0]
            except EmbeddingError as exc:
                logger.warning("embedding the question of thread %s failed (%s): searching by words only", thread_id, exc)
        hits = await self.index.search(scope, question, vector, k=self.config.top_k)
        return [Passage(label=f"[{n}]", source=h.chunk.source, location=h.chunk.location, text=h.chunk.text,
                        chunk_id=h.chunk.id) for n, h in enumerate(hits, start=1)]

    async def _extract(self, data: bytes, name: str, mime: str | None) -> Any:
        from . import extract_pool

        return await extract_pool.extract_async(
            data, name, mime, max_pages=self.config.max_pages, max_workers=self.config.extract_workers,
            time_limit=self.config.extract_seconds)

    # ---- links ---------------------------------------------------------------------------
    def _reader(self) -> Any:
        if self._links is None:
            from .links import LinkPolicy, LinkReader

            self._links = LinkReader(LinkPolicy(
                allow_private=self.config.links_allow_private, allowed_hosts=self.config.links_allowed_hosts,
                max_links=self.config.links_max, max_bytes=self.config.links_max_bytes,
                timeout_seconds=self.config.links_timeout_seconds), self._extract)
        return self._links

    async def _read_links(self, text: str, user: str, thread_id: str, message_id: str) -> list[PageText]:
        from .links import find_urls

        # One more than the limit: the reader reports the links it did not read.
        urls = find_urls(text, limit=self.config.links_max + 20)
        if not urls or self.config.links_max == 0:
            return []
        async with cl.Step(name="Reading links", type="tool", show_input=False) as step:
            results = await self._reader().read_all(urls)
            lines: list[str] = []
            pages: list[tuple[Any, cl.Text, str, str]] = []
            elements: list[cl.Element] = []
            for result in results:
                if not result.ok:
                    lines.append(f"- ✗ {_md_url(result.url)} — {result.error}")
                    continue
                title = (result.title or result.final_url).strip()[:120]
                name = f"Page {len(pages) + 1}"
                size = _size(result.size_bytes)
                lines.append(f"- ✓ {name}: [{_md_escape(title)}]({_md_url(result.final_url)}) — {size}")
                page_text = result.text[:MAX_PAGE_CHARS]
                element = cl.Text(name=name, content=f"{title}\n{result.final_url}\n\n{page_text}", display="side")
                elements.append(element)
                pages.append((result, element, page_text, title))
            step.output = "\n".join(lines)
            step.elements = elements
        if self.index is not None and self._started:
            for result, element, page_text, _title in pages:
                await self._index_page(result, element.id, page_text, user, thread_id, message_id)
        return [PageText(title=title, url=result.final_url, text=page_text) for result, _, page_text, title in pages]

    async def _index_page(self, result: Any, element_id: str, text: str, user: str, thread_id: str,
                          message_id: str) -> None:
        """Pages are indexed too, so later questions in the thread (and a resumed one) find them."""
        from .chunking import split
        from .extract import Document, Section

        document = getattr(result, "document", None) or Document(title=result.title or result.final_url,
                                                                 sections=[Section(text=text, location="")],
                                                                 kind="html", pages=None)
        pieces = split(document, target_tokens=self.config.chunk_tokens, overlap_tokens=self.config.chunk_overlap_tokens)
        chunks = [Chunk(id=f"{element_id}:{p.ordinal}", user_id=user, thread_id=thread_id, document_id=element_id,
                        ordinal=p.ordinal, text=p.text, source=result.final_url, location=p.location,
                        step_id=message_id, kind="page") for p in pieces]
        await self._index_chunks(chunks, None, "")


def _document_text(document: Any) -> str:
    parts = []
    for section in document.sections:
        parts.append(f"[{section.location}]\n{section.text}" if section.location else section.text)
    return "\n\n".join(parts)


def _whole(name: str, text: str, max_chars: int) -> str:
    note = ""
    if len(text) > max_chars:
        text, note = text[:max_chars], f"\n[... document truncated to its first {max_chars} characters ...]"
    return f"--- Attached file: {name} ---\n{text}{note}\n--- End of {name} ---"


def _indexed_note(name: str, document: Any) -> str:
    pages = f", {document.pages} pages" if getattr(document, "pages", None) else ""
    return f"[Attached document: {name}{pages}. It is indexed: the passages relevant to each question are given as sources.]"


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def _md_escape(text: str) -> str:
    return text.replace("[", "(").replace("]", ")")


#: Characters that would end a Markdown link target or open another link: a page (or a
#: redirect it chose) could otherwise append a second, deceptive link to the line.
_MD_URL_UNSAFE = {c: f"%{ord(c):02X}" for c in " ()<>[]`*_\\"}


def _md_url(url: str) -> str:
    return "".join(_MD_URL_UNSAFE.get(c, c) for c in url)


async def _notice(text: str) -> None:
    """Tell the user about a file problem in the chat (not stored, like the saving notice)."""
    try:
        await cl.context.emitter.send_toast(text, "warning")
    except Exception as exc:  # no socket (an API call): the block given to the model says it
        logger.debug("no toast for %r: %s", text, exc)
