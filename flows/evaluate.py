"""Stage flow: score a candidate on the eval split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tasks.evaluate.classification import evaluate_classifier_task


@flow(name="evaluate")
def evaluate(package_dir: str, eval_file: str) -> dict[str, Any]:
    """Returns the candidate's ``metrics``, ``confusion_matrix`` (PNG) and ``eval_examples``."""
    package = Path(package_dir)
    return evaluate_classifier_task(package, Path(eval_file), package.parent / "eval")
