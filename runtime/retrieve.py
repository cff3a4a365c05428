"""Retrieval over an indexed collection: dense, BM25, and hybrid (the two fused).

Dense search is Chroma's HNSW over the embedder's normalised vectors (cosine). BM25 is bm25s
(a maintained, numpy/scipy implementation) over the same chunk texts, built in memory when the
retriever opens, or loaded from ``bm25_cache`` when a build of the very same chunks is there
(see ``Retriever``). Its analyzer (``analyzer="code"``, the default) is made for technical
documentation: identifiers are also indexed as their words (``pbkdf2_hmac`` adds ``pbkdf2``
and ``hmac``, ``NamedTemporaryFile`` adds ``named``, ``temporary``, ``file``), English
stopwords are dropped and every word is reduced to its Snowball stem (PyStemmer), so "compress",
"compressed" and "compression" meet. ``analyzer="words"`` is bm25s's plain tokenizer.

With a ``reranker`` (a sentence-transformers cross-encoder), the first stage's top
``rerank_depth`` chunks are re-ordered by the cross-encoder's score of (query, passage), which
reads both together instead of comparing two separately made vectors; it costs one forward pass
per pair, so it is off unless the spec names a model.

Hybrid fuses the top ``candidates`` of each ranking, by one of:

- ``convex`` (the default): score = (1 - w) · dense + w · bm25, each min-max normalised over
  that query's candidates (a chunk absent from one list scores 0 there), w =
  ``lexical_weight``. Bruch et al. (2023, "An Analysis of Fusion Functions for Hybrid
  Retrieval") found this convex combination better than RRF in and out of domain, because it
  keeps how far apart the scores are, which rank fusion throws away; it also lets a strong
  dense model outweigh a weaker lexical one.
- ``rrf``: reciprocal rank fusion (Cormack et al., 2009), score = sum of 1 / (rrf_k + rank).

On the benchmark's development questions with the plain analyzer, RRF fell below dense alone
(recall@5 0.880 vs 0.895), which is what the convex default and the code analyzer fix; see
``benchmarks/bench_rag.py`` for its question sets.

``per_source`` caps how many of the ``k`` chunks one source file may fill (result collapsing,
as search engines group hits by document). Without it, a long document that matches a query
loosely everywhere can fill every slot: on the benchmark, ``xmlrpc.server`` took all ten chunks
for a question about the XML-RPC *client*, and fusion (which rewards chunks both rankings
like) made that flooding worse than in dense search. With a cap the pool is the top
``candidates`` of each ranking, so fewer than ``k`` chunks come back when the pool runs out of
sources. The cap is applied last, after reranking.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import bm25s
import numpy as np
import Stemmer

from runtime.index import read_all

# bm25s sets its own logger to DEBUG on import and logs every index build, which Prefect's
# handlers would print; so, after importing it:
logging.getLogger("bm25s").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

#: Built BM25 indexes kept per collection folder (newest first); older ones are removed.
BM25_CACHE_KEEP = 3
#: Part of every cache key: bump it when what is stored beside the bm25s files changes.
BM25_CACHE_FORMAT = 1

Mode = Literal["dense", "bm25", "hybrid"]
Fusion = Literal["convex", "rrf"]
Analyzer = Literal["code", "words"]

#: snake_case, camelCase and CapWords identifiers (at least two parts).
_IDENTIFIER = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*"
)
_CASE_CHANGE = re.compile(r"([a-z0-9])([A-Z])")


def split_identifiers(text: str) -> str:
    """``text`` with each identifier followed by its words.

    ``get_filename`` becomes ``get_filename get filename``; ``NamedTemporaryFile`` becomes
    ``NamedTemporaryFile Named Temporary File``.
    """

    def words(match: re.Match[str]) -> str:
        name = match.group(0)
        parts = _CASE_CHANGE.sub(r"\1 \2", name).replace("_", " ")
        return f"{name} {parts}"

    return _IDENTIFIER.sub(words, text)


class LexicalAnalyzer:
    """Turns texts into BM25 tokens, the same way for chunks and queries."""

    def __init__(self, analyzer: Analyzer = "code") -> None:
        self.analyzer = analyzer
        self._stemmer = Stemmer.Stemmer("english") if analyzer == "code" else None

    def __call__(self, texts: list[str]) -> Any:
        """bm25s token ids and vocabulary of ``texts``."""
        if self.analyzer == "code":
            texts = [split_identifiers(t) for t in texts]
        return bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)


def _min_max(scores: list[float]) -> list[float]:
    """Scores scaled to [0, 1] (all equal -> all 1)."""
    if not scores:
        return []
    values = np.asarray(scores, dtype=float)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return [1.0] * len(scores)
    return [float(v) for v in (values - low) / (high - low)]


def fuse_convex(
    rankings: list[list[tuple[str, float]]], weights: list[float]
) -> list[tuple[str, float]]:
    """Weighted sum of each ranking's min-max normalised scores, best first (ties by id)."""
    scores: dict[str, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights, strict=True):
        for (cid, _), scaled in zip(ranking, _min_max([s for _, s in ranking]), strict=True):
            scores[cid] += weight * scaled
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def fuse_rrf(rankings: list[list[tuple[str, float]]], rrf_k: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion, best first (ties by id)."""
    scores: dict[str, float] = defaultdict(float)
    for ranking in rankings:
        for rank, (cid, _) in enumerate(ranking, start=1):
            scores[cid] += 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def _prune(parent: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used stored builds in ``parent``.

    Also removes temporary folders an hour old (a process killed while storing one).
    """
    for stale in parent.glob(".*.tmp"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    builds = sorted(
        (p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


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
        fusion: Fusion = "convex",
        lexical_weight: float = 0.2,
        analyzer: Analyzer = "code",
        reranker: Any = None,
        rerank_depth: int = 20,
        per_source: int | None = None,
        bm25_cache: Path | None = None,
    ) -> None:
        """Read every chunk of ``collection``; build (or load) BM25 unless ``mode`` is dense.

        ``bm25_cache``: a folder for this collection's built BM25 indexes. Tokenizing and
        indexing every chunk is most of a hybrid retriever's opening time (about 11 of 16 s
        at 100k chunks on 2 cores), and a ``predict`` process opens one for each call. A
        build is stored under a hash of the analyzer, the bm25s version and every (id, text)
        pair, so it is reused only for exactly the same chunks; a changed collection builds
        and stores a new one, and the newest ``BM25_CACHE_KEEP`` are kept. A cache that
        cannot be read or written is rebuilt or skipped, with a warning, never an error.
        """
        if per_source is not None and per_source < 1:
            raise ValueError(f"per_source must be at least 1 (or None), not {per_source}")
        self.collection, self.encoder, self.mode = collection, encoder, mode
        self.per_source = per_source
        self.candidates, self.rrf_k = candidates, rrf_k
        self.fusion, self.lexical_weight = fusion, lexical_weight
        self.reranker, self.rerank_depth = reranker, rerank_depth
        self.analyze = LexicalAnalyzer(analyzer)
        self._bm25: Any = None
        stored = read_all(collection, ["documents", "metadatas"])
        self.chunks = {
            cid: (text, meta)
            for cid, text, meta in zip(
                stored["ids"], stored["documents"], stored["metadatas"], strict=True
            )
        }
        self._order = list(self.chunks)
        #: True when BM25 came from ``bm25_cache`` rather than being built at opening
        self.bm25_from_cache = False
        if mode != "dense" and self._order:
            folder = bm25_cache / self._bm25_key() if bm25_cache is not None else None
            if folder is not None and self._load_bm25(folder):
                self.bm25_from_cache = True
            else:
                self._bm25 = bm25s.BM25()
                texts = [self.chunks[cid][0] for cid in self._order]
                self._bm25.index(self.analyze(texts), show_progress=False)
                if folder is not None:
                    self._store_bm25(folder)

    def with_search(
        self, mode: Mode, fusion: Fusion, lexical_weight: float, rerank_depth: int
    ) -> Retriever:
        """This retriever searching another way over the same chunks, vectors and BM25 index.

        What choosing settings on validation questions tries (``tasks.rag.tune``): re-ranking
        the same chunks costs no re-reading and no BM25 build.

        Raises:
            ValueError: When ``mode`` needs BM25 and this retriever was opened without it.
        """
        if mode != "dense" and self._bm25 is None and self._order:
            raise ValueError(f"search mode '{mode}' needs BM25; open the retriever in that mode")
        other = copy.copy(self)
        other.mode, other.fusion, other.lexical_weight = mode, fusion, float(lexical_weight)
        other.rerank_depth = int(rerank_depth)
        return other

    def _bm25_key(self) -> str:
        """A hash of what the BM25 index is a function of (independent of reading order)."""
        digest = hashlib.sha256(
            f"{BM25_CACHE_FORMAT}\x00{self.analyze.analyzer}\x00{bm25s.__version__}".encode()
        )
        for cid in sorted(self.chunks):
            digest.update(f"\x01{cid}\x00".encode())
            digest.update(self.chunks[cid][0].encode())
        return digest.hexdigest()[:32]

    def _load_bm25(self, folder: Path) -> bool:
        """Load a stored build of these chunks; False when there is none or it is unusable."""
        if not (folder / "order.json").is_file():
            return False
        try:
            order = json.loads((folder / "order.json").read_text())
            if len(order) != len(self.chunks) or set(order) != self.chunks.keys():
                raise ValueError("its chunk ids differ from the collection's")
            self._bm25 = bm25s.BM25.load(str(folder), show_progress=False)
        except Exception as error:  # a damaged cache is rebuilt, never fatal
            log.warning("BM25 cache %s unusable (%s); rebuilding it", folder, error)
            shutil.rmtree(folder, ignore_errors=True)  # so that the rebuild takes its place
            return False
        self._order = order
        os.utime(folder)  # recently used: pruned last
        return True

    def _store_bm25(self, folder: Path) -> None:
        """Write this build to ``folder`` (atomically: a temporary folder, then a rename)."""
        temporary = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            self._bm25.save(str(temporary), show_progress=False)
            # written last: a folder without it is never loaded
            (temporary / "order.json").write_text(json.dumps(self._order))
            try:
                temporary.rename(folder)
            except OSError:  # another process stored the same build first
                shutil.rmtree(temporary, ignore_errors=True)
            _prune(folder.parent, BM25_CACHE_KEEP)
        except OSError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            log.warning("could not store the BM25 index in %s (%s)", folder.parent, error)

    def _hit(self, cid: str, score: float) -> Hit:
        text, meta = self.chunks[cid]
        # the stored text starts with the heading path (what was embedded); a hit shows the
        # paragraphs, and the path as its title
        header = str(meta.get("header") or "")
        if header and text.startswith(f"{header}\n\n"):
            text = text[len(header) + 2 :]
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
        tokens = self.analyze(queries)
        docs, scores = self._bm25.retrieve(tokens, k=n, show_progress=False)
        return [
            [(self._order[int(i)], float(s)) for i, s in zip(row, srow, strict=True) if s > 0]
            for row, srow in zip(docs, scores, strict=True)
        ]

    def search_many(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """The top ``k`` chunks for each query, best first (reranked when a reranker is set).

        With ``per_source``, at most that many of them from one source (see the module doc).
        """
        depth = k if self.per_source is None else max(k, self.candidates)
        if self.reranker is None:
            found = self._first_stage(queries, depth)
        else:
            found = self._first_stage(queries, max(depth, self.rerank_depth))
            found = [self._rerank(query, hits) for query, hits in zip(queries, found, strict=True)]
        return [self._per_source(hits)[:k] for hits in found]

    def _per_source(self, hits: list[Hit]) -> list[Hit]:
        """``hits`` in order, keeping at most ``per_source`` from each source."""
        if self.per_source is None:
            return hits
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for hit in hits:
            if taken[hit.source] < self.per_source:
                taken[hit.source] += 1
                kept.append(hit)
        return kept

    def _rerank(self, query: str, hits: list[Hit]) -> list[Hit]:
        """``hits`` ordered by the cross-encoder's score of (query, passage), best first."""
        if not hits:
            return hits
        scores = self.reranker.predict(
            [(query, h.text) for h in hits], batch_size=32, show_progress_bar=False
        )
        order = sorted(range(len(hits)), key=lambda i: (-float(scores[i]), i))
        return [replace(hits[i], score=float(scores[i])) for i in order]

    def _first_stage(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The top ``k`` chunks for each query by ``mode``, best first."""
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
            if self.fusion == "convex":
                weights = [1.0 - self.lexical_weight, self.lexical_weight]
                best = fuse_convex([dense, lexical], weights)[:k]
            else:
                best = fuse_rrf([dense, lexical], self.rrf_k)[:k]
            fused.append([self._hit(c, s) for c, s in best])
        return fused

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The top ``k`` chunks for one query."""
        return self.search_many([query], k)[0]
