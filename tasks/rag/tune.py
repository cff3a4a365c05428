"""Retrieval settings chosen on a validation share of the questions (``search.auto``).

A retrieval setting the spec leaves unset is chosen on the user's own questions instead of
taken from our constants: on a real corpus nobody here had seen, the fixed defaults (hybrid,
BM25 weight 0.2) lost to a bare dense script, and on this project's development corpora the
best BM25 weight ranged from 0.2 to 0.5 (``benchmarks/bench_quality.py``). A seeded share of
the curated questions (``search.validation_fraction``, default 0.3 of them) is set aside; every
candidate is scored there; the rest of the questions are the eval set the gate and the champion
are scored on, so the choice never sees them.

Candidates vary only the keys the spec left unset:

- search, free (one index, queried again): dense; BM25; hybrid with convex fusion at BM25
  weights 0.1, 0.2, 0.3 and 0.5; hybrid with RRF;
- chunking, one more index each: the default (200 tokens, 40 overlap, paragraphs packed under
  their headings) and the embedder's whole window (its ``max_seq_length`` less 2 special tokens,
  a quarter overlapping), when both ``chunk_tokens`` and ``overlap`` are unset;
- ``rerank_depth`` 10, 20 and 50 when a reranker is named.

``per_source`` is not chosen: it decides which passages a generator is given, not where a source
ranks, and the metrics are per source, so validation cannot tell its values apart. A target
metric that scores generated answers is chosen on ``recall@5`` instead (choosing by answers
would generate once per candidate).

Selection: the target metric on the validation questions, counted in questions, then MRR, then
the candidate order (the defaults first), so a candidate replaces the default only by doing
better on validation. With fewer than ``search.min_validation`` validation questions there is
no choice: the defaults run on all questions, and the run says so.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.spec import ANSWER_METRICS
from runtime.rag import RagRetriever
from tasks.curate.records import read_jsonl, write_jsonl
from tasks.evaluate.retrieval import retrieval_metrics
from tasks.rag.package import build_rag
from tasks.rag.score import EVAL_DEPTH

#: Keys whose values the choice can set, and the search candidates (the default's first).
SEARCH_KEYS = ("mode", "fusion", "lexical_weight")
LEXICAL_WEIGHTS = (0.2, 0.1, 0.3, 0.5)
RERANK_DEPTHS = (20, 10, 50)
CHUNK_KEYS = ("chunk_tokens", "overlap")
#: The fallback when a target metric cannot be computed without generating answers.
CHOICE_METRIC = "recall@5"


def split_questions(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded validation share of ``rows`` and the rest, each in input order."""
    chosen = set(random.Random(seed).sample(range(len(rows)), round(fraction * len(rows))))
    validation = [row for i, row in enumerate(rows) if i in chosen]
    return validation, [row for i, row in enumerate(rows) if i not in chosen]


def search_candidates(retrieval: dict[str, Any], unset: set[str]) -> list[dict[str, Any]]:
    """The search settings to try: the spec's own first, then the unset keys varied."""
    own = {key: retrieval[key] for key in SEARCH_KEYS}
    found = [own]

    def add(**changes: Any) -> None:
        candidate = own | changes
        allowed = all(key in unset or candidate[key] == own[key] for key in SEARCH_KEYS)
        if allowed and candidate not in found:
            found.append(candidate)

    for weight in LEXICAL_WEIGHTS:
        add(mode="hybrid", fusion="convex", lexical_weight=weight)
    add(mode="hybrid", fusion="rrf")
    add(mode="dense")
    add(mode="bm25")
    return found


def chunking_candidates(retrieval: dict[str, Any], unset: set[str], window: int) -> list[dict]:
    """The chunkings to index: the spec's own, and the embedder's whole window if both unset."""
    own = {key: retrieval[key] for key in CHUNK_KEYS}
    whole = {"chunk_tokens": window, "overlap": window // 4}
    if set(CHUNK_KEYS) <= unset and window > own["chunk_tokens"] and whole != own:
        return [own, whole]
    return [own]


def _label(settings: dict[str, Any]) -> str:
    """A short human name of a candidate, for logs and the report."""
    mode = settings["mode"]
    if mode == "hybrid":
        fusion = (
            f"convex, BM25 weight {settings['lexical_weight']}"
            if settings["fusion"] == "convex"
            else "rrf"
        )
        mode = f"hybrid ({fusion})"
    label = f"{mode}, {settings['chunk_tokens']}-token chunks"
    if settings.get("reranker"):
        label += f", reranking the top {settings['rerank_depth']}"
    return label


def _score(rag: RagRetriever, rows: list[dict[str, Any]]) -> dict[str, float]:
    hits = rag.search_many([row["question"] for row in rows], EVAL_DEPTH)
    rankings = [[hit.source for hit in found] for found in hits]
    return retrieval_metrics(rankings, [row["source"] for row in rows])


def choose_retrieval(
    name: str,
    knowledge: Path,
    embedder: str,
    retrieval: dict[str, Any],
    unset: list[str],
    questions_file: Path,
    metric: str,
    fraction: float,
    min_validation: int,
    seed: int,
    home: Path,
    chroma_url: str | None,
    out: Path,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Choose the unset retrieval settings on validation questions (see the module docstring).

    Args:
        name: The spec's name.
        knowledge: The knowledge folder.
        embedder: The spec's ``base_model``.
        retrieval: The spec's ``retrieval`` block (defaults filled in).
        unset: The ``retrieval`` keys the spec left unset (only these vary).
        questions_file: The curated questions.
        metric: The spec's target metric.
        fraction: Share of the questions set aside for validation.
        min_validation: Fewest validation questions a choice is made on.
        seed: The spec's seed (which questions are set aside).
        home: ``ADAPTFLOW_HOME``.
        chroma_url: A Chroma server, or None for the persistent store.
        out: A work folder for the candidates' packages and the question files.
        allow_pickle: The spec's flag for the embedder.

    Returns:
        ``retrieval`` (the settings to use), ``chosen`` (the keys the choice set and their
        values), ``reason``, ``eval_file`` (the questions the gate scores), ``validation_file``
        (None without a choice), ``validation_questions``, ``eval_questions``, ``candidates``
        (each one's settings, label and validation metrics), ``metric`` and ``seconds``.
    """
    started = time.perf_counter()
    rows = read_jsonl(questions_file)
    unset_keys = set(unset)
    result: dict[str, Any] = {
        "retrieval": dict(retrieval),
        "chosen": {},
        "eval_file": str(questions_file),
        "validation_file": None,
        "validation_questions": 0,
        "eval_questions": len(rows),
        "candidates": [],
        "metric": CHOICE_METRIC if metric in ANSWER_METRICS else metric,
    }
    searches = search_candidates(retrieval, unset_keys)
    reranked = retrieval.get("reranker") and "rerank_depth" in unset_keys
    depths = RERANK_DEPTHS if reranked else (retrieval["rerank_depth"],)
    chunk_unset = set(CHUNK_KEYS) <= unset_keys
    varied = sorted(unset_keys & {*SEARCH_KEYS, *CHUNK_KEYS, "rerank_depth"})
    if len(searches) * len(depths) == 1 and not chunk_unset:
        result["reason"] = "nothing to choose: the spec sets the retrieval settings that vary"
        return result | {"seconds": time.perf_counter() - started}
    planned = round(fraction * len(rows))
    if planned < min_validation:
        defaults = {key: retrieval[key] for key in varied}
        result["reason"] = (
            f"too few questions to choose retrieval settings: {len(rows)} questions give "
            f"{planned} for validation (fewer than search.min_validation {min_validation}); "
            f"the defaults that measured most robust are used on all of them: {defaults}"
        )
        return result | {"seconds": time.perf_counter() - started}
    window = _embedder_window(embedder, allow_pickle) if chunk_unset else 0
    chunkings = chunking_candidates(retrieval, unset_keys, window)
    validation, evaluation = split_questions(rows, fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    validation_file, eval_file = out / "validation_questions.jsonl", out / "eval_questions.jsonl"
    write_jsonl(validation_file, validation)
    write_jsonl(eval_file, evaluation)
    choice_metric = result["metric"]
    n = len(validation)
    scored: list[dict[str, Any]] = []
    for number, chunking in enumerate(chunkings):
        # hybrid, so that the package's retriever holds both rankings to re-fuse
        indexed = retrieval | chunking | {"mode": "hybrid"}
        built = build_rag(
            name, knowledge, embedder, indexed, home, chroma_url, out / f"index-{number}",
            allow_pickle,
        )  # fmt: skip
        rag = RagRetriever(Path(built["package_dir"]))
        base = rag.retriever
        for search in searches:
            for depth in depths:
                settings = retrieval | chunking | search | {"rerank_depth": depth}
                rag.retriever = base.with_search(
                    settings["mode"], settings["fusion"], settings["lexical_weight"], depth
                )
                scored.append(
                    {"settings": settings, "label": _label(settings),
                     "metrics": _score(rag, validation), "chunks": built["index"]["chunks"]}
                )  # fmt: skip
    best = max(
        enumerate(scored),
        key=lambda item: (round(item[1]["metrics"][choice_metric] * n), item[1]["metrics"]["mrr"],
                          -item[0]),
    )[1]  # fmt: skip
    default = scored[0]
    chosen = {
        key: best["settings"][key]
        for key in sorted(varied)
        if best["settings"][key] != retrieval[key]
    }
    result |= {
        "retrieval": dict(best["settings"]),
        "chosen": chosen,
        "eval_file": str(eval_file),
        "validation_file": str(validation_file),
        "validation_questions": n,
        "eval_questions": len(evaluation),
        "candidates": scored,
        "reason": (
            f"{best['label']}: {choice_metric} {best['metrics'][choice_metric]:.3f}, MRR "
            f"{best['metrics']['mrr']:.3f} on {n} validation questions (the defaults, "
            f"{default['label']}: {default['metrics'][choice_metric]:.3f}, MRR "
            f"{default['metrics']['mrr']:.3f}; {len(scored)} candidates)"
        ),
    }
    return result | {"seconds": time.perf_counter() - started}


def _embedder_window(embedder: str, allow_pickle: bool) -> int:
    """Tokens the embedder reads of one text, less its two special tokens."""
    from runtime.loading import load_encoder

    return int(load_encoder(embedder, allow_pickle).max_seq_length) - 2


choose_retrieval_task = task(name="choose_retrieval", cache_policy=NO_CACHE)(choose_retrieval)
