"""Hyperparameter search helpers: the trial grid, the validation split, and the pick.

The search (``flows/search.py``) trains each configuration on the training split minus a
validation part and scores it there, so picking a configuration never looks at the eval split
the gate uses.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.spec import LOWER_IS_BETTER
from tasks.curate.records import read_jsonl, write_jsonl
from tasks.curate.split import held_out


def trial_configs(space: dict[str, list[Any]], max_trials: int, seed: int) -> list[dict[str, Any]]:
    """The grid of ``space`` (keys sorted), or a seeded sample of ``max_trials`` of it.

    A sample keeps the grid's order, so trial numbers read in grid order.
    """
    keys = sorted(space)
    grid = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(space[k] for k in keys))
    ]
    if len(grid) <= max_trials:
        return grid
    picked = sorted(random.Random(seed).sample(range(len(grid)), max_trials))
    return [grid[i] for i in picked]


def split_validation(
    train_file: Path, fraction: float, seed: int, out_dir: Path
) -> tuple[Path, Path]:
    """Carve a validation part out of the curated training split (stratified by label).

    Returns:
        (the rest of the training rows, the validation rows), as JSONL files under ``out_dir``.
    """
    rows = read_jsonl(train_file)
    out = held_out([row.get("label") for row in rows], fraction, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    fit, validation = out_dir / "search_train.jsonl", out_dir / "search_validation.jsonl"
    write_jsonl(fit, [row for i, row in enumerate(rows) if i not in out])
    write_jsonl(validation, [row for i, row in enumerate(rows) if i in out])
    return fit, validation


def best_trial(trials: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The trial with the best ``metric`` on validation; ties go to the earlier trial."""
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(trials, key=lambda t: (sign * t["metrics"][metric], t["trial"]))


split_validation_task = task(name="split_validation", cache_policy=NO_CACHE)(split_validation)
