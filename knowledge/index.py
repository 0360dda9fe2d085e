"""The knowledge index contract: chunks of a user's documents and pages, found by words and
(when an embedding model is configured) by meaning.

Public methods here do the shared work — argument checks, the mandatory owner filter, rank
fusion — and backends implement the small `_` methods (one module per technology:
`index_sqlite.py`, `index_postgres.py`, `index_qdrant.py`). Every read names the user whose
chunks it may return: there is no way to search across users.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger("chainlit").getChild("Knowledge")

#: Reciprocal-rank-fusion constant: a hit's fused score is the sum of 1 / (RRF_K + rank)
#: over the rankings that found it. The usual 60 (Cormack et al.) flattens the ranks so much
#: that any passage both rankings found somewhere in their candidates beats the top passage
#: of one of them: on the retrieval benchmark (1,000 pages, 240 questions) hybrid recall@5
#: was 0.51 with 60 — below word search alone (0.59) — and 0.69 with 1, where the best of
#: each ranking keeps its place (`python -m benchmarks.retrieval --rrf-k 1 5 20 60`).
RRF_K = 1
#: How many candidates each ranking contributes before fusion, per result asked for.
CANDIDATES_PER_RESULT = 4
MAX_RESULTS = 100

Kind = Literal["document", "page"]


class KnowledgeError(RuntimeError):
    """The index could not do what was asked (unreachable, misconfigured)."""


@dataclass(frozen=True)
class Chunk:
    """One passage of a document (an attachment) or of a fetched web page."""

    id: str  # stable: f"{document_id}:{ordinal}", so re-ingesting replaces
    user_id: str  # the owner: the user IDENTIFIER (login name), not a database user id; every search filters on it
    thread_id: str
    document_id: str  # the element id of the attachment or page text
    ordinal: int  # position in the document, from 0
    text: str
    source: str  # the file name or the page URL
    location: str = ""  # "page 12", "section Results", "" when the format has none
    step_id: str | None = None  # the message the document came with
    kind: Kind = "document"


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # fused score: higher is better
    lexical_rank: int | None = None  # 1-based rank in each ranking that found it
    vector_rank: int | None = None


@dataclass(frozen=True)
class Scope:
    """Whose chunks a search or delete may touch. `user_id` is always required."""

    user_id: str
    thread_id: str | None = None  # None: all of the user's threads
    kinds: tuple[Kind, ...] = ("document", "page")


@dataclass
class IndexStatus:
    backend: str
    lexical: str  # what ranks words: "FTS5 bm25", "PostgreSQL ts_rank_cd", ...
    vectors: str | None  # None: vector search unavailable (and why, in `note`)
    note: str = ""
    extra: dict = field(default_factory=dict)


_TOKEN = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str, limit: int = 64) -> list[str]:
    """The words of a question, lowercased and de-duplicated, for lexical backends."""
    seen: dict[str, None] = {}
    for word in _TOKEN.findall(text.lower()):
        if len(word) > 1 or word.isdigit():
            seen.setdefault(word, None)
        if len(seen) >= limit:
            break
    return list(seen)


def document_terms(text: str) -> list[str]:
    """Every word of a passage in order, repeats kept, by the same rules as `query_terms`
    (for backends that count term frequencies themselves, such as Qdrant's sparse vectors)."""
    return [word for word in _TOKEN.findall(text.lower()) if len(word) > 1 or word.isdigit()]


def fuse(lexical: Sequence[Chunk], vector: Sequence[Chunk], k: int) -> list[Hit]:
    """Reciprocal rank fusion of two rankings (best first), the top `k`."""
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    lex_rank: dict[str, int] = {}
    vec_rank: dict[str, int] = {}
    for ranking, ranks in ((lexical, lex_rank), (vector, vec_rank)):
        for position, chunk in enumerate(ranking, start=1):
            if chunk.id in ranks:
                continue
            ranks[chunk.id] = position
            chunks[chunk.id] = chunk
            scores[chunk.id] = scores.get(chunk.id, 0.0) + 1.0 / (RRF_K + position)
    ordered = sorted(scores, key=lambda cid: (-scores[cid], lex_rank.get(cid, 10**9), cid))[:k]
    return [Hit(chunks[c], scores[c], lex_rank.get(c), vec_rank.get(c)) for c in ordered]


class KnowledgeIndex(abc.ABC):
    """Base of every index. Construct with the URL; `start(dimensions)` before use."""

    name = "index"

    def __init__(self, url: str):
        self.url = url
        self.dimensions: int | None = None

    # ---- life cycle ----------------------------------------------------------------------
    async def start(self, dimensions: int | None) -> None:
        """Create what is missing (tables, collection); detect vector support. `dimensions`
        is the embedding size, None when no embedding model is configured. Idempotent."""
        if dimensions is not None and dimensions <= 0:
            raise ValueError("dimensions must be positive")
        self.dimensions = dimensions
        await self._start(dimensions)

    async def close(self) -> None:
        await self._close()

    @property
    def vector_search(self) -> bool:
        """True when searches also rank by vectors (a model is configured and the store can)."""
        return self.dimensions is not None and self._supports_vectors()

    def status(self) -> IndexStatus:
        return self._status()

    # ---- writes --------------------------------------------------------------------------
    async def add(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]] | None = None) -> None:
        """Insert or replace chunks (by id). `vectors[i]` belongs to `chunks[i]`; without
        vectors (or without vector support) the chunks are found by words only."""
        if not chunks:
            return
        if vectors is not None:
            if len(vectors) != len(chunks):
                raise ValueError(f"{len(vectors)} vectors for {len(chunks)} chunks")
            if self.dimensions is None:
                raise ValueError("vectors given but the index was started without dimensions")
            for vector in vectors:
                if len(vector) != self.dimensions:
                    raise ValueError(f"a vector has {len(vector)} dimensions, the index {self.dimensions}")
        for chunk in chunks:
            if not chunk.user_id or not chunk.thread_id or not chunk.document_id:
                raise ValueError("a chunk needs its user, thread and document")
        await self._add(list(chunks), [list(v) for v in vectors] if vectors is not None and self.vector_search else None)

    async def delete(
        self,
        *,
        user_id: str | None = None,
        thread_id: str | None = None,
        step_id: str | None = None,
        document_id: str | None = None,
    ) -> int:
        """Remove every chunk (and its vector) matching all the given keys; the count removed.
        At least one key is required (nothing deletes the whole index by accident)."""
        if not any((user_id, thread_id, step_id, document_id)):
            raise ValueError("delete needs a user, thread, step or document id")
        return await self._delete(user_id=user_id, thread_id=thread_id, step_id=step_id, document_id=document_id)

    # ---- reads ---------------------------------------------------------------------------
    async def search(self, scope: Scope, query: str, vector: Sequence[float] | None = None, k: int = 5) -> list[Hit]:
        """The `k` chunks in `scope` most relevant to `query`: lexical always, vector too when
        `vector` is given and supported, fused by rank."""
        if not scope.user_id:
            raise ValueError("a search needs the user whose chunks it may return")
        k = max(1, min(int(k), MAX_RESULTS))
        candidates = k * CANDIDATES_PER_RESULT
        terms = query_terms(query)
        lexical = await self._lexical(scope, terms, candidates) if terms else []
        semantic: list[Chunk] = []
        if vector is not None and self.vector_search:
            semantic = await self._vector(scope, list(vector), candidates)
        return fuse(lexical, semantic, k)

    async def count(self, *, user_id: str | None = None, thread_id: str | None = None,
                    document_id: str | None = None) -> int:
        """How many chunks match (all keys given must match; none: the whole index)."""
        return await self._count(user_id=user_id, thread_id=thread_id, document_id=document_id)

    async def vector_count(self, *, user_id: str | None = None, document_id: str | None = None) -> int:
        """How many stored vectors match (tests check that deletes remove vectors too)."""
        return await self._vector_count(user_id=user_id, document_id=document_id)

    # ---- for backends --------------------------------------------------------------------
    @abc.abstractmethod
    async def _start(self, dimensions: int | None) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    def _supports_vectors(self) -> bool: ...

    @abc.abstractmethod
    def _status(self) -> IndexStatus: ...

    @abc.abstractmethod
    async def _add(self, chunks: list[Chunk], vectors: list[list[float]] | None) -> None: ...

    @abc.abstractmethod
    async def _delete(self, *, user_id: str | None, thread_id: str | None, step_id: str | None,
                      document_id: str | None) -> int: ...

    @abc.abstractmethod
    async def _lexical(self, scope: Scope, terms: list[str], limit: int) -> list[Chunk]:
        """Best first, by the backend's BM25 / full-text rank; any term may match."""

    @abc.abstractmethod
    async def _vector(self, scope: Scope, vector: list[float], limit: int) -> list[Chunk]:
        """Best first, by cosine similarity."""

    @abc.abstractmethod
    async def _count(self, *, user_id: str | None, thread_id: str | None, document_id: str | None) -> int: ...

    @abc.abstractmethod
    async def _vector_count(self, *, user_id: str | None, document_id: str | None) -> int: ...
