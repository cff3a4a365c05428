"""The ICL classifier at inference: a similarity-weighted vote of the nearest labelled examples.

A ``knn-classifier`` package holds the embedded examples (``index/vectors.npy``,
``index/examples.jsonl``) and ``k`` in its manifest; the encoder is referenced. Building the
package and tuning ``k`` are in ``tasks/icl/knn.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptflow.jsonl import read_jsonl
from runtime.loading import load_encoder
from runtime.manifest import PackageManifest

KIND = "knn-classifier"


#: Queries scored per block, so the similarity matrix stays small (block x index size).
BLOCK_ROWS = 1024


def nearest(index: Any, queries: Any, k: int, exclude_self: bool = False) -> tuple[Any, Any]:
    """The ``k`` most similar index rows per query, most similar first.

    Args:
        index: (n, d) L2-normalised vectors.
        queries: (m, d) L2-normalised vectors.
        k: Neighbours to return (capped at what the index holds).
        exclude_self: Queries *are* the index (leave-one-out): row i never returns itself.

    Returns:
        (similarities, indices), both (m, k); ties keep index order.
    """
    import numpy as np

    index = np.asarray(index, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    k = max(1, min(k, len(index) - (1 if exclude_self else 0)))
    sims, idx = [], []
    for start in range(0, len(queries), BLOCK_ROWS):
        block = queries[start : start + BLOCK_ROWS] @ index.T
        if exclude_self:
            rows = np.arange(len(block))
            block[rows, rows + start] = -np.inf
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        idx.append(order)
        sims.append(np.take_along_axis(block, order, axis=1))
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(idx)


def votes(sims: Any, idx: Any, label_ids: Any, n_labels: int, k: int) -> Any:
    """Per query and label: the summed similarity of its first ``k`` neighbours with that label."""
    import numpy as np

    sims, idx = sims[:, :k], idx[:, :k]
    totals = np.zeros((len(sims), n_labels))
    rows = np.repeat(np.arange(len(sims)), sims.shape[1])
    np.add.at(totals, (rows, np.asarray(label_ids)[idx].ravel()), sims.ravel())
    return totals


def vote(sims: Any, idx: Any, label_ids: Any, n_labels: int, k: int) -> Any:
    """Label id per query: the similarity-weighted vote of its first ``k`` neighbours.

    A tie goes to the lower label id (labels are sorted, so alphabetically first).
    """
    return votes(sims, idx, label_ids, n_labels, k).argmax(axis=1)


def knn_vote(
    train_vectors: Any, train_labels: Sequence[str], query_vectors: Any, k: int
) -> list[str]:
    """Label each query by a similarity-weighted vote of its ``k`` nearest training vectors.

    Vectors must be L2-normalised (cosine similarity is then a dot product). Ties go to the
    label whose members are most similar in total, then alphabetically.
    """
    labels = sorted(set(train_labels))
    label_ids = [labels.index(label) for label in train_labels]
    sims, idx = nearest(train_vectors, query_vectors, k)
    return [labels[i] for i in vote(sims, idx, label_ids, len(labels), k)]


def embed(encoder: Any, texts: list[str]) -> Any:
    """L2-normalised float32 embeddings of ``texts``."""
    return encoder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


class KnnClassifier:
    """A loaded ICL package: text in, label out."""

    def __init__(self, folder: Path) -> None:
        import numpy as np

        self.manifest = PackageManifest.read(folder)
        self.vectors = np.load(folder / "index" / "vectors.npy")
        examples = read_jsonl(folder / "index" / "examples.jsonl")
        labels = self.manifest.labels
        self.label_ids = [labels.index(row["label"]) for row in examples]
        self.k = int(self.manifest.options["k"])
        allow_pickle = bool(self.manifest.options.get("allow_pickle", False))
        self.encoder = load_encoder(self.manifest.base_model, allow_pickle)

    def predict(self, texts: list[str]) -> list[str]:
        """One label per text."""
        if not texts:
            return []
        sims, idx = nearest(self.vectors, embed(self.encoder, texts), self.k)
        labels = self.manifest.labels
        return [labels[i] for i in vote(sims, idx, self.label_ids, len(labels), self.k)]

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text: the ``label`` ``predict`` gives and each label's share of the vote."""
        import numpy as np

        if not texts:
            return []
        sims, idx = nearest(self.vectors, embed(self.encoder, texts), self.k)
        labels = self.manifest.labels
        totals = votes(sims, idx, self.label_ids, len(labels), self.k)
        shares = np.clip(totals, 0, None)
        shares = shares / np.maximum(shares.sum(axis=1, keepdims=True), 1e-12)
        return [
            {
                "label": labels[int(row.argmax())],
                "scores": dict(zip(labels, map(float, share), strict=True)),
            }
            for row, share in zip(totals, shares, strict=True)
        ]
