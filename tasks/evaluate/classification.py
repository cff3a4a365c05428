"""Classification metrics and the confusion-matrix chart."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.curate.records import read_jsonl


def classification_metrics(y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (sklearn; zero where undefined).

    Args:
        y_true: Gold labels.
        y_pred: Predicted labels, same length.

    Returns:
        ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``, each in [0, 1].
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = sorted(set(y_true))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }


def confusion_matrix_png(y_true: list[str], y_pred: list[str], path: Path, title: str) -> Path:
    """Draw the confusion matrix (rows: truth, columns: prediction) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = sorted(set(y_true) | set(y_pred))
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, ax=ax, colorbar=False, xticks_rotation=45
    )
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
