"""Tasks that record a pipeline run in MLflow and register its candidate (through registry/)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.methods import GENERATIVE_TASKS, LM_TASKS
from registry import models, tracking
from registry.card import render_model_card
from tasks.cache import champion_cache


@task(name="open_run", cache_policy=NO_CACHE)
def open_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Start the pipeline's MLflow run with its params and provenance tags."""
    run_id = tracking.start_run(experiment, run_name, tags)
    tracking.log_params(run_id, params)
    return run_id


@task(name="log_stage", cache_policy=NO_CACHE)
def log_stage(
    run_id: str,
    metrics: dict[str, float] | None = None,
    prefix: str = "",
    tags: dict[str, str] | None = None,
    artifacts: list[str] | None = None,
    series: dict[str, list[tuple[int, float]]] | None = None,
    json_artifacts: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> None:
    """Log one stage's metrics, params, tags, files and JSON summaries on the run.

    ``params`` are for values decided during the run (settings chosen on validation); a param
    already logged cannot change.
    """
    if params:
        tracking.log_params(run_id, params)
    if metrics:
        tracking.log_metrics(run_id, metrics, prefix=prefix)
    if tags:
        tracking.set_tags(run_id, tags)
    for key, points in (series or {}).items():
        tracking.log_series(run_id, key, points)
    for path in artifacts or []:
        tracking.log_artifact(run_id, path)
    for name, obj in (json_artifacts or {}).items():
        tracking.log_json(run_id, obj, name)


@task(name="register_candidate", cache_policy=NO_CACHE)
def register_candidate(
    name: str, run_id: str, package_dir: str, card_facts: dict[str, Any], tags: dict[str, str]
) -> dict[str, str]:
    """Log the package as a pyfunc with its model card, register it, point ``challenger`` at it."""
    card = render_model_card(card_facts)
    tracking.log_text(run_id, card, "model_card.md")
    model_uri = models.log_model_package(run_id, Path(package_dir), card)
    version = models.register_candidate(name, model_uri, run_id, tags, description=card)
    return {"model_uri": model_uri, "version": version}


@task(name="current_champion", cache_policy=NO_CACHE)
def current_champion(name: str) -> str | None:
    """The champion's version number, or None."""
    return models.champion_version(name)


@task(name="score_champion", cache_policy=champion_cache(), persist_result=True)
def score_champion(
    name: str,
    version: str | None,
    eval_path: str,
    task: str = "classification",
    rewards: list[dict[str, Any]] | None = None,
    rewards_dir: Path | None = None,
    versus: tuple[Any, list[str]] | None = None,
) -> dict[str, float] | None:
    """Re-score the champion on this run's eval set, so the gate compares like with like.

    Scored once per (registered version, eval bytes, settings) in a home and then read from
    Prefect's cache (``tasks.cache.champion_cache``): a retrain on unchanged data reads it.

    A generative champion is scored like the candidate (``score_generative``): on preference
    rows with the preference metrics, with the run's ``rewards`` (grpo) when given, and with
    ``versus`` (the judge and the base's answers) its ``win_rate``.

    For ``retrieval-qa`` the eval set is the curated questions and the champion's own retriever
    (its package's collection and settings) ranks them, as ``predict`` would.
    """
    if version is None:
        return None
    import tempfile

    from runtime.manifest import PackageManifest
    from runtime.predictor import open_predictor
    from tasks.curate.records import read_jsonl

    rows = read_jsonl(Path(eval_path))
    with tempfile.TemporaryDirectory(prefix="adaptflow-champion-") as tmp:
        # the registered package, through the predictor serving uses (runtime.predictor)
        package = models.download_package(f"models:/{name}/{version}", Path(tmp))
        predictor = open_predictor(package)
        # a generative package's manifest says how its preference metrics are scored
        manifest = PackageManifest.read(package) if task in GENERATIVE_TASKS else None
    if task == "retrieval-qa":
        from tasks.rag.score import score_retriever

        return dict(score_retriever(predictor, rows)["metrics"])
    if task in LM_TASKS:
        from tasks.evaluate.forgetting import lm_metrics

        texts = [row["text"] for row in rows]
        return lm_metrics(predictor.model, predictor.tokenizer, texts, predictor.max_length)
    if manifest is not None and manifest.kind == "reward-model":
        from tasks.evaluate.reward import score_reward_model

        return dict(score_reward_model(predictor, rows)["metrics"])
    if task in GENERATIVE_TASKS:
        from tasks.evaluate.generation import score_generative

        scored = score_generative(predictor, rows, manifest, rewards, rewards_dir, versus)
        return dict(scored["metrics"])
    from tasks.evaluate.classification import classification_metrics

    predicted = predictor.predict([row["text"] for row in rows])
    return classification_metrics([row["label"] for row in rows], list(predicted))


@task(name="promote_if_better", cache_policy=NO_CACHE)
def promote_if_better(
    name: str, version: str, expected_champion: str | None, metric: str | None = None
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` under the registry's promotion lock.

    If the champion changed since it was scored, the candidate is promoted only when it beats
    the new champion on ``metric`` (their registered metric tags); otherwise the result says
    ``promoted: False`` and why, rather than failing the run.
    """
    try:
        result = models.promote(name, version, expected_current=expected_champion, metric=metric)
    except models.PromotionRefused as refused:
        return {
            "name": name,
            "promoted": False,
            "champion_version": refused.champion_version,
            "reason": refused.reason,
        }
    return result | {"promoted": True}


@task(name="close_run", cache_policy=NO_CACHE)
def close_run(run_id: str, succeeded: bool) -> None:
    """Mark the run FINISHED or FAILED."""
    tracking.end_run(run_id, succeeded)


def refresh_retrieval(name: str, retrieval: dict[str, Any], unset: list[str]) -> dict[str, Any]:
    """The ``retrieval`` block to re-index with: the champion's chunking where the spec is silent.

    Chunking left unset may have been chosen on validation (``search.auto``), so the champion
    can search a collection chunked otherwise than the defaults; re-indexing must refresh the
    collection it serves from, not build one of the defaults'.
    """
    keys = [key for key in ("chunk_tokens", "overlap") if key in unset]
    version = models.champion_version(name) if keys else None
    if version is None:
        return retrieval
    with tempfile.TemporaryDirectory() as tmp:
        package = models.download_package(f"models:/{name}/{version}", Path(tmp))
        manifest = json.loads((package / "adaptflow_model.json").read_text())
    settings = (manifest.get("index") or {}).get("settings") or {}
    return retrieval | {key: settings[key] for key in keys if key in settings}
