"""The knowledge index on Qdrant: a server or cluster, or qdrant-client's embedded local mode.

URLs:
    qdrant://host:6333?collection=NAME&api_key=KEY   a server over HTTP (`qdrants://` for HTTPS;
                                                     the key may also come from QDRANT_API_KEY)
    qdrant+local:///abs/folder                       embedded, on disk (one process at a time)
    qdrant+memory://                                 embedded, in memory (tests)

One collection (default `chainlit_knowledge`) holds every user's chunks, one point per chunk
(id: a UUID5 of owner and chunk id). Words: a sparse vector `lexical` per point with Qdrant's
IDF modifier, which makes the score BM25: this module stores each term's saturated frequency
`tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / AVERAGE_LENGTH))` (k1 1.2, b 0.75, and a fixed
average length, since Qdrant keeps IDF statistics but not document lengths) at a stable 32-bit
hash of the term; a query has weight 1 per term. Meaning: a named dense vector `dense` (cosine)
when an embedding model is configured. Every query carries a `must` filter on the owner, and
on a server the owner's keyword index is a tenant index, so a search stays within one user's
points rather than filtering a global top-k.

When the embedding size changes (another model), the `dense` vector is deleted and created
again with the new size (the chunks and their words stay); a server too old for that keeps
working by words only, with a WARNING, until the collection is re-created and re-ingested.

The local mode computes in the calling thread, so it runs on a worker thread of its own
(with the synchronous client); a server is spoken to with the asynchronous client.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .index import Chunk, IndexStatus, KnowledgeError, KnowledgeIndex, Scope, document_terms, logger

log = logger.getChild("Qdrant")

DEFAULT_COLLECTION = "chainlit_knowledge"
DENSE, LEXICAL = "dense", "lexical"
BM25_K1, BM25_B = 1.2, 0.75
#: Words in a typical chunk: the length that BM25's normalisation treats as average.
AVERAGE_LENGTH = 200
UPSERT_BATCH = 256
_POINT_NAMESPACE = uuid.UUID("6f2c1a4e-8d3b-5e7f-9a1c-2b4d6e8f0a13")
_KEYWORD_FIELDS = ("thread_id", "document_id", "step_id", "kind")


def term_index(term: str) -> int:
    """A stable 32-bit index for a term (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


def sparse_document(text: str) -> tuple[list[int], list[float]]:
    terms = document_terms(text)
    weights: dict[int, float] = {}
    norm = BM25_K1 * (1 - BM25_B + BM25_B * len(terms) / AVERAGE_LENGTH)
    for term, tf in Counter(terms).items():
        # Two terms with one hash (rare at 32 bits) share a slot: their weights add up.
        index = term_index(term)
        weights[index] = weights.get(index, 0.0) + tf * (BM25_K1 + 1) / (tf + norm)
    return list(weights), list(weights.values())


def sparse_query(terms: list[str]) -> tuple[list[int], list[float]]:
    indices = list(dict.fromkeys(term_index(term) for term in terms))
    return indices, [1.0] * len(indices)


def point_id(user_id: str, chunk_id: str) -> str:
    # The owner is part of the id: another user's chunk with the same id never replaces it.
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{user_id}\x00{chunk_id}"))


def parse_url(url: str) -> tuple[dict[str, Any], str]:
    """(AsyncQdrantClient / QdrantClient keyword arguments, collection name)."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    collection = options.pop("collection", DEFAULT_COLLECTION)
    if not collection or "/" in collection:
        raise ValueError(f"not a Qdrant collection name: {collection!r}")
    if parts.scheme == "qdrant+memory":
        return {"location": ":memory:"}, collection
    if parts.scheme == "qdrant+local":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/") or path == "/":
            raise ValueError("qdrant+local:// needs an absolute folder: qdrant+local:///abs/folder")
        return {"path": path}, collection
    if parts.scheme not in ("qdrant", "qdrants") or not parts.hostname:
        raise ValueError("a Qdrant server URL is qdrant://host:6333 or qdrants://host:6333")
    web = "https" if parts.scheme == "qdrants" else "http"
    kwargs: dict[str, Any] = {"url": f"{web}://{parts.hostname}:{parts.port or 6333}",
                              "api_key": options.pop("api_key", None) or os.environ.get("QDRANT_API_KEY") or None}
    if parts.path.strip("/"):
        kwargs["prefix"] = parts.path.strip("/")
    if "timeout" in options:
        kwargs["timeout"] = int(options.pop("timeout"))
    return kwargs, collection


def _chunk(payload: dict[str, Any]) -> Chunk:
    return Chunk(id=payload["id"], user_id=payload["user_id"], thread_id=payload["thread_id"],
                 document_id=payload["document_id"], ordinal=int(payload["ordinal"]), text=payload["text"],
                 source=payload["source"], location=payload.get("location", ""), step_id=payload.get("step_id"),
                 kind=payload.get("kind", "document"))


class QdrantKnowledgeIndex(KnowledgeIndex):
    name = "qdrant"

    def __init__(self, url: str):
        super().__init__(url)
        self._options, self.collection = parse_url(url)
        self.embedded = "url" not in self._options
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._vectors_ready = False
        self._note = ""

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One client call; the SDK's errors become KnowledgeError (the boundary)."""
        from qdrant_client.http.exceptions import ApiException

        if self._client is None:
            raise KnowledgeError("the Qdrant knowledge index is not started")
        try:
            if self._executor is not None:
                bound = functools.partial(getattr(self._client, method), **kwargs)
                return await asyncio.get_running_loop().run_in_executor(self._executor, bound)
            return await getattr(self._client, method)(**kwargs)
        except (ApiException, OSError) as exc:
            raise KnowledgeError(f"Qdrant {method}: {type(exc).__name__}: {exc}") from exc

    # ---- life cycle -------------------------------------------------------------------------
    async def _start(self, dimensions: int | None) -> None:
        from qdrant_client import AsyncQdrantClient, QdrantClient

        if self._client is None:
            if self.embedded:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-qdrant")
                loop = asyncio.get_running_loop()
                try:
                    self._client = await loop.run_in_executor(self._executor, functools.partial(QdrantClient, **self._options))
                except Exception as exc:  # a folder held by another process, unreadable files
                    self._executor.shutdown(wait=False)
                    self._executor = None
                    raise KnowledgeError(f"cannot open the embedded Qdrant store: {type(exc).__name__}: {exc}") from exc
            else:
                self._client = AsyncQdrantClient(**self._options)
        if not await self._call("collection_exists", collection_name=self.collection):
            await self._create_collection(dimensions)
        if not self.embedded:
            await self._payload_indexes()
        await self._prepare_vectors(dimensions)
        if dimensions is not None and not self._vectors_ready:
            log.warning("Knowledge index: vector search is off: %s", self._note)

    async def _create_collection(self, dimensions: int | None) -> None:
        from qdrant_client import models

        vectors = {DENSE: models.VectorParams(size=dimensions, distance=models.Distance.COSINE)} if dimensions else {}
        try:
            await self._call("create_collection", collection_name=self.collection, vectors_config=vectors,
                             sparse_vectors_config={LEXICAL: models.SparseVectorParams(modifier=models.Modifier.IDF)})
        except KnowledgeError:
            # Another app process created it first; anything else is still an error.
            if not await self._call("collection_exists", collection_name=self.collection):
                raise

    async def _payload_indexes(self) -> None:
        """On a server (the local mode has none), at every start so that a collection made
        elsewhere gets them too (creating an existing one is a no-op): they make the filters
        cheap, and the owner's is a tenant index (points stored and searched per user)."""
        from qdrant_client import models

        await self._call("create_payload_index", collection_name=self.collection, field_name="user_id",
                         field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True))
        for name in _KEYWORD_FIELDS:
            await self._call("create_payload_index", collection_name=self.collection, field_name=name,
                             field_schema=models.PayloadSchemaType.KEYWORD)

    async def _prepare_vectors(self, dimensions: int | None) -> None:
        from qdrant_client import models

        self._vectors_ready, self._note = False, ""
        if dimensions is None:
            return  # kept vectors stay, unused, for when the model comes back
        info = await self._call("get_collection", collection_name=self.collection)
        vectors = info.config.params.vectors
        current = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if current is not None and current.size == dimensions:
            self._vectors_ready = True
            return
        try:
            if current is not None:
                log.warning("The embedding size changed from %s to %s: dropping the stored vectors "
                            "(chunks stay searchable by words; re-ingest documents for vector search)",
                            current.size, dimensions)
                await self._call("delete_vector_name", collection_name=self.collection, vector_name=DENSE)
            await self._call("create_vector_name", collection_name=self.collection, vector_name=DENSE,
                             vector_name_config=models.DenseVectorNameConfig(
                                 dense=models.DenseVectorConfig(size=dimensions, distance=models.Distance.COSINE)))
        except (KnowledgeError, NotImplementedError, ValueError) as exc:
            self._note = (f"the collection {self.collection!r} has no {dimensions}-dimension vector and this Qdrant "
                          f"could not add one ({exc}); delete the collection and re-ingest to search by meaning")
            return
        self._vectors_ready = True

    async def _close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            if self._executor is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
            else:
                await client.close()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None

    def _supports_vectors(self) -> bool:
        return self._vectors_ready

    def _status(self) -> IndexStatus:
        vectors = f"Qdrant dense cosine ({self.dimensions} dimensions)" if self._vectors_ready else None
        note = self._note or ("" if self.dimensions is not None else "no embedding model configured")
        where = self._options.get("url") or self._options.get("path") or "memory"
        return IndexStatus(backend="qdrant", lexical="Qdrant sparse BM25 (IDF modifier)", vectors=vectors, note=note,
                           extra={"collection": self.collection, "where": where})

    # ---- filters ----------------------------------------------------------------------------
    @staticmethod
    def _filter(*, kinds: tuple[str, ...] | None = None, has_vector: bool = False, **keys: str | None) -> Any:
        from qdrant_client import models

        must: list[Any] = [models.FieldCondition(key=key, match=models.MatchValue(value=value))
                           for key, value in keys.items() if value]
        if kinds is not None:
            must.append(models.FieldCondition(key="kind", match=models.MatchAny(any=list(dict.fromkeys(kinds)))))
        if has_vector:
            must.append(models.HasVectorCondition(has_vector=DENSE))
        return models.Filter(must=must) if must else None

    def _scope_filter(self, scope: Scope) -> Any:
        return self._filter(user_id=scope.user_id, thread_id=scope.thread_id, kinds=scope.kinds)

    # ---- writes -----------------------------------------------------------------------------
    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        """CPU work (hashing terms, building models) away from the event loop."""
        if self._executor is not None:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await asyncio.to_thread(fn, *args)

    def _points(self, chunks: list[Chunk], vectors: list[list[float]] | None) -> list[Any]:
        from qdrant_client import models

        points = []
        for i, c in enumerate(chunks):
            indices, values = sparse_document(c.text)
            # An upsert replaces the whole point: a replaced chunk's old vector goes with it.
            vector: dict[str, Any] = {LEXICAL: models.SparseVector(indices=indices, values=values)}
            if vectors is not None and self._vectors_ready:
                vector[DENSE] = vectors[i]
            payload = {"id": c.id, "user_id": c.user_id, "thread_id": c.thread_id, "document_id": c.document_id,
                       "step_id": c.step_id, "ordinal": c.ordinal, "kind": c.kind, "source": c.source,
                       "location": c.location, "text": c.text}
            points.append(models.PointStruct(id=point_id(c.user_id, c.id), vector=vector, payload=payload))
        return points

    async def _add(self, chunks: list[Chunk], vectors: list[list[float]] | None) -> None:
        for start in range(0, len(chunks), UPSERT_BATCH):
            batch = vectors[start:start + UPSERT_BATCH] if vectors is not None else None
            points = await self._off_loop(self._points, chunks[start:start + UPSERT_BATCH], batch)
            await self._call("upsert", collection_name=self.collection, points=points, wait=True)

    async def _delete(self, *, user_id: str | None, thread_id: str | None, step_id: str | None,
                      document_id: str | None) -> int:
        from qdrant_client import models

        flt = self._filter(user_id=user_id, thread_id=thread_id, step_id=step_id, document_id=document_id)
        # Counted first, then deleted by the same filter (not by the counted ids), so a chunk
        # added in between is deleted too; the count is then only informative.
        found = (await self._call("count", collection_name=self.collection, count_filter=flt, exact=True)).count
        if found:
            await self._call("delete", collection_name=self.collection,
                             points_selector=models.FilterSelector(filter=flt), wait=True)
        return int(found)

    # ---- reads ------------------------------------------------------------------------------
    async def _query(self, using: str, query: Any, scope: Scope, limit: int) -> list[Chunk]:
        response = await self._call("query_points", collection_name=self.collection, query=query, using=using,
                                    query_filter=self._scope_filter(scope), limit=limit, with_payload=True,
                                    with_vectors=False)
        return [_chunk(point.payload) for point in response.points if point.payload]

    async def _lexical(self, scope: Scope, terms: list[str], limit: int) -> list[Chunk]:
        from qdrant_client import models

        indices, values = sparse_query(terms)
        return await self._query(LEXICAL, models.SparseVector(indices=indices, values=values), scope, limit)

    async def _vector(self, scope: Scope, vector: list[float], limit: int) -> list[Chunk]:
        return await self._query(DENSE, vector, scope, limit)

    async def _count(self, *, user_id: str | None, thread_id: str | None, document_id: str | None) -> int:
        flt = self._filter(user_id=user_id, thread_id=thread_id, document_id=document_id)
        return int((await self._call("count", collection_name=self.collection, count_filter=flt, exact=True)).count)

    async def _vector_count(self, *, user_id: str | None, document_id: str | None) -> int:
        if not self._vectors_ready:
            info = await self._call("get_collection", collection_name=self.collection)
            vectors = info.config.params.vectors
            if not (isinstance(vectors, dict) and DENSE in vectors):
                return 0
        flt = self._filter(user_id=user_id, document_id=document_id, has_vector=True)
        return int((await self._call("count", collection_name=self.collection, count_filter=flt, exact=True)).count)
