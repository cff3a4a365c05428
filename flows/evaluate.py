"""Stage flow: score the candidate, the no-training baseline and the champion on one eval set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from adaptflow.spec import Spec
from tasks.evaluate.classification import evaluate_classifier_task
from tasks.icl.knn import knn_baseline_task
from tasks.tracking import current_champion, score_champion


@flow(name="evaluate")
def evaluate(spec: Spec, package_dir: str, train_file: str, eval_file: str) -> dict[str, Any]:
    """Returns candidate ``metrics``, ``baseline``, ``champion`` (version and metrics)."""
    package = Path(package_dir)
    candidate = evaluate_classifier_task(package, Path(eval_file), package.parent / "eval")
    baseline = knn_baseline_task(Path(train_file), Path(eval_file), spec.base_model)
    champion_version = current_champion(spec.name)
    champion = score_champion(spec.name, champion_version, eval_file)
    return candidate | {
        "baseline": baseline,
        "champion_version": champion_version,
        "champion_metrics": champion,
    }
