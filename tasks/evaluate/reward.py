"""Score reward models (method ``reward``) and their untrained baseline on held-out pairs.

One scoring path (``score_reward_model``) for the candidate, its baseline (the base model with
a fresh, seeded scalar head: what the data alone, with no training, would rank) and the
champion's re-scoring, so the gate compares like with like.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.reward_model import RewardModel
from tasks.curate.records import read_jsonl
from tasks.evaluate.preference import answers_of, is_preference, score_metrics


def score_reward_model(model: RewardModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``metrics`` (``preference_accuracy``, ``reward_margin``) and each answer's ``scores``.

    Raises:
        ValueError: When ``rows`` are not preference data.
    """
    if not is_preference(rows):
        raise ValueError("a reward model is scored on preference pairs or KTO-labelled answers")
    answers = answers_of(rows)
    scores = model.score([a[0] for a in answers], [a[1] for a in answers], [a[2] for a in answers])
    return {"metrics": score_metrics(scores, rows), "scores": scores}


def evaluate_reward(package_dir: Path, eval_path: Path, out_dir: Path) -> dict[str, Any]:
    """Score a reward model package on the curated eval split.

    Returns:
        ``metrics``, ``artifacts`` (each held-out answer with its score, JSONL) and
        ``eval_examples``.
    """
    rows = read_jsonl(eval_path)
    scored = score_reward_model(RewardModel.from_package(package_dir), rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval_scores.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for (prompt, answer, _), score in zip(answers_of(rows), scored["scores"], strict=True):
            handle.write(json.dumps({"text": prompt, "answer": answer, "score": score}) + "\n")
    return {"metrics": scored["metrics"], "artifacts": [str(path)], "eval_examples": len(rows)}


def reward_baseline(
    base_model: str, eval_path: Path, max_length: int, seed: int, allow_pickle: bool = False
) -> dict[str, Any]:
    """The no-training baseline: the base model with a fresh scalar head drawn from ``seed``."""
    model = RewardModel.from_base(base_model, max_length, seed, allow_pickle)
    scored = score_reward_model(model, read_jsonl(eval_path))
    return {
        "metrics": scored["metrics"],
        "method": f"base model '{base_model}' with an untrained scalar head (seed {seed})",
    }


evaluate_reward_task = task(name="evaluate_reward", cache_policy=NO_CACHE)(evaluate_reward)
reward_baseline_task = task(name="reward_baseline", cache_policy=NO_CACHE)(reward_baseline)
