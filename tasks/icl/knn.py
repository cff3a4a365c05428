"""In-context learning for an encoder classifier: a vote of the nearest labelled examples.

The encoder analogue of few-shot prompting (DESIGN.md §1): no weights change; the labelled
examples are embedded once into an index, and a query takes the similarity-weighted vote of its
``k`` nearest examples. ``k`` is tuned by leave-one-out on the training examples themselves
(each example is classified by the others), so no examples are held back from the index and the
eval split stays untouched for the comparison with other methods.

The same vote is the no-training baseline that trained candidates must beat.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.knn import KIND, embed, knn_vote, nearest, vote
from runtime.loading import load_encoder
from runtime.manifest import PackageManifest
from tasks.cache import cached_baseline
from tasks.curate.records import read_jsonl, write_jsonl
from tasks.evaluate.classification import classification_metrics

K_CANDIDATES = (1, 3, 5, 7, 9, 11, 15, 21, 31)


def tune_k(
    vectors: Any, labels: Sequence[str], metric: str = "f1_macro"
) -> tuple[int, dict[int, float]]:
    """Pick ``k`` by leave-one-out over the labelled examples.

    Returns:
        The best ``k`` (the smallest among equals) and the score of every candidate tried.
    """
    names = sorted(set(labels))
    label_ids = [names.index(label) for label in labels]
    candidates = [k for k in K_CANDIDATES if k < len(labels)] or [1]
    sims, idx = nearest(vectors, vectors, max(candidates), exclude_self=True)
    scores = {}
    for k in candidates:
        predicted = [names[i] for i in vote(sims, idx, label_ids, len(names), k)]
        scores[k] = classification_metrics(list(labels), predicted)[metric]
    best = max(candidates, key=lambda k: (scores[k], -k))
    return best, scores


def tuned_index(
    encoder: Any, rows: list[dict[str, Any]], metric: str
) -> tuple[Any, list[str], int, dict[int, float]]:
    """Embed labelled rows and tune ``k`` on them: (vectors, labels, k, score per k).

    The one place the ICL classifier and the kNN baseline build their index, so the baseline
    a trained candidate must beat is exactly the ICL method.
    """
    labels = [row["label"] for row in rows]
    vectors = embed(encoder, [row["text"] for row in rows])
    k, scores = tune_k(vectors, labels, metric)
    return vectors, labels, k, scores


def build_knn_classifier(
    train_path: Path,
    base_model: str,
    out: Path,
    metric: str = "f1_macro",
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Build the ICL package: embed the labelled examples, tune ``k``, save the index.

    Args:
        train_path: Curated training JSONL (``id``, ``text``, ``label``).
        base_model: The encoder (alias, folder or hub id), referenced by the package.
        out: Package folder to write (manifest, ``index/vectors.npy``, ``index/examples.jsonl``).
        metric: Classification metric that ``k`` is tuned for.
        allow_pickle: The spec's ``allow_pickle`` (recorded, so serving loads the same way).

    Returns:
        The same keys as a training recipe's result, plus ``k`` and ``k_scores``.
    """
    import numpy as np

    rows = read_jsonl(train_path)
    started = time.perf_counter()
    encoder = load_encoder(base_model, allow_pickle)
    vectors, labels, k, scores = tuned_index(encoder, rows, metric)
    seconds = time.perf_counter() - started
    (out / "index").mkdir(parents=True, exist_ok=True)
    np.save(out / "index" / "vectors.npy", vectors.astype(np.float32))
    write_jsonl(out / "index" / "examples.jsonl", rows)
    total = sum(p.numel() for p in encoder.parameters())
    PackageManifest(
        kind=KIND,
        method="icl",
        base_model=base_model,
        labels=sorted(set(labels)),
        max_length=int(encoder.max_seq_length),
        trainable_params=0,
        total_params=int(total),
        options={"k": k, "metric": metric, "k_scores": scores, "examples": len(rows)}
        | ({"allow_pickle": True} if allow_pickle else {}),
    ).write(out)
    tokens = sum(len(ids) for ids in encoder.tokenizer([r["text"] for r in rows])["input_ids"])
    return {
        "package_dir": str(out),
        "method": "icl",
        "trainable_params": 0,
        "total_params": int(total),
        "train_seconds": seconds,
        "train_tokens": tokens,
        "steps": 0,
        "loss_history": [],
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "k": k,
        "k_scores": {str(key): value for key, value in scores.items()},
    }


def knn_baseline(
    train_path: Path,
    eval_path: Path,
    base_model: str,
    metric: str = "f1_macro",
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """The no-training baseline: the ICL vote (``k`` tuned on train) scored on the eval split.

    Returns:
        ``metrics`` (the same keys as a trained candidate's) and ``method`` (which baseline).
    """
    eval_rows = read_jsonl(eval_path)
    encoder = load_encoder(base_model, allow_pickle)
    train_vectors, train_labels, k, _ = tuned_index(encoder, read_jsonl(train_path), metric)
    eval_vectors = embed(encoder, [row["text"] for row in eval_rows])
    predicted = knn_vote(train_vectors, train_labels, eval_vectors, k)
    return {
        "metrics": classification_metrics([row["label"] for row in eval_rows], predicted),
        "method": f"nearest-neighbour vote (k={k}, tuned by leave-one-out)",
    }


def majority_baseline(train_path: Path, eval_path: Path) -> dict[str, Any]:
    """The baseline for a no-training candidate: always predict the commonest training label."""
    counts = Counter(row["label"] for row in read_jsonl(train_path))
    top = min(counts, key=lambda label: (-counts[label], label))
    truth = [row["label"] for row in read_jsonl(eval_path)]
    return {
        "metrics": classification_metrics(truth, [top] * len(truth)),
        "method": f"majority class ('{top}')",
    }


build_knn_classifier_task = task(name="build_knn_index", cache_policy=NO_CACHE)(
    build_knn_classifier
)
# scored once per (data, base model, settings) and home: tasks/cache.py
knn_baseline_task = cached_baseline("knn_baseline", ("train_path", "eval_path"))(knn_baseline)
majority_baseline_task = task(name="majority_baseline", cache_policy=NO_CACHE)(majority_baseline)
