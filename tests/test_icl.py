"""In-context learning for classifiers: nearest-example vote, k tuned by leave-one-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_jsonl

from runtime.classifier import predict_labels
from runtime.knn import KnnClassifier, nearest, vote
from runtime.manifest import PackageManifest
from tasks.icl.knn import build_knn_classifier, majority_baseline, tune_k


def _unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_nearest_excludes_the_query_itself_in_leave_one_out() -> None:
    vectors = _unit([[1, 0], [0.9, 0.1], [0, 1]])
    sims, idx = nearest(vectors, vectors, k=2, exclude_self=True)
    assert idx.tolist() == [[1, 2], [0, 2], [1, 0]]
    assert sims[0, 0] == pytest.approx(float(vectors[0] @ vectors[1]))
    _, with_self = nearest(vectors, vectors, k=1)
    assert with_self.ravel().tolist() == [0, 1, 2]


def test_vote_is_similarity_weighted_and_ties_go_to_the_first_label() -> None:
    sims = np.array([[0.9, 0.5, 0.5], [0.5, 0.5, 0.0]])
    idx = np.array([[0, 1, 2], [1, 0, 2]])
    label_ids = [0, 1, 1]
    # row 0: label 0 gets 0.9, label 1 gets 1.0 with k=3, but only 0.9 vs 0.5 with k=2
    assert vote(sims, idx, label_ids, 2, k=3).tolist() == [1, 0]
    assert vote(sims, idx, label_ids, 2, k=2).tolist() == [0, 0]  # row 1: 0.5 vs 0.5 tie -> 0


def test_tune_k_prefers_more_neighbours_when_single_neighbours_mislead() -> None:
    # Two tight clusters; one "a" point sits among the "b"s and vice versa (label noise).
    rng = np.random.default_rng(0)
    a = rng.normal([1, 0, 0], 0.05, size=(12, 3))
    b = rng.normal([0, 1, 0], 0.05, size=(12, 3))
    vectors = _unit(np.vstack([a, b]).tolist())
    labels = ["a"] * 12 + ["b"] * 12
    labels[0], labels[12] = "b", "a"  # two mislabelled points
    k, scores = tune_k(vectors, labels)
    assert scores[1] < scores[k]
    assert k >= 3
    assert set(scores) == {1, 3, 5, 7, 9, 11, 15, 21}  # candidates below the pool size only


def test_build_save_and_predict_an_icl_package(tmp_path: Path) -> None:
    rows = []
    for i, (text, label) in enumerate(
        [
            ("the cat sat on the mat", "animals"),
            ("a dog barked at the postman", "animals"),
            ("kittens and puppies play", "animals"),
            ("the horse ran across the field", "animals"),
            ("interest rates rose again", "finance"),
            ("the stock market fell sharply", "finance"),
            ("bond yields and inflation", "finance"),
            ("the bank raised its fees", "finance"),
        ]
    ):
        rows.append({"id": str(i), "text": text, "label": label})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    result = build_knn_classifier(train, "minilm", tmp_path / "pkg")
    manifest = PackageManifest.read(tmp_path / "pkg")
    assert manifest.kind == "knn-classifier" and manifest.method == "icl"
    assert manifest.labels == ["animals", "finance"]
    assert manifest.options["k"] == result["k"]
    assert result["trainable_params"] == 0 and result["total_params"] == 22_713_216
    assert np.load(tmp_path / "pkg" / "index" / "vectors.npy").shape == (8, 384)
    queries = ["my puppy chased a cat", "shares and bonds lost value"]
    assert KnnClassifier(tmp_path / "pkg").predict(queries) == ["animals", "finance"]
    assert predict_labels(tmp_path / "pkg", queries) == ["animals", "finance"]
    assert KnnClassifier(tmp_path / "pkg").predict([]) == []


def test_majority_baseline_predicts_the_commonest_training_label(tmp_path: Path) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": t, "label": label} for t, label in [("a", "x"), ("b", "y"), ("c", "y")]],
    )
    held_out = write_jsonl(
        tmp_path / "eval.jsonl",
        [{"text": t, "label": label} for t, label in [("d", "y"), ("e", "x")]],
    )
    result = majority_baseline(train, held_out)
    assert result["method"] == "majority class ('y')"
    assert result["metrics"]["accuracy"] == pytest.approx(0.5)
    assert result["metrics"]["f1_macro"] == pytest.approx((0 + 2 / 3) / 2)
