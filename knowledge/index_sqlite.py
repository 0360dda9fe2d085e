"""The embedded knowledge index: one SQLite file in the app's data folder.

Words: an FTS5 table over the chunks' text (external content, kept in step by triggers),
ranked by `bm25()`. Vectors: a sqlite-vec `vec0` table with cosine distance whose partition
key is the owner, so a KNN query searches one user's vectors only (a global top-k filtered
afterwards would miss a small user's chunks behind a big user's). Thread and kind are vec0
metadata columns, filtered during the KNN as well.

Python's own sqlite3 is often built without extension loading, so the `pysqlite3-binary`
wheel (a recent SQLite with `load_extension`) is preferred; without it the index still works
by words and `status().note` says why vectors are off.

All database work runs on one dedicated thread that owns the connection: SQLite calls block,
and the event loop must not.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3 as _stdlib_sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from .index import Chunk, IndexStatus, KnowledgeError, KnowledgeIndex, Scope, logger

log = logger.getChild("SQLite")
T = TypeVar("T")

_driver_note = ""
sqlite3: ModuleType
try:
    import pysqlite3.dbapi2 as sqlite3  # type: ignore[no-redef]
except ImportError:  # the wheel is Linux-only; elsewhere the stdlib may or may not load extensions
    sqlite3 = _stdlib_sqlite3
    _driver_note = "pysqlite3-binary is not installed"

try:
    import sqlite_vec
except ImportError:
    sqlite_vec = None

_COLUMNS = "user_id, id, thread_id, document_id, step_id, ordinal, kind, source, location, text"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS knowledge_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS knowledge_chunks (
    seq INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    step_id TEXT,
    ordinal INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    location TEXT NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (user_id, id)
);
CREATE INDEX IF NOT EXISTS knowledge_chunks_thread ON knowledge_chunks (thread_id);
CREATE INDEX IF NOT EXISTS knowledge_chunks_document ON knowledge_chunks (document_id);
CREATE INDEX IF NOT EXISTS knowledge_chunks_step ON knowledge_chunks (step_id) WHERE step_id IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS knowledge_fts USING fts5(
    text, content='knowledge_chunks', content_rowid='seq', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER IF NOT EXISTS knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (knowledge_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE TRIGGER IF NOT EXISTS knowledge_chunks_au AFTER UPDATE OF text ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (knowledge_fts, rowid, text) VALUES ('delete', old.seq, old.text);
    INSERT INTO knowledge_fts (rowid, text) VALUES (new.seq, new.text);
END;
"""


def _database_path(url: str) -> str:
    """SQLAlchemy's convention, like DATABASE_URL: `sqlite:////abs/file` is absolute,
    `sqlite:///rel/file` relative to the working directory, `sqlite://` or
    `sqlite:///:memory:` in memory."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite:// URL: {parts.scheme}://")
    if parts.netloc:
        raise ValueError("a sqlite:// knowledge URL has no host: use sqlite:////absolute/path")
    path = unquote(parts.path)[1:]  # the one slash that separates the empty host from the path
    return path or ":memory:"


def _match_expression(terms: Sequence[str]) -> str:
    # Each term is a run of \w characters (query_terms), so it cannot hold a double quote: quoted,
    # it is a plain FTS5 string, never an operator (OR, NEAR, column:, -x, *).
    return " OR ".join(f'"{term}"' for term in terms)


def _scope_sql(scope: Scope, alias: str) -> tuple[str, list[Any]]:
    clauses, params = [f"{alias}.user_id = ?"], [scope.user_id]
    if scope.thread_id is not None:
        clauses.append(f"{alias}.thread_id = ?")
        params.append(scope.thread_id)
    kinds = list(dict.fromkeys(scope.kinds))
    clauses.append(f"{alias}.kind IN ({', '.join('?' for _ in kinds)})")
    params.extend(kinds)
    return " AND ".join(clauses), params


def _chunk(row: Sequence[Any]) -> Chunk:
    user_id, cid, thread_id, document_id, step_id, ordinal, kind, source, location, text = row
    return Chunk(id=cid, user_id=user_id, thread_id=thread_id, document_id=document_id, ordinal=ordinal,
                 text=text, source=source, location=location, step_id=step_id, kind=kind)


class SQLiteKnowledgeIndex(KnowledgeIndex):
    name = "sqlite"

    def __init__(self, url: str):
        super().__init__(url)
        self.path = _database_path(url)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: Any = None
        self._vectors_ready = False  # the vec0 table exists with self.dimensions
        self._vec_table = False  # a vec0 table exists (maybe kept while no model is configured)
        self._note = ""

    # ---- the worker thread ------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise KnowledgeError("the SQLite knowledge index is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        if self.path != ":memory:":
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it (chunks are users' documents); SQLite gives
            # the -wal and -shm files the database file's permissions.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
                # Derived data: after a power cut WAL + NORMAL may lose the last commits but never
                # corrupts, and re-ingesting a document restores it.
                conn.execute("PRAGMA synchronous = NORMAL")
            # The stdlib's sqlite3 may load extensions too (some builds do): try whichever we have.
            self._note = self._load_vec(conn)
            if self._note and _driver_note:
                self._note = f"{_driver_note}; {self._note}"
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _load_vec(conn: Any) -> str:
        """Load sqlite-vec; '' when loaded, else why not."""
        if sqlite_vec is None:
            return "sqlite-vec is not installed (pip install 'chainlit-persist[knowledge]')"
        if not hasattr(conn, "enable_load_extension"):
            return "this Python's sqlite3 cannot load extensions (install pysqlite3-binary)"
        try:
            conn.enable_load_extension(True)
            try:
                sqlite_vec.load(conn)
            finally:
                conn.enable_load_extension(False)
        except Exception as exc:  # a missing or incompatible shared library: run by words only
            return f"sqlite-vec could not be loaded ({type(exc).__name__}: {exc})"
        return ""

    def _vec_available(self) -> bool:
        return self._conn is not None and not self._note

    def _prepare_vectors(self, dimensions: int | None) -> None:
        conn = self._conn
        stored_row = conn.execute("SELECT value FROM knowledge_meta WHERE key = 'dimensions'").fetchone()
        stored = int(stored_row[0]) if stored_row else None
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'knowledge_vectors'").fetchone() is not None
        # Without sqlite-vec loaded the vec0 table cannot even be read: leave it alone.
        self._vec_table = exists and self._vec_available()
        if dimensions is None or not self._vec_available():
            # Without a model the stored vectors are kept (unused) for when it comes back.
            self._vectors_ready = False
            return
        if exists and stored == dimensions:
            self._vectors_ready = True
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if exists:
                log.warning("The embedding size changed from %s to %s: dropping the stored vectors "
                            "(chunks stay searchable by words; re-ingest documents for vector search)",
                            stored, dimensions)
                conn.execute("DROP TABLE knowledge_vectors")
            conn.execute(
                "CREATE VIRTUAL TABLE knowledge_vectors USING vec0("
                "chunk_seq INTEGER PRIMARY KEY, user_id TEXT PARTITION KEY, "
                f"embedding float[{int(dimensions)}] distance_metric=cosine, "
                "thread_id TEXT, kind TEXT, document_id TEXT)")
            conn.execute("INSERT INTO knowledge_meta (key, value) VALUES ('dimensions', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(dimensions),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._vectors_ready = self._vec_table = True

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- life cycle -------------------------------------------------------------------------
    async def _start(self, dimensions: int | None) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-sqlite")
        if self._conn is None:
            await self._run(self._open)
        await self._run(self._prepare_vectors, dimensions)
        if dimensions is not None and self._note:
            log.warning("Knowledge index: vector search is off: %s", self._note)

    async def _close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close_conn)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _supports_vectors(self) -> bool:
        return self._vectors_ready

    def _status(self) -> IndexStatus:
        vectors = None
        if self._vectors_ready:
            vectors = f"sqlite-vec cosine, exact KNN per user ({self.dimensions} dimensions)"
        note = self._note if self.dimensions is not None else (self._note or "no embedding model configured")
        version = sqlite3.sqlite_version
        return IndexStatus(backend="sqlite", lexical="FTS5 bm25", vectors=vectors, note=note,
                           extra={"path": self.path, "sqlite": version})

    # ---- writes -----------------------------------------------------------------------------
    def _add_sync(self, chunks: list[Chunk], vectors: list[list[float]] | None) -> None:
        conn = self._conn
        with_vectors = self._vec_table
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i, c in enumerate(chunks):
                seq = conn.execute(
                    f"INSERT INTO knowledge_chunks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (user_id, id) DO UPDATE SET thread_id = excluded.thread_id, "
                    "document_id = excluded.document_id, step_id = excluded.step_id, ordinal = excluded.ordinal, "
                    "kind = excluded.kind, source = excluded.source, location = excluded.location, "
                    "text = excluded.text RETURNING seq",
                    (c.user_id, c.id, c.thread_id, c.document_id, c.step_id, c.ordinal, c.kind, c.source,
                     c.location, c.text)).fetchone()[0]
                if not with_vectors:
                    continue
                # A replaced chunk's old vector describes its old text: it goes either way.
                conn.execute("DELETE FROM knowledge_vectors WHERE chunk_seq = ?", (seq,))
                if vectors is not None and self._vectors_ready:
                    conn.execute(
                        "INSERT INTO knowledge_vectors (chunk_seq, user_id, embedding, thread_id, kind, document_id) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (seq, c.user_id, sqlite_vec.serialize_float32(vectors[i]), c.thread_id, c.kind,
                         c.document_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _add(self, chunks: list[Chunk], vectors: list[list[float]] | None) -> None:
        await self._run(self._add_sync, chunks, vectors)

    def _delete_sync(self, keys: dict[str, str]) -> int:
        conn = self._conn
        where = " AND ".join(f"{column} = ?" for column in keys)
        params = list(keys.values())
        conn.execute("BEGIN IMMEDIATE")
        try:
            seqs = [row[0] for row in conn.execute(f"SELECT seq FROM knowledge_chunks WHERE {where}", params)]
            if self._vec_table:
                # Also when vectors are off now (no model): a kept vector must not outlive its chunk.
                conn.executemany("DELETE FROM knowledge_vectors WHERE chunk_seq = ?", [(s,) for s in seqs])
            conn.execute(f"DELETE FROM knowledge_chunks WHERE {where}", params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(seqs)

    async def _delete(self, *, user_id: str | None, thread_id: str | None, step_id: str | None,
                      document_id: str | None) -> int:
        keys = {column: value for column, value in (("user_id", user_id), ("thread_id", thread_id),
                                                    ("step_id", step_id), ("document_id", document_id)) if value}
        return await self._run(self._delete_sync, keys)

    # ---- reads ------------------------------------------------------------------------------
    def _lexical_sync(self, scope: Scope, terms: list[str], limit: int) -> list[Chunk]:
        where, params = _scope_sql(scope, "c")
        # CROSS JOIN fixes the join order: the FTS match first, each match's row by primary
        # key. Left to itself the planner walks the user's rows and runs one FTS lookup per
        # row (about 150 times slower for a user with 2,000 chunks).
        rows = self._conn.execute(
            f"SELECT {', '.join('c.' + col.strip() for col in _COLUMNS.split(','))} "
            "FROM knowledge_fts CROSS JOIN knowledge_chunks c ON c.seq = knowledge_fts.rowid "
            f"WHERE knowledge_fts MATCH ? AND {where} ORDER BY bm25(knowledge_fts), c.seq LIMIT ?",
            [_match_expression(terms), *params, limit]).fetchall()
        return [_chunk(row) for row in rows]

    async def _lexical(self, scope: Scope, terms: list[str], limit: int) -> list[Chunk]:
        return await self._run(self._lexical_sync, scope, terms, limit)

    def _vector_sync(self, scope: Scope, vector: list[float], limit: int) -> list[Chunk]:
        where, params = _scope_sql(scope, "knowledge_vectors")
        rows = self._conn.execute(
            f"WITH knn AS (SELECT chunk_seq, distance FROM knowledge_vectors "
            f"WHERE embedding MATCH ? AND k = ? AND {where}) "
            f"SELECT {', '.join('c.' + col.strip() for col in _COLUMNS.split(','))} "
            "FROM knn JOIN knowledge_chunks c ON c.seq = knn.chunk_seq ORDER BY knn.distance, c.seq",
            [sqlite_vec.serialize_float32(vector), limit, *params]).fetchall()
        return [_chunk(row) for row in rows]

    async def _vector(self, scope: Scope, vector: list[float], limit: int) -> list[Chunk]:
        return await self._run(self._vector_sync, scope, vector, limit)

    def _count_sync(self, table: str, keys: dict[str, str]) -> int:
        if table == "knowledge_vectors" and not self._vec_table:
            return 0
        where = " AND ".join(f"{column} = ?" for column in keys) or "1"
        return int(self._conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(keys.values())).fetchone()[0])

    async def _count(self, *, user_id: str | None, thread_id: str | None, document_id: str | None) -> int:
        keys = {k: v for k, v in (("user_id", user_id), ("thread_id", thread_id), ("document_id", document_id)) if v}
        return await self._run(self._count_sync, "knowledge_chunks", keys)

    async def _vector_count(self, *, user_id: str | None, document_id: str | None) -> int:
        # Counted in the vector table itself (its own user and document columns), so a vector
        # whose chunk row is gone would still be seen.
        keys = {k: v for k, v in (("user_id", user_id), ("document_id", document_id)) if v}
        return await self._run(self._count_sync, "knowledge_vectors", keys)
