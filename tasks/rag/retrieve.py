"""Retrieval over an indexed collection: dense, BM25, and hybrid (reciprocal rank fusion).

Dense search is Chroma's HNSW over the embedder's normalised vectors (cosine). BM25 is bm25s
(a maintained, numpy/scipy implementation) over the same chunk texts, built in memory when the
retriever opens. Hybrid fuses the two rankings with reciprocal rank fusion (Cormack et al.,
2009): score(d) = sum over rankings of 1 / (rrf_k + rank), rrf_k = 60, over the top
``candidates`` of each.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import bm25s

from tasks.rag.index import read_all

# bm25s sets its own logger to DEBUG on import and logs every index build, which Prefect's
# handlers would print; so, after importing it:
logging.getLogger("bm25s").setLevel(logging.WARNING)

Mode = Literal["dense", "bm25", "hybrid"]


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    id: str
    text: str
    source: str
    title: str
    score: float


class Retriever:
    """Search one collection by ``mode``; ``search_many`` batches the query embeddings."""

    def __init__(
        self,
        collection: Any,
        encoder: Any,
        mode: Mode = "hybrid",
        candidates: int = 50,
        rrf_k: int = 60,
    ) -> None:
        self.collection, self.encoder, self.mode = collection, encoder, mode
        self.candidates, self.rrf_k = candidates, rrf_k
        self._bm25: Any = None
        stored = read_all(collection, ["documents", "metadatas"])
        self.chunks = {
            cid: (text, meta)
            for cid, text, meta in zip(
                stored["ids"], stored["documents"], stored["metadatas"], strict=True
            )
        }
        self._order = list(self.chunks)
        if mode != "dense" and self._order:
            self._bm25 = bm25s.BM25()
            texts = [self.chunks[cid][0] for cid in self._order]
            self._bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False),
                             show_progress=False)  # fmt: skip

    def _hit(self, cid: str, score: float) -> Hit:
        text, meta = self.chunks[cid]
        return Hit(cid, text, str(meta["source"]), str(meta.get("title", "")), float(score))

    def _dense(self, queries: list[str], n: int) -> list[list[tuple[str, float]]]:
        vectors = self.encoder.encode(queries, batch_size=64, normalize_embeddings=True)
        found = self.collection.query(
            query_embeddings=vectors.tolist(), n_results=n, include=["distances"]
        )
        return [
            [(cid, 1.0 - d) for cid, d in zip(ids, dists, strict=True)]
            for ids, dists in zip(found["ids"], found["distances"], strict=True)
        ]

    def _lexical(self, queries: list[str], n: int) -> list[list[tuple[str, float]]]:
        tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False)
        docs, scores = self._bm25.retrieve(tokens, k=n, show_progress=False)
        return [
            [(self._order[int(i)], float(s)) for i, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(docs, scores, strict=True)
        ]

    def search_many(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """The top ``k`` chunks for each query, best first."""
        if not self.chunks or not queries:
            return [[] for _ in queries]
        n = min(max(k, self.candidates), len(self.chunks))
        if self.mode == "dense":
            rankings = self._dense(queries, min(k, len(self.chunks)))
            return [[self._hit(c, s) for c, s in r] for r in rankings]
        if self.mode == "bm25":
            return [[self._hit(c, s) for c, s in r[:k]] for r in self._lexical(queries, n)]
        fused = []
        for dense, lexical in zip(self._dense(queries, n), self._lexical(queries, n), strict=True):
            scores: dict[str, float] = defaultdict(float)
            for ranking in (dense, lexical):
                for rank, (cid, _) in enumerate(ranking, start=1):
                    scores[cid] += 1.0 / (self.rrf_k + rank)
            best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
            fused.append([self._hit(c, s) for c, s in best])
        return fused

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The top ``k`` chunks for one query."""
        return self.search_many([query], k)[0]
