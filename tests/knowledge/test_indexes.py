"""The knowledge index contract, run against every index through one parametrized fixture.

sqlite           a file in tmp_path (FTS5, and sqlite-vec when it loads)
postgres         the machine's PostgreSQL: full text; vectors only if that server has pgvector
postgres-vector  a throwaway cluster of the PostgreSQL + pgvector binaries that the `pgserver`
                 wheel ships (dev extra), started on a loopback port, so that the pgvector path
                 is tested even where the machine's server has no pgvector
qdrant-memory    qdrant-client's embedded mode in memory
qdrant-local     qdrant-client's embedded mode on disk (tmp_path)
qdrant-server    a real Qdrant server, only when TEST_QDRANT_URL is set (e.g. qdrant://127.0.0.1:6333,
                 or qdrants://…?api_key=…): each test gets a collection of its own, deleted after

Each PostgreSQL test gets a schema of its own (`?schema=`) in one throwaway database per run.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from pathlib import Path

import pytest

from knowledge import KNOWLEDGE_SCHEMES
from knowledge.index import KnowledgeIndex, Scope
from tests.conftest import run_sync, unavailable
from tests.contracts.knowledge import DIM, KnowledgeIndexContract, axis, chunk, new_id

BACKENDS = ["sqlite", "postgres", "postgres-vector", "qdrant-memory", "qdrant-local"]
QDRANT_SERVER_URL = os.environ.get("TEST_QDRANT_URL", "")
if QDRANT_SERVER_URL:
    BACKENDS.append("qdrant-server")


def build(url: str) -> KnowledgeIndex:
    """The index class a KNOWLEDGE_URL names, as the app resolves it."""
    module_name, _, class_name = KNOWLEDGE_SCHEMES[url.split(":", 1)[0]][0].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(url)


def requires(module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed (pip install -e '.[{extra}]')")


@pytest.fixture(scope="session")
def knowledge_postgres(postgres_databases) -> str:
    requires("asyncpg", "postgres")
    return postgres_databases.create()


@pytest.fixture(scope="session")
def pgvector_cluster():
    """A PostgreSQL with pgvector of the tests' own (the machine's has none)."""
    from tests.faults.postgres_cluster import ClusterError, missing_prerequisite

    from .pgvector_cluster import PgvectorCluster, pgserver_package

    package = pgserver_package()
    if package is None:
        unavailable("pgserver is not installed (pip install -e '.[dev]'): the pgvector path cannot be tested")
    reason = missing_prerequisite()
    if reason:
        unavailable(reason)
    try:
        cluster = PgvectorCluster(package)
        cluster.__enter__()
    except ClusterError as exc:
        unavailable(f"the pgvector cluster did not start: {exc}")
    try:
        yield cluster.create_database("knowledge")
    finally:
        cluster.destroy()


def _schema_url(url: str) -> str:
    """The fixtures' SQLAlchemy URL as a KNOWLEDGE_URL, in a schema of its own."""
    return f"{url.replace('postgresql+asyncpg://', 'postgresql://', 1)}?schema=k_{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url(backend, request, tmp_path: Path) -> str:
    """The URL of this test's store (the same one for every instance the test opens)."""
    if backend == "sqlite":
        requires("sqlite_vec", "knowledge")
        return f"sqlite:///{tmp_path / 'knowledge.sqlite3'}"
    if backend == "postgres":
        return _schema_url(request.getfixturevalue("knowledge_postgres"))
    if backend == "postgres-vector":
        requires("asyncpg", "postgres")
        return _schema_url(request.getfixturevalue("pgvector_cluster"))
    requires("qdrant_client", "qdrant")
    if backend == "qdrant-memory":
        return "qdrant+memory://"
    if backend == "qdrant-server":
        collection = f"test_{uuid.uuid4().hex[:12]}"
        url = f"{QDRANT_SERVER_URL}{'&' if '?' in QDRANT_SERVER_URL else '?'}collection={collection}"
        request.addfinalizer(lambda: run_sync(_drop_collection(url)))
        return url
    return f"qdrant+local://{tmp_path / 'qdrant'}"


async def _drop_collection(url: str) -> None:
    index = build(url)
    await index.start(None)
    try:
        await index._call("delete_collection", collection_name=index.collection)  # type: ignore[attr-defined]
    finally:
        await index.close()


class TestKnowledgeIndexes(KnowledgeIndexContract):
    @pytest.fixture
    def persistent(self, backend) -> bool:
        return backend != "qdrant-memory"

    @pytest.fixture
    async def open_index(self, store_url, backend):
        opened: list[KnowledgeIndex] = []
        memory: list[KnowledgeIndex] = []

        async def open_(dimensions: int | None) -> KnowledgeIndex:
            if backend == "qdrant-memory" and memory:
                # One in-memory store per test: "opening again" is the same instance.
                await memory[0].start(dimensions)
                return memory[0]
            index = build(store_url)
            await index.start(dimensions)
            opened.append(index)
            if backend == "qdrant-memory":
                memory.append(index)
            return index

        yield open_
        for index in opened:
            await index.close()


# ---- what only some indexes do ---------------------------------------------------------------

async def test_pgvector_is_used_when_the_server_has_it(pgvector_cluster):
    requires("asyncpg", "postgres")
    index = build(_schema_url(pgvector_cluster))
    await index.start(DIM)
    try:
        assert index.vector_search, index.status().note
        assert "pgvector" in (index.status().vectors or "")
    finally:
        await index.close()


async def test_pgvector_that_may_not_be_created_leaves_words_working(pgvector_cluster):
    """The server has pgvector but the app's role may not CREATE EXTENSION (pgvector is not a
    trusted extension): lexical only, and the note says what a superuser can do."""
    import asyncpg

    role, database = f"k_{uuid.uuid4().hex[:8]}", f"k_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pgvector_cluster.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
    finally:
        await admin.close()
    url = pgvector_cluster.replace("postgresql+asyncpg://postgres@", "postgresql://" + role + "@", 1)
    index = build(url.rsplit("/", 1)[0] + f"/{database}")
    await index.start(DIM)
    try:
        status = index.status()
        assert not index.vector_search and status.vectors is None
        assert "could not be enabled" in status.note and "CREATE EXTENSION" in status.note
        await index.add([chunk("u", "t", "d", 0, "words still work")], [axis(0)])
        assert [h.chunk.text for h in await index.search(Scope("u"), "words", vector=axis(0))] == ["words still work"]
    finally:
        await index.close()


def test_sqlite_without_pysqlite3_works_by_words(tmp_path):
    """Where the pysqlite3 wheel is missing, the stdlib's sqlite3 serves (and says why there
    are no vectors): run in a fresh interpreter that cannot import pysqlite3."""
    script = f"""
import asyncio, sys
sys.modules["pysqlite3"] = None
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from knowledge.index import Chunk, Scope
from knowledge.index_sqlite import SQLiteKnowledgeIndex

async def main():
    index = SQLiteKnowledgeIndex("sqlite:///{tmp_path / 'k.sqlite3'}")
    await index.start(4)
    await index.add([Chunk("d:0", "u", "t", "d", 0, "fallback words", "f.txt")], [[1.0, 0, 0, 0]])
    hits = await index.search(Scope("u"), "words", vector=[1.0, 0, 0, 0])
    print(index.vector_search, [h.chunk.text for h in hits], index.status().note)
    await index.close()

asyncio.run(main())
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False ['fallback words'] pysqlite3-binary is not installed"), done.stdout


async def test_postgres_says_why_vectors_are_off(knowledge_postgres):
    index = build(_schema_url(knowledge_postgres))
    await index.start(DIM)
    try:
        status = index.status()
        if index.vector_search:
            pytest.skip(f"this PostgreSQL has pgvector ({status.vectors}); the note is for servers without it")
        assert status.vectors is None and "pgvector" in status.note
        # Vectors given to an index that cannot store them are dropped: words still work.
        user = new_id("u")
        await index.add([chunk(user, "t", "d", 0, "lexical only")], [axis(0)])
        assert [h.chunk.text for h in await index.search(Scope(user), "lexical", vector=axis(0))] == ["lexical only"]
    finally:
        await index.close()


async def test_sqlite_file_is_private(tmp_path):
    requires("sqlite_vec", "knowledge")
    path = tmp_path / "sub" / "knowledge.sqlite3"
    index = build(f"sqlite:///{path}")
    await index.start(DIM)
    try:
        await index.add([chunk("u", "t", "d", 0, "private")])
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        assert index.status().vectors, index.status().note
    finally:
        await index.close()


async def test_sqlite_memory_url(tmp_path):
    index = build("sqlite:///:memory:")
    await index.start(None)
    try:
        await index.add([chunk("u", "t", "d", 0, "ephemeral")])
        assert await index.count() == 1
    finally:
        await index.close()


async def test_sqlite_warns_once_when_the_embedding_size_changes(tmp_path, caplog):
    requires("sqlite_vec", "knowledge")
    url = f"sqlite:///{tmp_path / 'k.sqlite3'}"
    first = build(url)
    await first.start(DIM)
    await first.add([chunk("u", "t", "d", 0, "kept words")], [axis(0)])
    await first.close()
    second = build(url)
    with caplog.at_level(logging.WARNING, logger="chainlit"):
        await second.start(4)
        await second.start(4)
    try:
        warnings = [r for r in caplog.records if "embedding size" in r.getMessage()]
        assert len(warnings) == 1 and "8" in warnings[0].getMessage() and "4" in warnings[0].getMessage()
        assert await second.vector_count() == 0 and await second.count() == 1
    finally:
        await second.close()


@pytest.mark.parametrize("url", ["qdrant+local://", "qdrant+local://relative/path", "qdrant://", "sqlite://host/x",
                                 "postgresql://h/db?language=en;glish", "postgresql://h/db?schema=a-b"])
def test_a_malformed_url_is_refused(url):
    requires({"q": "qdrant_client", "s": "sqlite3", "p": "asyncpg"}[url[0]], "all")
    with pytest.raises(ValueError):
        build(url)


async def test_postgres_rebuilds_the_word_index_when_the_language_changes(knowledge_postgres, caplog):
    url = _schema_url(knowledge_postgres)
    first = build(url)
    await first.start(None)
    await first.add([chunk("u", "t", "d", 0, "the dogs were running")])
    assert await first.search(Scope("u"), "run") == []  # 'simple' does not stem
    await first.close()
    english = build(f"{url}&language=english")
    with caplog.at_level(logging.WARNING, logger="chainlit"):
        await english.start(None)
    try:
        assert any("language changed" in r.getMessage() for r in caplog.records)
        assert [h.chunk.text for h in await english.search(Scope("u"), "run dog")] == ["the dogs were running"]
        assert english.status().lexical == "PostgreSQL ts_rank_cd weighted by IDF (english)"
    finally:
        await english.close()


def test_qdrant_term_weights_are_stable_and_saturate():
    requires("qdrant_client", "qdrant")
    from knowledge.index_qdrant import AVERAGE_LENGTH, BM25_K1, point_id, sparse_document, sparse_query, term_index

    # The same index in every process and release (stored points depend on it).
    assert term_index("okapi") == 4096371358
    assert sparse_query(["okapi", "okapi"]) == ([term_index("okapi")], [1.0])
    # In a chunk of average length: more occurrences weigh more, up to a ceiling (k1 + 1).
    weights = [sparse_document(" ".join(["okapi"] * tf) + " filler" * (AVERAGE_LENGTH - tf))[1][0]
               for tf in (1, 2, 4, 50)]
    assert weights == sorted(weights) and weights[0] == 1.0 and weights[-1] < BM25_K1 + 1
    # The same count weighs less in a longer chunk.
    long = sparse_document("okapi" + " filler" * (4 * AVERAGE_LENGTH))[1][0]
    assert long < weights[0]
    assert sparse_document("") == ([], [])
    assert point_id("a", "doc:0") != point_id("b", "doc:0") and point_id("a", "doc:0") == point_id("a", "doc:0")


def test_every_scheme_names_an_importable_class():
    for scheme, (target, _extra) in KNOWLEDGE_SCHEMES.items():
        module_name, _, class_name = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"{scheme}: {exc}")
        assert issubclass(getattr(module, class_name), KnowledgeIndex)
