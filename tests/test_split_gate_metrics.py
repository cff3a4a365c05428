from collections import Counter

import numpy as np
import pytest

from runtime.knn import knn_vote
from tasks.curate.records import Record
from tasks.curate.split import stratified_split
from tasks.evaluate.classification import classification_metrics
from tasks.evaluate.gate import decide_promotion


def _records(counts: dict[str, int]) -> list[Record]:
    out = []
    for label, n in counts.items():
        out += [Record(id=f"{label}{i}", text=f"{label} {i}", label=label) for i in range(n)]
    return out


def test_split_is_stratified_seeded_and_lossless() -> None:
    records = _records({"a": 50, "b": 20, "c": 5, "solo": 1})
    train, held = stratified_split(records, 0.2, seed=7)
    assert Counter(r.label for r in held) == {"a": 10, "b": 4, "c": 1}
    assert sorted(r.id for r in train + held) == sorted(r.id for r in records)
    assert not {r.id for r in train} & {r.id for r in held}
    assert "solo0" in {r.id for r in train}  # a one-record label cannot be held out
    again, held_again = stratified_split(records, 0.2, seed=7)
    assert [r.id for r in held_again] == [r.id for r in held]
    _, other = stratified_split(records, 0.2, seed=8)
    assert [r.id for r in other] != [r.id for r in held]


def test_metrics_on_a_fixed_case() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "a"]
    m = classification_metrics(truth, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class P/R/F1: a (2/3, 2/3, 2/3), b (2/3, 1, 0.8), c (0, 0, 0)
    assert m["precision_macro"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_metrics_agree_with_scikit_learn_on_random_cases() -> None:
    """The counted metrics are scikit-learn's (labels = the gold ones, macro, zero_division=0),
    to the bit: a tie between two k, two epochs or a candidate and the baseline breaks as it did."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(3)
    for case in range(1000):
        n = int(rng.integers(1, 60))
        gold_pool = ["e", "b", "d", "a", "c", "g", "f", "h", "i"][: int(rng.integers(1, 10))]
        # predictions may use labels no gold one has (x, y), and may miss gold labels entirely
        guess_pool = gold_pool + ["x", "y"][: int(rng.integers(0, 3))]
        truth = [str(label) for label in rng.choice(gold_pool, n)]
        pred = [str(label) for label in rng.choice(guess_pool, n)]
        if case % 3 == 0:  # some mostly right, as trained models are
            pred = [t if rng.random() < 0.8 else p for t, p in zip(truth, pred, strict=True)]
        ours = classification_metrics(truth, pred)
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, pred, labels=sorted(set(truth)), average="macro", zero_division=0
        )
        expected = {
            "accuracy": accuracy_score(truth, pred),
            "precision_macro": precision,
            "recall_macro": recall,
            "f1_macro": f1,
        }
        assert ours == {key: float(value) for key, value in expected.items()}, (truth, pred)


def test_metrics_refuse_no_examples_and_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="1 gold labels against 2 predictions"):
        classification_metrics(["a"], ["a", "b"])


def test_knn_vote_weights_by_similarity() -> None:
    train = np.array([[1, 0], [0.9, 0.436], [0, 1], [0.1, 0.995]])
    labels = ["x", "x", "y", "y"]
    queries = np.array([[0.995, 0.1], [0.2, 0.98], [0.7071, 0.7071]])
    assert knn_vote(train, labels, queries, k=1) == ["x", "y", "x"]
    assert knn_vote(train, labels, queries, k=4) == ["x", "y", "x"]
    assert knn_vote(train, labels, queries[:1], k=10) == ["x"]  # k capped at the pool size


@pytest.mark.parametrize(
    ("candidate", "baseline", "champion", "promote"),
    [
        (0.9, 0.5, None, True),
        (0.9, 0.5, 0.8, True),
        (0.9, 0.95, None, False),  # loses to the baseline
        (0.9, 0.5, 0.9, False),  # a tie with the champion does not promote
        (0.9, 0.5, 0.91, False),
    ],
)
def test_gate(candidate, baseline, champion, promote) -> None:
    decision = decide_promotion(
        "f1_macro",
        {"f1_macro": candidate},
        {"f1_macro": baseline},
        None if champion is None else {"f1_macro": champion},
    )
    assert decision.promote is promote
    assert len(decision.reasons) == 2


def test_gate_lower_is_better_for_perplexity() -> None:
    assert decide_promotion("perplexity", {"perplexity": 10.0}, {"perplexity": 12.0}, None).promote
    assert not decide_promotion(
        "perplexity", {"perplexity": 13.0}, {"perplexity": 12.0}, None
    ).promote
