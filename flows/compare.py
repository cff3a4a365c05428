"""Stage flow: score what a candidate must beat, on the candidate's own eval split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from adaptflow.methods import GENERATIVE_TASKS, LM_TASKS
from adaptflow.spec import Spec
from runtime.generate import Sampling
from tasks.evaluate.forgetting import base_lm_baseline_task
from tasks.evaluate.generation import base_model_baseline_task
from tasks.evaluate.reward import reward_baseline_task
from tasks.evaluate.win_rate import load_judge
from tasks.icl.knn import knn_baseline_task, majority_baseline_task
from tasks.tracking import current_champion, score_champion


@flow(name="compare")
def compare(
    spec: Spec,
    method: str,
    train_file: str,
    eval_file: str,
    known_baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The no-training baseline and the current champion, both scored on ``eval_file``.

    The baseline of a trained classifier is the in-context vote (the ICL method itself); the
    baseline of an ICL candidate is the majority class; the baseline of a generative candidate
    is its base model answering the same prompts with no training; that of a reward model the
    base with an untrained (seeded) scalar head; that of a CPT candidate is
    the base model's perplexity on the same domain holdout. ``known_baseline``
    (``metrics`` and ``method``) skips re-scoring one already measured on the same split (the
    ladder's ICL rung).

    With ``align.judge`` the baseline's answers come back too (``baseline_answers``), and the
    champion's ``win_rate`` is against them.

    Returns:
        ``baseline`` (metrics), ``baseline_method``, ``baseline_answers`` (a generative
        baseline's, else None), ``champion_version``, ``champion_metrics``.
    """
    train, held_out = Path(train_file), Path(eval_file)
    rewards = [r.model_dump(exclude_none=True) for r in spec.rewards] or None
    spec_dir = spec.source.parent if spec.source else None
    baseline = known_baseline
    if baseline is None and spec.task in LM_TASKS:
        baseline = base_lm_baseline_task(
            spec.base_model, held_out, spec.train.max_length, spec.allow_pickle
        )
    if baseline is None and method == "reward":
        baseline = reward_baseline_task(
            spec.base_model, held_out, spec.train.max_length, spec.seed, spec.allow_pickle
        )
    if baseline is None and spec.task in GENERATIVE_TASKS:
        baseline = base_model_baseline_task(
            spec.base_model,
            held_out,
            spec.train.max_length,
            spec.train.max_new_tokens,
            spec.allow_pickle,
            rewards,
            spec_dir,
            spec.align.judge is not None,
            Sampling(
                spec.generation.temperature,
                spec.generation.top_p,
                spec.seed,
                spec.generation.repetition_penalty,
            ),
        )
    if baseline is None:
        baseline = (
            majority_baseline_task(train, held_out)
            if method == "icl"
            else knn_baseline_task(train, held_out, spec.base_model, spec.metric, spec.allow_pickle)
        )
    champion_version = current_champion(spec.name)
    versus = None
    if spec.align.judge is not None and "predictions" in baseline and champion_version:
        versus = (load_judge(spec.align.judge, spec_dir), baseline["predictions"])
    return {
        "baseline": baseline["metrics"],
        "baseline_method": baseline["method"],
        "baseline_answers": baseline.get("predictions"),
        "champion_version": champion_version,
        "champion_metrics": score_champion(
            spec.name, champion_version, eval_file, spec.task, rewards, spec_dir, versus
        ),
    }
