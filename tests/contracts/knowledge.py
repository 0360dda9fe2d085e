"""The behaviour every knowledge index must have (`knowledge.index.KnowledgeIndex`).

An index joins by subclassing `KnowledgeIndexContract` in a test module and providing:

    open_index   an async callable `open_index(dimensions) -> KnowledgeIndex`: a new instance on
                 this test's store (the same store at every call), already started; the fixture
                 closes whatever is still open at the end of the test
    persistent   (optional, default True) True when an instance opened again sees what an
                 earlier one wrote (a file or a server; False for an in-memory store, whose
                 `open_index` may then return the same instance, started again)

For example, a developer's own index:

    class TestMyIndex(KnowledgeIndexContract):
        @pytest.fixture
        def persistent(self):
            return False

        @pytest.fixture
        async def open_index(self):
            opened = []
            async def open_(dimensions):
                index = MyIndex("my://")
                await index.start(dimensions)
                opened.append(index)
                return index
            yield open_
            for index in opened:
                await index.close()

Capabilities are data: an index whose `vector_search` is False (no vector support on that
server) skips the vector tests with the reason from `status().note`.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
import uuid

import pytest

from knowledge.index import Chunk, KnowledgeIndex, Scope

DIM = 8


def new_id(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def chunk(user: str, thread: str, document: str, ordinal: int, text: str, kind: str = "document",
          step: str | None = None) -> Chunk:
    return Chunk(id=f"{document}:{ordinal}", user_id=user, thread_id=thread, document_id=document, ordinal=ordinal,
                 text=text, source=f"{document}.txt", location=f"part {ordinal}", step_id=step, kind=kind)  # type: ignore[arg-type]


def axis(i: int, dim: int = DIM, tilt: float = 0.0) -> list[float]:
    """The unit vector along axis `i`, tilted towards the next axis by `tilt`."""
    v = [0.0] * dim
    v[i % dim] = 1.0
    v[(i + 1) % dim] = tilt
    return v


def noise(rng: random.Random, dim: int = DIM) -> list[float]:
    v = [rng.uniform(-1, 1) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


FILLER = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def filler(rng: random.Random, words: int = 30) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(words))


HOSTILE_QUERIES = [
    pytest.param('"secret" OR bar*', id="fts-or-prefix"),
    pytest.param("NEAR(secret alpha", id="near"),
    pytest.param("text:secret", id="column-filter"),
    pytest.param("'", id="single-quote"),
    pytest.param("-secret", id="minus"),
    pytest.param("secret\x00alpha", id="nul"),
    pytest.param("'; DROP TABLE knowledge_chunks; --", id="sql"),
    pytest.param("secret & !alpha | <-> :* \\", id="tsquery-operators"),
    pytest.param("(secret) AND NOT {alpha} ^secret", id="parens"),
    pytest.param("ünïcödé 日本語 secret", id="unicode"),
]


class KnowledgeIndexContract:
    @pytest.fixture
    def persistent(self) -> bool:
        return True

    @pytest.fixture
    async def index(self, open_index) -> KnowledgeIndex:
        return await open_index(DIM)

    @pytest.fixture
    async def lexical_index(self, open_index) -> KnowledgeIndex:
        return await open_index(None)

    @staticmethod
    async def ranks_by_vectors(index: KnowledgeIndex) -> bool:
        """True when the index ranks by vectors here. Otherwise (PostgreSQL without pgvector)
        check what it does instead — capability is data, not a skip: it says why, and vectors
        given to it are accepted and ignored while the words still rank."""
        if index.vector_search:
            return True
        status = index.status()
        assert status.vectors is None and status.note, status
        user, thread, doc = new_id("u"), new_id("t"), new_id("d")
        await index.add([chunk(user, thread, doc, 0, "a lone walrus")], [axis(0)])
        hits = await index.search(Scope(user), "walrus", vector=axis(0), k=3)
        assert [(h.lexical_rank, h.vector_rank) for h in hits] == [(1, None)]
        assert await index.vector_count(user_id=user) == 0
        return False

    @staticmethod
    def ids(hits) -> list[str]:
        return [h.chunk.id for h in hits]

    # ---- writes ------------------------------------------------------------------------------
    async def test_add_replaces_by_id(self, lexical_index):
        user, thread, doc = new_id("u"), new_id("t"), new_id("d")
        await lexical_index.add([chunk(user, thread, doc, i, f"original wording {i}") for i in range(3)])
        await lexical_index.add([chunk(user, thread, doc, i, f"revised phrasing {i}") for i in range(3)])
        assert await lexical_index.count(user_id=user) == 3
        assert await lexical_index.count(document_id=doc) == 3
        assert await lexical_index.search(Scope(user), "original wording") == []
        hits = await lexical_index.search(Scope(user), "revised", k=10)
        assert sorted(self.ids(hits)) == sorted(f"{doc}:{i}" for i in range(3))
        assert hits[0].chunk.source == f"{doc}.txt" and hits[0].chunk.thread_id == thread

    async def test_replacing_a_chunk_replaces_its_vector(self, index):
        if not await self.ranks_by_vectors(index):
            return
        user, thread, doc = new_id("u"), new_id("t"), new_id("d")
        await index.add([chunk(user, thread, doc, 0, "first")], [axis(0)])
        await index.add([chunk(user, thread, doc, 0, "second")], [axis(4)])
        assert await index.vector_count(user_id=user) == 1
        hits = await index.search(Scope(user), "", vector=axis(4), k=1)
        assert [h.chunk.text for h in hits] == ["second"]

    async def test_add_checks_its_arguments(self, index):
        user, thread, doc = new_id("u"), new_id("t"), new_id("d")
        with pytest.raises(ValueError):
            await index.add([chunk(user, thread, doc, 0, "x")], [axis(0), axis(1)])
        with pytest.raises(ValueError):
            await index.add([chunk(user, thread, doc, 0, "x")], [[1.0, 0.0]])
        with pytest.raises(ValueError):
            await index.add([chunk("", thread, doc, 0, "x")])
        assert await index.count(user_id=user) == 0

    # ---- ranking -----------------------------------------------------------------------------
    async def test_lexical_finds_the_rare_term_among_many(self, lexical_index):
        rng = random.Random(7)
        user, thread = new_id("u"), new_id("t")
        chunks = [chunk(user, thread, new_id("d"), 0, filler(rng)) for _ in range(400)]
        rare = chunk(user, thread, new_id("d"), 0, filler(rng, 20) + " zymurgy " + filler(rng, 20))
        both = chunk(user, thread, new_id("d"), 0, "quokka " + filler(rng, 10) + " wombat")
        one = [chunk(user, thread, new_id("d"), 0, "quokka " + filler(rng, 10)) for _ in range(5)]
        await lexical_index.add([*chunks[:200], rare, *one, both, *chunks[200:]])
        hits = await lexical_index.search(Scope(user), "Tell me about ZYMURGY, please!")
        assert self.ids(hits)[:1] == [rare.id]
        assert hits[0].lexical_rank == 1 and hits[0].vector_rank is None
        hits = await lexical_index.search(Scope(user), "quokka wombat", k=6)
        assert self.ids(hits)[0] == both.id
        assert set(self.ids(hits)) == {both.id, *(c.id for c in one)}

    async def test_vector_finds_the_nearest(self, index):
        if not await self.ranks_by_vectors(index):
            return
        rng = random.Random(11)
        user, thread = new_id("u"), new_id("t")
        near = [chunk(user, thread, new_id("d"), 0, f"axis {i}") for i in range(DIM)]
        others = [chunk(user, thread, new_id("d"), 0, "noise") for _ in range(200)]
        vectors = [axis(i) for i in range(DIM)] + [[x * 0.3 + 0.1 for x in noise(rng)] for _ in others]
        await index.add([*near, *others], vectors)
        for i in (0, 3, 7):
            hits = await index.search(Scope(user), "", vector=axis(i, tilt=0.2), k=3)
            assert self.ids(hits)[0] == near[i].id
            assert hits[0].vector_rank == 1 and hits[0].lexical_rank is None

    async def test_hybrid_puts_a_chunk_found_both_ways_first(self, index):
        if not await self.ranks_by_vectors(index):
            return
        user, thread = new_id("u"), new_id("t")
        by_words = chunk(user, thread, new_id("d"), 0, "the capybara lives in water, a capybara indeed")
        by_meaning = chunk(user, thread, new_id("d"), 0, "an unrelated sentence")
        by_both = chunk(user, thread, new_id("d"), 0, "a capybara")
        # Vector-only distractors between by_both and by_words, so that by_words (first by words,
        # last by meaning) cannot tie by_both (near the top of both rankings).
        distractors = [chunk(user, thread, new_id("d"), 0, f"filler {i}") for i in range(10)]
        await index.add([by_words, by_meaning, by_both, *distractors],
                        [axis(5), axis(0), axis(0, tilt=0.5), *(axis(0, tilt=1.0) for _ in distractors)])
        hits = await index.search(Scope(user), "capybara", vector=axis(0), k=3)
        assert self.ids(hits)[0] == by_both.id
        assert hits[0].lexical_rank is not None and hits[0].vector_rank == 2
        assert {by_words.id, by_meaning.id} == set(self.ids(hits)[1:])

    async def test_empty_query_returns_nothing_or_vector_hits_only(self, index):
        user, thread = new_id("u"), new_id("t")
        c = chunk(user, thread, new_id("d"), 0, "something to find")
        await index.add([c], [axis(2)] if index.vector_search else None)
        for query in ("", "   ", "!!! ? -", "a"):
            assert await index.search(Scope(user), query) == []
        if index.vector_search:
            hits = await index.search(Scope(user), "", vector=axis(2))
            assert self.ids(hits) == [c.id] and hits[0].lexical_rank is None

    # ---- scope and isolation -----------------------------------------------------------------
    async def test_scope_thread_or_all_of_the_users_threads(self, index):
        user, t1, t2 = new_id("u"), new_id("t"), new_id("t")
        a = chunk(user, t1, new_id("d"), 0, "platypus notes")
        b = chunk(user, t2, new_id("d"), 0, "platypus findings")
        vectors = [axis(1), axis(1, tilt=0.1)] if index.vector_search else None
        await index.add([a, b], vectors)
        assert self.ids(await index.search(Scope(user, thread_id=t1), "platypus")) == [a.id]
        assert set(self.ids(await index.search(Scope(user), "platypus"))) == {a.id, b.id}
        assert await index.count(user_id=user, thread_id=t2) == 1
        if index.vector_search:
            assert self.ids(await index.search(Scope(user, thread_id=t2), "", vector=axis(1))) == [b.id]

    async def test_kinds_filter(self, index):
        user, thread = new_id("u"), new_id("t")
        doc = chunk(user, thread, new_id("d"), 0, "narwhal tusk", kind="document")
        page = chunk(user, thread, new_id("d"), 0, "narwhal migration", kind="page")
        await index.add([doc, page], [axis(3), axis(3)] if index.vector_search else None)
        assert self.ids(await index.search(Scope(user, kinds=("page",)), "narwhal")) == [page.id]
        assert self.ids(await index.search(Scope(user, kinds=("document",)), "narwhal")) == [doc.id]
        assert len(await index.search(Scope(user), "narwhal")) == 2
        if index.vector_search:
            assert self.ids(await index.search(Scope(user, kinds=("page",)), "", vector=axis(3))) == [page.id]

    async def test_a_user_never_gets_another_users_chunks(self, index):
        """A has thousands of chunks with the same words and vectors as B's few: B still gets
        all of its own and none of A's (a global top-k filtered afterwards would give B nothing)."""
        big, small, thread = new_id("a"), new_id("b"), new_id("t")
        text = "the shared secret phrase about okapi"
        vectors = index.vector_search
        for _batch in range(3):
            batch = [chunk(big, thread, new_id("d"), 0, text) for _ in range(1000)]
            await index.add(batch, [axis(6)] * len(batch) if vectors else None)
        mine = [chunk(small, thread, new_id("d"), 0, text) for _ in range(2)]
        # The same chunk ids as some of A's: B's copy must not replace A's.
        same_id = chunk(small, thread, "shared-doc", 0, text)
        theirs = chunk(big, thread, "shared-doc", 0, text)
        await index.add([theirs], [axis(6)] if vectors else None)
        await index.add([*mine, same_id], [axis(6)] * 3 if vectors else None)
        expected = {c.id for c in mine} | {same_id.id}
        hits = await index.search(Scope(small), "okapi secret", vector=axis(6) if vectors else None, k=10)
        assert {h.chunk.id for h in hits} == expected
        assert all(h.chunk.user_id == small for h in hits)
        if vectors:
            semantic = await index.search(Scope(small), "", vector=axis(6), k=10)
            assert {h.chunk.id for h in semantic} == expected
        hits = await index.search(Scope(big), "okapi", vector=axis(6) if vectors else None, k=100)
        assert len(hits) == 100 and all(h.chunk.user_id == big for h in hits)
        assert await index.count(user_id=big) == 3001
        assert await index.count(user_id=small) == 3
        assert await index.search(Scope(new_id("nobody")), "okapi", vector=axis(6) if vectors else None) == []

    # ---- deletes -----------------------------------------------------------------------------
    @pytest.mark.parametrize("key", ["document_id", "step_id", "thread_id", "user_id"])
    async def test_delete_removes_chunks_and_vectors(self, index, key):
        user, other = new_id("u"), new_id("u")
        t1, t2, s1, s2, d1, d2, d3 = (new_id(p) for p in "ttssddd")
        chunks = [
            *(chunk(user, t1, d1, i, f"marmot one {i}", step=s1) for i in range(3)),
            *(chunk(user, t1, d2, i, f"marmot two {i}", step=s2) for i in range(2)),
            *(chunk(user, t2, d3, i, f"marmot three {i}", kind="page") for i in range(2)),
            chunk(other, new_id("t"), new_id("d"), 0, "marmot elsewhere"),
        ]
        vectors = [axis(i) for i in range(len(chunks))] if index.vector_search else None
        await index.add(chunks, vectors)
        target = {"document_id": d1, "step_id": s1, "thread_id": t1, "user_id": user}[key]
        removed = {"document_id": 3, "step_id": 3, "thread_id": 5, "user_id": 7}[key]
        assert await index.delete(**{key: target}) == removed
        assert await index.count(user_id=user) == 7 - removed
        assert await index.count(document_id=d1) == 0
        assert await index.count(user_id=other) == 1
        hits = await index.search(Scope(user), "marmot", k=20)
        assert len(hits) == 7 - removed and d1 not in {h.chunk.document_id for h in hits}
        if index.vector_search:
            assert await index.vector_count(document_id=d1) == 0
            assert await index.vector_count(user_id=user) == 7 - removed
            assert await index.vector_count(user_id=other) == 1
            semantic = await index.search(Scope(user), "", vector=axis(0), k=20)
            assert d1 not in {h.chunk.document_id for h in semantic}
        # Idempotent: deleting again removes nothing and does not fail.
        assert await index.delete(**{key: target}) == 0

    async def test_delete_by_several_keys_must_match_all(self, index):
        user, t1, t2, doc = new_id("u"), new_id("t"), new_id("t"), new_id("d")
        await index.add([chunk(user, t1, doc, 0, "x y"), chunk(user, t2, new_id("d"), 0, "x y")])
        assert await index.delete(user_id=user, document_id=new_id("d")) == 0
        assert await index.delete(user_id=new_id("u"), thread_id=t1) == 0
        assert await index.delete(user_id=user, thread_id=t1) == 1
        assert await index.count(user_id=user) == 1

    async def test_delete_without_a_key_raises(self, index):
        user = new_id("u")
        await index.add([chunk(user, new_id("t"), new_id("d"), 0, "kept")])
        with pytest.raises(ValueError):
            await index.delete()
        with pytest.raises(ValueError):
            await index.delete(user_id="", thread_id=None)
        assert await index.count(user_id=user) == 1

    # ---- hostile text ------------------------------------------------------------------------
    @pytest.mark.parametrize("query", HOSTILE_QUERIES)
    async def test_query_syntax_is_text_not_operators(self, lexical_index, query):
        user, other, thread = new_id("u"), new_id("u"), new_id("t")
        secret = chunk(user, thread, new_id("d"), 0, "the secret recipe")
        plain = chunk(user, thread, new_id("d"), 0, "alpha centauri")
        hostile = chunk(user, thread, new_id("d"), 0, f"stored as is: {query} secret")
        elsewhere = chunk(other, thread, new_id("d"), 0, "another secret recipe alpha")
        await lexical_index.add([secret, plain, hostile, elsewhere])
        hits = await lexical_index.search(Scope(user), query, k=10)
        found = set(self.ids(hits))
        # Every query above holds the word "secret" (or none at all) as plain text: the chunks
        # with that word are found, nothing is excluded or injected, and the other user's never.
        if "secret" in query:
            assert {secret.id, hostile.id} <= found
        assert found <= {secret.id, plain.id, hostile.id}
        assert await lexical_index.count(user_id=user) == 3
        stored = next(h.chunk for h in await lexical_index.search(Scope(user), "stored"))
        assert stored.text.replace("\ufffd", "\x00") == hostile.text

    # ---- life cycle --------------------------------------------------------------------------
    async def test_start_twice_is_idempotent(self, index):
        user, thread = new_id("u"), new_id("t")
        c = chunk(user, thread, new_id("d"), 0, "persistent ocelot")
        await index.add([c], [axis(1)] if index.vector_search else None)
        await index.start(DIM)
        await index.start(DIM)
        assert await index.count(user_id=user) == 1
        assert self.ids(await index.search(Scope(user), "ocelot")) == [c.id]
        if index.vector_search:
            assert await index.vector_count(user_id=user) == 1
            assert self.ids(await index.search(Scope(user), "", vector=axis(1))) == [c.id]
        assert index.status().backend and index.status().lexical

    async def test_reopening_keeps_the_data(self, open_index, persistent):
        if not persistent:
            pytest.skip("an in-memory store: nothing outlives the instance")
        first = await open_index(DIM)
        user, thread = new_id("u"), new_id("t")
        c = chunk(user, thread, new_id("d"), 0, "durable axolotl")
        await first.add([c], [axis(2)] if first.vector_search else None)
        await first.close()
        second = await open_index(DIM)
        assert await second.count(user_id=user) == 1
        assert self.ids(await second.search(Scope(user), "axolotl")) == [c.id]
        if second.vector_search:
            assert self.ids(await second.search(Scope(user), "", vector=axis(2))) == [c.id]

    async def test_a_new_embedding_size_keeps_the_chunks_searchable_by_words(self, open_index, persistent):
        first = await open_index(DIM)
        user, thread = new_id("u"), new_id("t")
        old = chunk(user, thread, new_id("d"), 0, "resilient pangolin")
        await first.add([old], [axis(0)] if first.vector_search else None)
        if persistent:
            await first.close()
            index = await open_index(4)
        else:
            index = first
            await index.start(4)
        assert index.dimensions == 4
        assert await index.count(user_id=user) == 1
        assert self.ids(await index.search(Scope(user), "pangolin", vector=axis(0, 4))) == [old.id]
        if index.vector_search:
            new = chunk(user, thread, new_id("d"), 0, "fresh")
            await index.add([new], [axis(1, 4)])
            assert self.ids(await index.search(Scope(user), "", vector=axis(1, 4), k=1)) == [new.id]

    async def test_a_model_configured_later_adds_vectors_to_the_existing_chunks(self, open_index, persistent):
        first = await open_index(None)
        user, thread = new_id("u"), new_id("t")
        old = chunk(user, thread, new_id("d"), 0, "venerable tortoise")
        await first.add([old])
        if persistent:
            await first.close()
            index = await open_index(DIM)
        else:
            index = first
            await index.start(DIM)
        assert self.ids(await index.search(Scope(user), "tortoise", vector=axis(0))) == [old.id]
        if index.vector_search:
            assert await index.vector_count(user_id=user) == 0
            new = chunk(user, thread, new_id("d"), 0, "young hare")
            await index.add([new], [axis(3)])
            assert await index.vector_count(user_id=user) == 1
            assert self.ids(await index.search(Scope(user), "", vector=axis(3), k=1)) == [new.id]

    async def test_work_does_not_block_the_event_loop(self, index):
        """A design check with a generous bound (not a benchmark): 2,000 chunks added and 40
        searches while a ticker measures how late the loop runs it.

        Time spent in the garbage collector is left out of the lag (and printed apart): a
        collection stops every thread of the process, whichever thread set it off, so it says
        nothing about whether the index works off the loop. An embedded store that keeps
        Python objects per chunk (Qdrant's local mode) sets off long ones."""
        rng = random.Random(3)
        user, thread = new_id("u"), new_id("t")
        worst = worst_raw = worst_gc = 0.0
        # Seconds spent in finished collections, and when the running one began (None: none
        # runs). The loop can run during a collection: finalizers may release the GIL.
        gc_done, gc_since = [0.0], [None]

        def gc_timer(phase: str, _info: dict) -> None:
            nonlocal worst_gc
            now = time.perf_counter()
            if phase == "start":
                gc_since[0] = now
            elif gc_since[0] is not None:
                gc_done[0] += now - gc_since[0]
                worst_gc = max(worst_gc, now - gc_since[0])
                gc_since[0] = None

        def gc_seconds(now: float) -> float:
            return gc_done[0] + (now - gc_since[0] if gc_since[0] is not None else 0.0)

        stop = asyncio.Event()

        async def ticker():
            nonlocal worst, worst_raw
            while not stop.is_set():
                before = time.perf_counter()
                gc_before = gc_seconds(before)
                await asyncio.sleep(0.005)
                after = time.perf_counter()
                late = after - before - 0.005
                worst_raw = max(worst_raw, late)
                worst = max(worst, late - (gc_seconds(after) - gc_before))

        # The test's own work (making chunks and vectors) is done before the ticker starts.
        chunks = [chunk(user, thread, new_id("d"), 0, filler(rng, 60)) for _ in range(2000)]
        vectors = [noise(rng) for _ in chunks] if index.vector_search else None
        queries = [(f"{FILLER[i % 10]} {FILLER[(i + 3) % 10]}", noise(rng) if vectors else None) for i in range(40)]
        gc.callbacks.append(gc_timer)
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        try:
            await index.add(chunks, vectors)
            for text, vector in queries:
                await index.search(Scope(user), text, vector=vector, k=10)
        finally:
            stop.set()
            await task
            gc.callbacks.remove(gc_timer)
        print(f"\n{index.status().backend}: 2,000 chunks + 40 searches in {time.perf_counter() - started:.2f} s, "
              f"worst loop lag {worst * 1000:.1f} ms without GC ({worst_raw * 1000:.1f} ms with it; "
              f"longest collection {worst_gc * 1000:.1f} ms)")
        assert worst < 0.2
        assert await index.count(user_id=user) == 2000
