"""The knowledge index on PostgreSQL: full-text search always, pgvector when the server has it.

Words: a generated `tsvector` column (`to_tsvector(<language>, text)`, 'simple' by default
so that any language works; `?language=english` for stemming) with a GIN index, ranked by
`ts_rank_cd`. The query is an OR of the question's words, built from `query_terms` (runs of
word characters, each quoted) and always sent as a bound parameter.

Vectors: at start the index looks for the `vector` extension, runs `CREATE EXTENSION IF NOT
EXISTS vector` when the server offers it, and adds a `vector(N)` column with an HNSW index
(cosine). Where the extension is missing or may not be created, the index works by words and
`status().note` says so.

URL: `postgresql://user:password@host:port/db` (`postgresql+asyncpg://` too), with the
optional query parameters `schema=` (default `public`) and `language=`; others go to asyncpg.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .index import Chunk, IndexStatus, KnowledgeError, KnowledgeIndex, Scope, logger

log = logger.getChild("PostgreSQL")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COLUMNS = ("user_id", "id", "thread_id", "document_id", "step_id", "ordinal", "kind", "source", "location", "text")
#: pgvector's HNSW index takes at most this many dimensions; above it searches scan exactly.
HNSW_MAX_DIMENSIONS = 2000
#: Rows per executemany call when adding chunks.
INSERT_BATCH = 200
#: A statement running longer than this is cancelled by the server (a search is interactive:
#: a runaway plan must fail and be reported, not hold a connection and a core for good).
#: Schema changes at start may take longer on a big table and lift it for their transaction.
STATEMENT_TIMEOUT_MS = 60_000
#: From this pgvector version on, a filtered HNSW scan can go on past its first candidates.
ITERATIVE_SCAN_VERSION = (0, 8, 0)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _clean(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a document extractor can produce one.
    return value.replace("\x00", "\ufffd") if value is not None else None


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def parse_url(url: str) -> tuple[str, str, str]:
    """(asyncpg DSN, schema, text-search configuration) from a KNOWLEDGE_URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg", "postgres+asyncpg"):
        raise ValueError(f"not a postgresql:// URL: {parts.scheme}://")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    schema = options.pop("schema", "public")
    language = options.pop("language", "simple")
    for name, value in (("schema", schema), ("language", language)):
        if not _IDENTIFIER.match(value):
            raise ValueError(f"the knowledge URL's {name}= must be a plain identifier, got {value!r}")
    query = f"?{urlencode(options)}" if options else ""
    return f"postgresql://{parts.netloc}{parts.path}{query}", schema, language


def _chunk(row: Any) -> Chunk:
    return Chunk(id=row["id"], user_id=row["user_id"], thread_id=row["thread_id"], document_id=row["document_id"],
                 ordinal=row["ordinal"], text=row["text"], source=row["source"], location=row["location"],
                 step_id=row["step_id"], kind=row["kind"])


class PostgresKnowledgeIndex(KnowledgeIndex):
    name = "postgresql"

    def __init__(self, url: str):
        super().__init__(url)
        self._dsn, self.schema, self.language = parse_url(url)
        self._table = f'"{self.schema}".knowledge_chunks'
        self._pool: Any = None
        self._pgvector: str | None = None  # the extension's version when installed
        self._vector_type = ""  # schema-qualified type name, e.g. "public".vector
        self._distance = ""  # the cosine-distance operator, schema-qualified
        self._vectors_ready = False  # the embedding column has self.dimensions
        self._vec_column = False  # an embedding column exists (maybe kept while no model is set)
        self._hnsw = False
        self._note = ""

    @contextlib.asynccontextmanager
    async def _connection(self, transaction: bool = False) -> AsyncIterator[Any]:
        """A pooled connection; the driver's errors become KnowledgeError (the boundary)."""
        import asyncpg

        if self._pool is None:
            raise KnowledgeError("the PostgreSQL knowledge index is not started")
        try:
            async with self._pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise KnowledgeError(f"PostgreSQL knowledge index: {type(exc).__name__}: {exc}") from exc

    # ---- life cycle -------------------------------------------------------------------------
    async def _start(self, dimensions: int | None) -> None:
        import asyncpg

        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=4, server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS)})
            except (asyncpg.PostgresError, OSError) as exc:
                raise KnowledgeError(f"cannot reach the PostgreSQL knowledge index: {type(exc).__name__}: {exc}") from exc
        async with self._connection(transaction=True) as conn:
            # One process at a time creates or alters the tables (several app workers may start).
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('chainlit knowledge index'))")
            if not await conn.fetchval("SELECT 1 FROM pg_ts_config WHERE cfgname = $1", self.language):
                raise ValueError(f"PostgreSQL has no text-search configuration {self.language!r} (see \\dF)")
            await self._create_tables(conn)
            await self._prepare_vectors(conn, dimensions)
        if dimensions is not None and not self._vectors_ready:
            log.warning("Knowledge index: vector search is off: %s", self._note)

    async def _create_tables(self, conn: Any) -> None:
        t, lang = self._table, self.language
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await conn.execute(f"""
            CREATE TABLE IF NOT EXISTS {t} (
                user_id text NOT NULL, id text NOT NULL, thread_id text NOT NULL, document_id text NOT NULL,
                step_id text, ordinal integer NOT NULL, kind text NOT NULL, source text NOT NULL,
                location text NOT NULL, text text NOT NULL,
                tsv tsvector GENERATED ALWAYS AS (to_tsvector('{lang}'::regconfig, text)) STORED,
                PRIMARY KEY (user_id, id))""")
        expression = await conn.fetchval(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
            "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = $1::regclass AND a.attname = 'tsv'",
            t)
        if expression is not None and f"'{lang}'::regconfig" not in expression:
            log.warning("Knowledge index: the text-search language changed (%s -> %s): rebuilding the word index",
                        expression, lang)
            await conn.execute(f"ALTER TABLE {t} DROP COLUMN tsv")
            await conn.execute(f"ALTER TABLE {t} ADD COLUMN tsv tsvector "
                               f"GENERATED ALWAYS AS (to_tsvector('{lang}'::regconfig, text)) STORED")
        for name, definition in (("tsv", "USING gin (tsv)"), ("thread", "(thread_id)"),
                                 ("document", "(document_id)"), ("step", "(step_id) WHERE step_id IS NOT NULL")):
            await conn.execute(f"CREATE INDEX IF NOT EXISTS knowledge_chunks_{name} ON {t} {definition}")

    async def _prepare_vectors(self, conn: Any, dimensions: int | None) -> None:
        import asyncpg

        self._note = ""
        row = await conn.fetchrow("SELECT e.extversion, n.nspname FROM pg_extension e "
                                  "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'")
        if row is None and dimensions is not None:
            if await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"):
                try:
                    async with conn.transaction():  # a savepoint: a refusal leaves the rest standing
                        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except asyncpg.PostgresError as exc:
                    self._note = (f"pgvector is on this server but could not be enabled ({exc}): "
                                  "a superuser can run CREATE EXTENSION vector")
                else:
                    row = await conn.fetchrow(
                        "SELECT e.extversion, n.nspname FROM pg_extension e "
                        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'")
            else:
                self._note = "pgvector is not installed on this server (install the extension package, e.g. postgresql-16-pgvector)"
        if row is not None:
            self._pgvector = row["extversion"]
            extension_schema = row["nspname"].replace('"', '""')
            self._vector_type = f'"{extension_schema}".vector'
            self._distance = f'OPERATOR("{extension_schema}".<=>)'
        stored = await conn.fetchval(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'embedding' "
            "AND NOT attisdropped", self._table)
        self._vec_column = stored is not None and row is not None
        self._vectors_ready = False
        if dimensions is None or row is None:
            return
        if stored is not None and stored != dimensions:
            log.warning("The embedding size changed from %s to %s: dropping the stored vectors "
                        "(chunks stay searchable by words; re-ingest documents for vector search)", stored, dimensions)
            await conn.execute(f"ALTER TABLE {self._table} DROP COLUMN embedding")
            stored = None
        if stored is None:
            await conn.execute(f"ALTER TABLE {self._table} ADD COLUMN embedding {self._vector_type}({int(dimensions)})")
        self._hnsw = dimensions <= HNSW_MAX_DIMENSIONS and _version(self._pgvector or "0") >= (0, 5, 0)
        if self._hnsw:
            await conn.execute(f"CREATE INDEX IF NOT EXISTS knowledge_chunks_embedding ON {self._table} "
                               f'USING hnsw (embedding "{extension_schema}".vector_cosine_ops)')
        self._vectors_ready = self._vec_column = True

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _supports_vectors(self) -> bool:
        return self._vectors_ready

    def _status(self) -> IndexStatus:
        vectors = None
        if self._vectors_ready:
            search = "HNSW" if self._hnsw else "exact scan"
            vectors = f"pgvector {self._pgvector} cosine, {search} ({self.dimensions} dimensions)"
        note = self._note or ("" if self.dimensions is not None else "no embedding model configured")
        return IndexStatus(backend="postgresql", lexical=f"PostgreSQL ts_rank_cd weighted by IDF ({self.language})", vectors=vectors,
                           note=note, extra={"schema": self.schema, "pgvector": self._pgvector})

    # ---- writes -----------------------------------------------------------------------------
    async def _add(self, chunks: list[Chunk], vectors: list[list[float]] | None) -> None:
        columns = list(_COLUMNS)
        if self._vec_column:
            # A replaced chunk's old vector describes its old text: it is overwritten (or cleared).
            columns.append("embedding")
        values = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
        if self._vec_column:
            values += f", ${len(columns)}::{self._vector_type}"
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in ("user_id", "id"))
        rows = []
        for i, c in enumerate(chunks):
            row: list[Any] = [_clean(c.user_id), _clean(c.id), _clean(c.thread_id), _clean(c.document_id),
                              _clean(c.step_id), c.ordinal, c.kind, _clean(c.source), _clean(c.location), _clean(c.text)]
            if self._vec_column:
                row.append(_vector_literal(vectors[i]) if vectors is not None and self._vectors_ready else None)
            rows.append(row)
        sql = (f"INSERT INTO {self._table} ({', '.join(columns)}) VALUES ({values}) "
               f"ON CONFLICT (user_id, id) DO UPDATE SET {updates}")
        async with self._connection(transaction=True) as conn:
            # asyncpg encodes a whole executemany on the event loop: in slices, other tasks run
            # between them (one transaction all the same).
            for start in range(0, len(rows), INSERT_BATCH):
                await conn.executemany(sql, rows[start:start + INSERT_BATCH])

    async def _delete(self, *, user_id: str | None, thread_id: str | None, step_id: str | None,
                      document_id: str | None) -> int:
        where, params = self._where(user_id=user_id, thread_id=thread_id, step_id=step_id, document_id=document_id)
        async with self._connection() as conn:
            status = await conn.execute(f"DELETE FROM {self._table} WHERE {where}", *params)
        return int(status.split()[-1])

    @staticmethod
    def _where(start: int = 1, **keys: str | None) -> tuple[str, list[Any]]:
        given = [(column, value) for column, value in keys.items() if value]
        clauses = [f"{column} = ${start + i}" for i, (column, _) in enumerate(given)]
        return " AND ".join(clauses) or "TRUE", [_clean(value) for _, value in given]

    # ---- reads ------------------------------------------------------------------------------
    def _scope(self, scope: Scope, start: int) -> tuple[str, list[Any]]:
        where, params = self._where(start, user_id=scope.user_id, thread_id=scope.thread_id)
        where += f" AND kind = ANY(${start + len(params)}::text[])"
        return where, [*params, list(dict.fromkeys(scope.kinds))]

    async def _lexical(self, scope: Scope, terms: list[str], limit: int) -> list[Chunk]:
        # ts_rank_cd knows nothing of how rare a word is, so a question's common words outweighed
        # its rare name or code (recall@5 0.26 on the retrieval benchmark, against 0.59 for
        # SQLite's BM25). As BM25 does, each term is weighted by its inverse document frequency
        # in the scope (one GIN count per term), and a chunk scores the sum of weight ×
        # ts_rank_cd over the terms it holds. Each term is a run of word characters
        # (query_terms): quoted, it is one lexeme, never tsquery syntax; stop words drop out.
        where, params = self._scope(scope, start=3)
        columns = ", ".join(f"k.{column}" for column in _COLUMNS)
        table = self._table
        any_term = " | ".join(f"'{term}'" for term in terms)
        # One GIN scan finds every chunk holding any term; each term's document frequency is
        # then counted among those matches (exact: a chunk with the term is one of them).
        # Every step is MATERIALIZED: on a table the planner has no statistics for yet (just
        # filled), it estimated one match and re-ran the weighting once per matching chunk
        # inside a nested loop, quadratic in the matches (minutes at 3,000 chunks).
        sql = f"""
            WITH matches AS MATERIALIZED (
                SELECT user_id, id, tsv FROM {table}
                WHERE tsv @@ to_tsquery('{self.language}'::regconfig, $1) AND {where}),
            terms AS MATERIALIZED (
                SELECT DISTINCT to_tsquery('{self.language}'::regconfig, quote_literal(t)) AS q
                FROM unnest(${3 + len(params)}::text[]) AS t),
            total AS MATERIALIZED (SELECT count(*)::float8 AS n FROM {table} WHERE {where}),
            weighted AS MATERIALIZED (
                SELECT terms.q, ln((total.n + 1) / (1 + count(m.id))) AS idf
                FROM terms CROSS JOIN total LEFT JOIN matches m ON m.tsv @@ terms.q
                WHERE numnode(terms.q) > 0 GROUP BY terms.q, total.n),
            scored AS (
                SELECT m.user_id AS uid, m.id AS cid, sum(w.idf * ts_rank_cd(m.tsv, w.q, 1)) AS score
                FROM matches m JOIN weighted w ON m.tsv @@ w.q GROUP BY m.user_id, m.id)
            SELECT {columns} FROM scored s JOIN {table} k ON k.user_id = s.uid AND k.id = s.cid
            ORDER BY s.score DESC, k.id LIMIT $2"""
        async with self._connection() as conn:
            rows = await conn.fetch(sql, any_term, limit, *params, terms)
        return [_chunk(row) for row in rows]

    async def _vector(self, scope: Scope, vector: list[float], limit: int) -> list[Chunk]:
        where, params = self._scope(scope, start=3)
        distance = f"embedding {self._distance} $1::{self._vector_type}"
        async with self._connection(transaction=True) as conn:
            if self._hnsw and _version(self._pgvector or "0") >= ITERATIVE_SCAN_VERSION:
                # A filtered HNSW scan goes on until it has `limit` rows of this user, in order.
                await conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
                await conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(limit, 1000))}")
                sql = (f"SELECT {', '.join(_COLUMNS)} FROM {self._table} WHERE embedding IS NOT NULL AND {where} "
                       f"ORDER BY {distance}, id LIMIT $2")
            else:
                # Older pgvector stops a filtered HNSW scan after ef_search candidates, so a small
                # user behind a big one would get nothing: search the user's own rows exactly.
                sql = (f"WITH mine AS MATERIALIZED (SELECT {', '.join(_COLUMNS)}, embedding FROM {self._table} "
                       f"WHERE embedding IS NOT NULL AND {where}) "
                       f"SELECT {', '.join(_COLUMNS)} FROM mine ORDER BY {distance}, id LIMIT $2")
            rows = await conn.fetch(sql, _vector_literal(vector), limit, *params)
        return [_chunk(row) for row in rows]

    async def _count(self, *, user_id: str | None, thread_id: str | None, document_id: str | None) -> int:
        where, params = self._where(user_id=user_id, thread_id=thread_id, document_id=document_id)
        async with self._connection() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self._table} WHERE {where}", *params))

    async def _vector_count(self, *, user_id: str | None, document_id: str | None) -> int:
        if not self._vec_column:
            return 0
        where, params = self._where(user_id=user_id, document_id=document_id)
        async with self._connection() as conn:
            return int(await conn.fetchval(
                f"SELECT count(*) FROM {self._table} WHERE embedding IS NOT NULL AND {where}", *params))
