"""Stage flow: score a candidate on the eval split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from runtime.manifest import KINDS, PackageManifest
from runtime.reward_model import KIND as REWARD_KIND
from tasks.evaluate.classification import evaluate_classifier_task
from tasks.evaluate.forgetting import evaluate_lm_task
from tasks.evaluate.generation import evaluate_generator_task
from tasks.evaluate.reward import evaluate_reward_task


@flow(name="evaluate")
def evaluate(package_dir: str, eval_file: str) -> dict[str, Any]:
    """The candidate's ``metrics``, ``artifacts`` (charts, answers) and ``eval_examples``."""
    package = Path(package_dir)
    manifest = PackageManifest.read(package)
    if manifest.method == "cpt":
        return evaluate_lm_task(package, Path(eval_file))
    if manifest.kind == REWARD_KIND:
        return evaluate_reward_task(package, Path(eval_file), package.parent / "eval")
    if manifest.kind in KINDS.values():
        return evaluate_generator_task(package, Path(eval_file), package.parent / "eval")
    return evaluate_classifier_task(package, Path(eval_file), package.parent / "eval")
