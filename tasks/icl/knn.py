"""Nearest-neighbour vote over encoder embeddings: the encoder analogue of few-shot prompting.

Used as the no-training baseline every candidate must beat, on the same eval split.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.curate.records import read_jsonl
from tasks.evaluate.classification import classification_metrics


def knn_vote(
    train_vectors: object, train_labels: list[str], query_vectors: object, k: int
) -> list[str]:
    """Label each query by a similarity-weighted vote of its ``k`` nearest training vectors.

    Vectors must be L2-normalised (cosine similarity is then a dot product). Ties go to the
    label whose members are most similar in total, then alphabetically.
    """
    import numpy as np

    train = np.asarray(train_vectors)
    queries = np.asarray(query_vectors)
    k = max(1, min(k, len(train_labels)))
    similarity = queries @ train.T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    predictions = []
    for row, neighbours in enumerate(nearest):
        votes: dict[str, float] = defaultdict(float)
        for j in neighbours:
            votes[train_labels[j]] += float(similarity[row, j])
        predictions.append(min(votes, key=lambda label: (-votes[label], label)))
    return predictions


def knn_baseline(
    train_path: Path, eval_path: Path, base_model: str, k: int = 5
) -> dict[str, float]:
    """Metrics of the nearest-neighbour vote on the eval split (no training).

    Args:
        train_path: Curated training JSONL (the labelled pool to vote from).
        eval_path: Curated eval JSONL.
        base_model: The encoder used for embeddings (alias, folder or hub id).
        k: Neighbours per vote.

    Returns:
        The same metric keys as a trained candidate's evaluation.
    """
    from sentence_transformers import SentenceTransformer

    from adaptflow.catalogue import resolve_base_model

    train_rows = read_jsonl(train_path)
    eval_rows = read_jsonl(eval_path)
    encoder = SentenceTransformer(resolve_base_model(base_model), device="cpu")

    def embed(rows: list[dict[str, str]]) -> object:
        texts = [row["text"] for row in rows]
        return encoder.encode(texts, batch_size=64, normalize_embeddings=True)

    predicted = knn_vote(embed(train_rows), [r["label"] for r in train_rows], embed(eval_rows), k)
    return classification_metrics([row["label"] for row in eval_rows], predicted)


knn_baseline_task = task(name="knn_baseline", cache_policy=NO_CACHE)(knn_baseline)
