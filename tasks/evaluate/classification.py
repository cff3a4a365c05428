"""Classification metrics and the confusion-matrix chart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.curate.records import read_jsonl


def classification_metrics(y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 over the gold labels (zero where undefined).

    The definitions of scikit-learn's ``accuracy_score`` and ``precision_recall_fscore_support``
    (``labels=`` the gold labels, ``average="macro"``, ``zero_division=0``): a predicted label
    no gold one has counts against accuracy and the gold labels' precision, and is not a class
    of its own. Counted here rather than called: importing ``sklearn.metrics`` (it brings
    ``scipy.stats``) cost every ``adaptflow run`` ~0.4 s of its fixed cost, and each call ~3 ms
    of input validation, which the ICL method's ``k`` tuning pays once per candidate.
    ``tests/test_split_gate_metrics.py`` checks both agree, to the bit, on random cases.

    Args:
        y_true: Gold labels.
        y_pred: Predicted labels, same length.

    Returns:
        ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``, each in [0, 1].
    """
    import numpy as np

    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels against {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("no examples to score")
    gold = Counter(y_true)
    predicted = Counter(y_pred)
    hits = Counter(truth for truth, guess in zip(y_true, y_pred, strict=True) if truth == guess)
    precision, recall, f1 = [], [], []
    for label in sorted(gold):  # scikit-learn's order and float arithmetic: equal to the bit
        tp, relevant, chosen = hits[label], gold[label], predicted[label]
        precision.append(tp / chosen if chosen else 0.0)
        recall.append(tp / relevant)
        # 2PR / (P + R) written with counts, as scikit-learn does: relevant > 0, so it is defined
        f1.append(2 * tp / (relevant + chosen))
    return {
        "accuracy": sum(hits.values()) / len(y_true),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
    }


def confusion_matrix_png(y_true: list[str], y_pred: list[str], path: Path, title: str) -> Path:
    """Draw the confusion matrix (rows: truth, columns: prediction) to a PNG.

    Drawn as scikit-learn's ``ConfusionMatrixDisplay`` draws it (viridis cells, counts in the
    colour that contrasts), with matplotlib alone: importing scikit-learn for it cost each run
    ~0.4 s (see ``classification_metrics``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    for truth, guess in zip(y_true, y_pred, strict=True):
        counts[index[truth], index[guess]] += 1
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    image = ax.imshow(counts, interpolation="nearest", cmap="viridis")
    dark, light = image.cmap(0.0), image.cmap(1.0)
    middle = (counts.max() + counts.min()) / 2.0
    for (row, column), value in np.ndenumerate(counts):
        ax.text(
            column,
            row,
            f"{value:d}",
            ha="center",
            va="center",
            color=light if value < middle else dark,
        )
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_classifier(package_dir: Path, eval_path: Path, out_dir: Path) -> dict[str, object]:
    """Score a trained classifier package on the curated eval split.

    Args:
        package_dir: The model package written by a training recipe.
        eval_path: Curated eval JSONL.
        out_dir: Where the confusion matrix PNG goes.

    Returns:
        ``metrics`` (dict), ``confusion_matrix`` (PNG path) and ``eval_examples`` (count).
    """
    from runtime.classifier import predict_labels

    rows = read_jsonl(eval_path)
    truth = [row["label"] for row in rows]
    predicted = predict_labels(package_dir, [row["text"] for row in rows])
    png = confusion_matrix_png(truth, predicted, out_dir / "confusion_matrix.png", "candidate")
    return {
        "metrics": classification_metrics(truth, predicted),
        "confusion_matrix": str(png),
        "artifacts": [str(png)],
        "eval_examples": len(rows),
    }


evaluate_classifier_task = task(name="evaluate_classifier", cache_policy=NO_CACHE)(
    evaluate_classifier
)
