"""Retrieval benchmark: recall@5 of lexical, vector and hybrid search over a generated corpus of
report PDFs with hidden facts, ingestion throughput and query latency, per knowledge index.

    python -m benchmarks.retrieval                       # 1,000 pages (10 PDFs x 100), 240 questions
    python -m benchmarks.retrieval --pages 200 --index sqlite
    python -m benchmarks.retrieval --embedder openai --url http://127.0.0.1:8001/v1 --model text-embedding-3-small

The corpus (`benchmarks/retrieval_corpus.py`) is generated from a seed: invented municipal
reports with hidden facts at known (document, page) places, half of them asked in other words
(vector search matters), half by a rare code or name (lexical search matters). Each document
goes through the app's own path — `knowledge.extract` (PDF text per page, in its worker
process), `knowledge.chunking.split`, the embedding model, `index.add` — and each stage is
timed. A question counts as found when one of the 5 chunks returned is from the right document,
its location is the right page and its text holds the fact's whole sentence.

Indexes: the embedded SQLite index (FTS5 bm25 + sqlite-vec) in a temporary folder, and
PostgreSQL (BENCH_POSTGRES_URL, default the local test server) in a throwaway database
created and dropped here — without pgvector, as on this machine, PostgreSQL searches by words
only: its vector and hybrid columns say so, and its chunks are not embedded (the service skips
embeddings for an index without vectors). Qdrant (local mode) with `--index sqlite postgres qdrant`.

Extraction, chunking and embedding run once (the first index) and their times are shared;
each index's own time is `add` alone. Latency: each question once, one after the other, after
a warm-up; hybrid latency excludes embedding the question, which is its own row. "either" is
the share found by the lexical or the vector top 5: what fusing the two could reach at best.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.retrieval_corpus import Corpus, Fact, generate, to_pdf
from knowledge import KNOWLEDGE_SCHEMES
from knowledge.index import Chunk, KnowledgeIndex, Scope

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
USER = "bench-user"
K = 5
MODES = ("lexical", "vector", "hybrid", "either")
_SPACE = re.compile(r"\s+")


def p95(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass
class Prepared:
    """The corpus after extraction, chunking and (when a model is set) embedding."""

    chunks: list[list[Chunk]]  # per document
    vectors: list[list[list[float]] | None]
    pdf_bytes: int
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    worst_stall_ms: float = 0.0


async def prepare(corpus: Corpus, embedder, target_tokens: int, overlap: int) -> Prepared:
    from knowledge import extract_pool as extraction
    from knowledge.chunking import split

    t0 = time.perf_counter()
    pdfs = [to_pdf(title, pages) for title, pages in corpus.documents]
    generated = time.perf_counter() - t0
    # The worker process starts on first use (a spawn: interpreter + imports); the app pays
    # that once per process, so it is left out of the throughput.
    await extraction.extract_async(to_pdf("warm-up", ["warm up"]), "warm-up.pdf", "application/pdf")
    if embedder is not None:
        await embedder.start()
    timings = {"generate PDFs": generated, "extract": 0.0, "chunk": 0.0, "embed": 0.0}
    prepared = Prepared([], [], sum(len(b) for b in pdfs), timings)
    stall = {"worst": 0.0}
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.005)
            stall["worst"] = max(stall["worst"], time.perf_counter() - began - 0.005)

    tick = asyncio.create_task(ticker())
    try:
        for number, data in enumerate(pdfs):
            t = time.perf_counter()
            document = await extraction.extract_async(data, f"report-{number + 1}.pdf", "application/pdf")
            timings["extract"] += time.perf_counter() - t
            t = time.perf_counter()
            pieces = split(document, target_tokens=target_tokens, overlap_tokens=overlap)
            doc_id = f"doc-{number}"
            chunks = [Chunk(id=f"{doc_id}:{p.ordinal}", user_id=USER, thread_id=f"thread-{number % 3}", document_id=doc_id,
                            ordinal=p.ordinal, text=p.text, source=f"report-{number + 1}.pdf", location=p.location)
                      for p in pieces]
            timings["chunk"] += time.perf_counter() - t
            vectors = None
            if embedder is not None:
                t = time.perf_counter()
                vectors = await embedder.embed([c.text for c in chunks])
                timings["embed"] += time.perf_counter() - t
            prepared.chunks.append(chunks)
            prepared.vectors.append(vectors)
    finally:
        done.set()
        await tick
        extraction.close()
    prepared.worst_stall_ms = stall["worst"] * 1000
    return prepared


def index_class(scheme: str) -> type[KnowledgeIndex]:
    target, _extra = KNOWLEDGE_SCHEMES[scheme]
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


async def admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def hit(chunk: Chunk, fact: Fact) -> bool:
    return (chunk.document_id == f"doc-{fact.document}" and chunk.location == f"page {fact.page}"
            and fact.sentence in squash(chunk.text))


@dataclass
class Result:
    name: str
    status: str
    index_seconds: float = 0.0
    recall: dict[str, dict[str, float | None]] = field(default_factory=dict)  # mode -> kind -> recall
    latency: dict[str, tuple[float, float] | None] = field(default_factory=dict)  # mode -> (p50, p95) ms
    chunks: int = 0
    vectors: int = 0
    fusion: dict[int, dict[str, float | None]] = field(default_factory=dict)  # other RRF constants -> hybrid recall


async def measure(name: str, index: KnowledgeIndex, corpus: Corpus, prepared: Prepared,
                  questions: list[list[float]] | None, dimensions: int | None, rrf: Sequence[int] = ()) -> Result:
    await index.start(dimensions)
    vectors_on = index.vector_search and questions is not None
    status = index.status()
    result = Result(name, f"{status.lexical}; vectors: {status.vectors or 'off'}" + (f" ({status.note})" if status.note else ""))
    t = time.perf_counter()
    for chunks, vectors in zip(prepared.chunks, prepared.vectors, strict=True):
        for start in range(0, len(chunks), 64):  # the service's batch
            await index.add(chunks[start:start + 64], vectors[start:start + 64] if vectors and vectors_on else None)
    result.index_seconds = time.perf_counter() - t
    result.chunks = await index.count(user_id=USER)
    result.vectors = await index.vector_count(user_id=USER)
    scope = Scope(user_id=USER)

    async def lexical(i: int, fact: Fact) -> list[Chunk]:
        return [h.chunk for h in await index.search(scope, fact.question, None, k=K)]

    async def vector(i: int, fact: Fact) -> list[Chunk]:
        assert questions is not None
        # The vector ranking alone (what fusion gets from the vector side).
        return (await index._vector(scope, questions[i], K))[:K]

    async def hybrid(i: int, fact: Fact) -> list[Chunk]:
        assert questions is not None
        return [h.chunk for h in await index.search(scope, fact.question, questions[i], k=K)]

    modes = {"lexical": lexical, "vector": vector, "hybrid": hybrid}
    per_question: dict[str, list[bool]] = {}
    for mode, run in modes.items():
        if mode != "lexical" and not vectors_on:
            result.recall[mode] = {"all": None, "paraphrased": None, "lexical": None}
            result.latency[mode] = None
            continue
        for i, fact in enumerate(corpus.facts[:10]):  # warm caches and prepared statements
            await run(i, fact)
        found: dict[str, list[bool]] = {"paraphrased": [], "lexical": []}
        times: list[float] = []
        for i, fact in enumerate(corpus.facts):
            t = time.perf_counter()
            top = await run(i, fact)
            times.append((time.perf_counter() - t) * 1000)
            found[fact.kind].append(any(hit(c, fact) for c in top))
            per_question.setdefault(mode, []).append(found[fact.kind][-1])
        result.recall[mode] = recall(corpus.facts, per_question[mode])
        result.latency[mode] = (statistics.median(times), p95(times))
    if vectors_on:
        fusion_module = importlib.import_module("knowledge.index")
        default = fusion_module.RRF_K
        try:
            for constant in rrf:
                fusion_module.RRF_K = constant
                result.fusion[constant] = recall(corpus.facts, [any(hit(c, f) for c in await hybrid(i, f))
                                                                for i, f in enumerate(corpus.facts)])
        finally:
            fusion_module.RRF_K = default
        # Found by either top 5: what a fusion of the two rankings could reach at best.
        either = [a or b for a, b in zip(per_question["lexical"], per_question["vector"], strict=True)]
        result.recall["either"] = recall(corpus.facts, either)
    else:
        result.recall["either"] = {"all": None, "paraphrased": None, "lexical": None}
    return result


def recall(facts: list[Fact], found: list[bool]) -> dict[str, float | None]:
    out: dict[str, float | None] = {"all": sum(found) / len(found)}
    for kind in ("paraphrased", "lexical"):
        mine = [f for f, fact in zip(found, facts, strict=True) if fact.kind == kind]
        out[kind] = sum(mine) / len(mine) if mine else None
    return out


async def run_index(name: str, corpus: Corpus, prepared: Prepared, questions, dimensions, folder: Path,
                    rrf: Sequence[int] = ()) -> Result:
    if name == "sqlite":
        index = index_class("sqlite")(f"sqlite:///{folder / 'knowledge.sqlite3'}")
        try:
            return await measure("SQLite (embedded)", index, corpus, prepared, questions, dimensions, rrf)
        finally:
            await index.close()
    if name == "postgres":
        database = f"bench_knowledge_{uuid.uuid4().hex[:10]}"
        await admin(f"CREATE DATABASE {database}")
        try:
            base = ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)[0]
            index = index_class("postgresql")(f"{base}/{database}")
            try:
                return await measure("PostgreSQL", index, corpus, prepared, questions, dimensions, rrf)
            finally:
                await index.close()
        finally:
            await admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    if name == "qdrant":
        index = index_class("qdrant+local")(f"qdrant+local://{folder / 'qdrant'}")
        try:
            return await measure("Qdrant (local mode)", index, corpus, prepared, questions, dimensions, rrf)
        finally:
            await index.close()
    raise ValueError(f"unknown index {name!r} (sqlite, postgres, qdrant)")


def build_model(args):
    if args.embedder == "none":
        return None
    if args.embedder == "local":
        from knowledge.embeddings import LocalEmbedder

        return LocalEmbedder(args.model or "all-MiniLM-L6-v2")
    from knowledge.embeddings import OpenAIEmbedder

    return OpenAIEmbedder(args.url, args.api_key or os.environ.get("OPENAI_API_KEY"), args.model or "text-embedding-3-small")


def fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def report(corpus: Corpus, prepared: Prepared, results: list[Result], embedder, question_ms: list[float]) -> None:
    t = prepared.timings
    pages = corpus.pages
    kinds = {k: sum(1 for f in corpus.facts if f.kind == k) for k in ("paraphrased", "lexical")}
    print(f"corpus: {len(corpus.documents)} PDFs, {pages} pages, {prepared.pdf_bytes / 1e6:.1f} MB; "
          f"{len(corpus.facts)} questions ({kinds['paraphrased']} paraphrased, {kinds['lexical']} lexical); "
          f"{sum(len(c) for c in prepared.chunks)} chunks")
    print(f"embedder: {embedder.label if embedder else 'none (lexical only)'}"
          + (f", {embedder.dimensions} dimensions" if embedder else ""))
    print(f"stages (shared): PDFs generated {t['generate PDFs']:.1f} s (not counted); extraction {t['extract']:.1f} s "
          f"({pages / t['extract']:.0f} pages/s), chunking {t['chunk']:.2f} s, embedding {t['embed']:.1f} s"
          + (f" ({sum(len(c) for c in prepared.chunks) / t['embed']:.1f} chunks/s)" if t['embed'] else "")
          + f"; worst event-loop stall meanwhile {prepared.worst_stall_ms:.0f} ms")
    if question_ms:
        print(f"question embedding (one at a time): p50 {statistics.median(question_ms):.1f} ms, p95 {p95(question_ms):.1f} ms")
    print()
    header = ["index", "chunks", "vectors", "recall@5 lexical", "vector", "hybrid", "either", "ingest pages/s", "index-only pages/s",
              "lexical p50/p95 ms", "hybrid p50/p95 ms"]
    rows = []
    for r in results:
        embed = t["embed"] if r.vectors else 0.0
        total = t["extract"] + t["chunk"] + embed + r.index_seconds
        lat = {m: (f"{v[0]:.1f} / {v[1]:.1f}" if v else "-") for m, v in r.latency.items()}
        recalls = [fmt(r.recall[m]["all"]) for m in MODES]
        rows.append([r.name, str(r.chunks), str(r.vectors), *recalls, f"{pages / total:.1f}", f"{pages / r.index_seconds:.0f}",
                     lat["lexical"], lat["hybrid"]])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()
    print("recall@5 by question kind (paraphrased / lexical):")
    for r in results:
        parts = [f"{m} {fmt(r.recall[m]['paraphrased'])} / {fmt(r.recall[m]['lexical'])}" for m in MODES]
        print(f"  {r.name}: " + "; ".join(parts))
    for r in results:
        for constant, value in r.fusion.items():
            print(f"  {r.name}: hybrid with RRF k={constant}: {fmt(value['all'])} "
                  f"({fmt(value['paraphrased'])} / {fmt(value['lexical'])})")
    for r in results:
        print(f"  {r.name}: {r.status}")
    sys.stdout.flush()


async def run(args) -> None:
    corpus = generate(pages=args.pages, pages_per_document=args.pages_per_document, seed=args.seed)
    embedder = build_model(args)
    question_ms: list[float] = []
    try:
        prepared = await prepare(corpus, embedder, args.chunk_tokens, args.overlap)
        questions = None
        dimensions = None
        if embedder is not None:
            dimensions = embedder.dimensions
            questions = await embedder.embed([f.question for f in corpus.facts])
            for fact in corpus.facts[: args.latency_questions]:
                t = time.perf_counter()
                await embedder.embed([fact.question])
                question_ms.append((time.perf_counter() - t) * 1000)
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
            for name in args.index:
                if name == "qdrant" and importlib.util.find_spec("knowledge.index_qdrant") is None:
                    print("qdrant: knowledge/index_qdrant.py is not there; skipped")
                    continue
                results.append(await run_index(name, corpus, prepared, questions, dimensions, Path(tmp), args.rrf_k))
                print(f"{results[-1].name}: done", file=sys.stderr)
        report(corpus, prepared, results, embedder, question_ms)
        if args.json:
            print(json.dumps({"pages": corpus.pages, "questions": len(corpus.facts), "timings": prepared.timings,
                              "results": [r.__dict__ for r in results]}, indent=2, default=str))
    finally:
        if embedder is not None:
            await embedder.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000, help="corpus size in pages (default 1000)")
    parser.add_argument("--pages-per-document", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--index", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres", "qdrant"],
                        help="indexes to measure (qdrant: local mode, about a minute more at 1,000 pages)")
    parser.add_argument("--embedder", choices=["local", "openai", "none"], default="local")
    parser.add_argument("--url", help="the OpenAI-compatible endpoint (with --embedder openai)")
    parser.add_argument("--api-key")
    parser.add_argument("--model")
    parser.add_argument("--chunk-tokens", type=int, default=350)
    parser.add_argument("--overlap", type=int, default=60)
    parser.add_argument("--latency-questions", type=int, default=50, help="questions embedded one at a time for latency")
    parser.add_argument("--rrf-k", type=int, nargs="*", default=[],
                        help="also measure hybrid recall with these reciprocal-rank-fusion constants (the index's: 60)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
