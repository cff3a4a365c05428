"""The ``rag`` path of the pipeline: curate knowledge -> index -> evaluate -> register.

The same stages, run record, gate and registry as the trained methods: curation reads the
knowledge folder and the eval questions; "adapting" is (incremental) indexing; the candidate
is scored on the questions; the no-training baseline is plain keyword search over the same
index; the champion is re-scored on the same questions; the package registers as a pyfunc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from adaptflow.errors import InvariantError, SpecError
from adaptflow.secrets import load_secret_blocks
from adaptflow.settings import load_settings
from adaptflow.spec import Spec, load_spec
from flows.steps import provenance, register_attempt, run_params, summary
from tasks.evaluate.gate import decide_promotion
from tasks.rag.package import build_rag_task, index_knowledge_task
from tasks.rag.questions import curate_knowledge_task
from tasks.rag.score import baseline_mode, evaluate_rag_task
from tasks.rag.tune import choose_retrieval_task
from tasks.tracking import (
    close_run,
    current_champion,
    log_stage,
    open_run,
    refresh_retrieval,
    score_champion,
)

INDEX_KEYS = ("chunks", "embedded", "deleted", "updated", "seconds")


@flow(name="curate-knowledge")
def curate_knowledge(spec: Spec) -> dict[str, Any]:
    """Ingest ``data.knowledge`` and curate ``data.questions``; version both with DVC."""
    settings = load_settings()
    if spec.data.knowledge is None:
        raise InvariantError("retrieval-qa specs have data.knowledge")
    return curate_knowledge_task(
        spec.name,
        spec.data.knowledge,
        spec.require_questions(),
        spec.data.id_field,
        settings.curated_dir,
        settings.home,
    )


@flow(name="index")
def index(spec: Spec, run_id: str) -> dict[str, Any]:
    """Index the knowledge (only what changed) and write the candidate's package."""
    settings = load_settings()
    if spec.data.knowledge is None:
        raise InvariantError("retrieval-qa specs have data.knowledge")
    return build_rag_task(
        spec.name,
        spec.data.knowledge,
        spec.base_model,
        spec.retrieval.model_dump(),
        settings.home,
        settings.chroma_url,
        settings.work_dir / spec.name / run_id / "package",
        spec.allow_pickle,
    )


@flow(name="choose-retrieval")
def choose_retrieval(spec: Spec, questions_file: str, run_id: str) -> dict[str, Any]:
    """Choose the retrieval settings the spec leaves unset, on validation questions."""
    settings = load_settings()
    if spec.data.knowledge is None:
        raise InvariantError("retrieval-qa specs have data.knowledge")
    return choose_retrieval_task(
        spec.name,
        spec.data.knowledge,
        spec.base_model,
        spec.retrieval.model_dump(),
        spec.retrieval_to_choose(),
        Path(questions_file),
        spec.metric,
        spec.search.fraction(spec.task),
        spec.search.min_validation,
        spec.seed,
        settings.home,
        settings.chroma_url,
        settings.work_dir / spec.name / run_id / "choice",
        spec.allow_pickle,
    )


def log_choice(run_id: str, spec: Spec, choice: dict[str, Any]) -> Spec:
    """Log the chosen retrieval settings (as the run's params) and return the spec using them."""
    retrieval = spec.retrieval.model_validate(choice["retrieval"])
    chosen = spec.model_copy(update={"retrieval": retrieval})
    report = {k: v for k, v in choice.items() if k != "retrieval"}
    values = chosen.retrieval.model_dump()
    params = {f"retrieval.{k}": values[k] for k in spec.retrieval_to_choose()}
    params["retrieval.chosen_on_validation"] = ",".join(sorted(choice["chosen"])) or "none"
    counts = {k: float(choice[k]) for k in ("validation_questions", "eval_questions", "seconds")}
    log_stage(
        run_id,
        counts,
        prefix="choice.",
        params=params,
        tags={"adaptflow.choice": choice["reason"][:5000]},
        json_artifacts={"retrieval_choice.json": report},
        artifacts=[f for f in (choice["validation_file"],) if f],
    )
    return chosen


@flow(name="evaluate-retrieval")
def evaluate_retrieval(package_dir: str, questions_file: str) -> dict[str, Any]:
    """The candidate's retrieval metrics on the curated questions."""
    package = Path(package_dir)
    return evaluate_rag_task(package, Path(questions_file), package.parent / "eval")


@flow(name="compare-retrieval")
def compare_retrieval(spec: Spec, package_dir: str, questions_file: str) -> dict[str, Any]:
    """Plain search over the same index (the no-training baseline) and the champion."""
    package = Path(package_dir)
    mode = baseline_mode(spec.retrieval.mode)
    baseline = evaluate_rag_task(package, Path(questions_file), package.parent / "eval", mode)
    champion = current_champion(spec.name)
    return {
        "baseline": baseline["metrics"],
        "baseline_method": f"{mode} search over the same index",
        "champion_version": champion,
        "champion_metrics": score_champion(spec.name, champion, questions_file, spec.task),
    }


def log_knowledge(
    run_id: str, spec: Spec, curation: dict[str, Any], advice: dict[str, Any] | None
) -> None:
    """Log the question counts, the ingest report, the data hash and the resolved spec."""
    knowledge = curation["knowledge"]
    counts = {k: curation[k] for k in ("input", "kept", "quarantined")}
    counts["dropped"] = sum(curation["dropped"].values())
    counts["knowledge_documents"] = knowledge["documents"]
    counts |= {f"knowledge_{k}": len(knowledge[k]) for k in ("skipped", "flagged")}
    json_artifacts: dict[str, Any] = {
        "spec.resolved.json": spec.model_dump(mode="json"),
        "ingest.json": knowledge,
    }
    if advice is not None:
        json_artifacts["advice.json"] = advice
    files = [curation["report"], curation["quarantine"], curation["dropped_file"]]
    log_stage(
        run_id,
        counts,
        prefix="curation.",
        tags={"adaptflow.data_hash": curation["data_hash"]},
        artifacts=files + ([str(spec.source)] if spec.source else []),
        json_artifacts=json_artifacts,
    )


@flow(name="rag")
def rag_pipeline(spec: Spec, advice: dict[str, Any] | None) -> dict[str, Any]:
    """Curate, index, evaluate, compare and register a RAG candidate; returns the summary."""
    tags = provenance(spec, "rag")
    run_id = open_run(spec.name, f"{spec.name}-rag", run_params(spec, "rag"), tags)
    try:
        curation = curate_knowledge(spec)
        log_knowledge(run_id, spec, curation, advice)
        choice = choose_retrieval(spec, curation["questions_file"], run_id)
        spec = log_choice(run_id, spec, choice)
        questions = choice["eval_file"]  # the validation questions never reach the gate
        built = index(spec, run_id)
        tags |= {"adaptflow.index_version": built["index"]["index_version"]}
        log_stage(
            run_id,
            {k: float(built["index"][k]) for k in INDEX_KEYS},
            prefix="index.",
            tags={"adaptflow.index_version": tags["adaptflow.index_version"]},
            artifacts=[built["index"]["manifest"]],
        )
        evaluation = evaluate_retrieval(built["package_dir"], questions)
        log_stage(
            run_id,
            evaluation["metrics"],
            artifacts=[evaluation["eval_examples"], *evaluation["artifacts"]],
        )
        refs = compare_retrieval(spec, built["package_dir"], questions)
        log_stage(run_id, refs["baseline"], prefix="baseline.")
        gate = decide_promotion(
            spec.metric,
            evaluation["metrics"],
            refs["baseline"],
            refs["champion_metrics"],
            refs["baseline_method"],
        )
        candidate = {"trained": built, "evaluation": evaluation, "choice": brief_choice(choice)}
        registered = register_attempt(spec, "rag", run_id, curation, candidate, refs, gate, tags)
    except BaseException:
        close_run(run_id, succeeded=False)
        raise
    close_run(run_id, succeeded=True)
    return summary(spec, "rag", run_id, curation, candidate, refs, registered, gate.reasons, advice)


def brief_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """What the summary and the model card say of a choice (candidates as label -> metrics)."""
    keys = ("chosen", "reason", "metric", "validation_questions", "eval_questions", "seconds")
    return {k: choice[k] for k in keys} | {
        "candidates": {c["label"]: c["metrics"] for c in choice["candidates"]}
    }


@flow(name="index-refresh")
def index_refresh(spec_path: str) -> dict[str, Any]:
    """Re-index a retrieval-qa spec's knowledge (only what changed) and re-score the champion.

    The scheduled half of RAG: the knowledge changes, the collection follows, and the
    champion (which searches that collection) is scored again on the questions, all logged as
    an MLflow run (tag ``adaptflow.kind`` = ``index-refresh``) in the spec's experiment.
    No new version is registered.

    Returns:
        The index result (counts, ``index_version``), ``champion_version`` and
        ``champion_metrics`` (None when there is no champion).
    """
    load_secret_blocks()  # tokens kept in Prefect Secret blocks (ADAPTFLOW_SECRET_BLOCKS)
    spec = load_spec(spec_path)
    if spec.task != "retrieval-qa" or spec.data.knowledge is None:
        raise SpecError(f"{spec_path}: index-refresh needs a retrieval-qa spec with data.knowledge")
    settings = load_settings()
    tags = provenance(spec, "rag") | {"adaptflow.kind": "index-refresh"}
    run_id = open_run(spec.name, f"{spec.name}-index-refresh", run_params(spec, "rag"), tags)
    try:
        refreshed = index_knowledge_task(
            spec.name,
            spec.data.knowledge,
            spec.base_model,
            refresh_retrieval(spec.name, spec.retrieval.model_dump(), spec.retrieval_to_choose()),
            settings.home,
            settings.chroma_url,
            spec.allow_pickle,
        )
        log_stage(
            run_id,
            {k: float(refreshed[k]) for k in INDEX_KEYS},
            prefix="index.",
            tags={"adaptflow.index_version": refreshed["index_version"]},
            artifacts=[refreshed["manifest"]],
            json_artifacts={"ingest.json": refreshed["ingest"]},
        )
        champion = current_champion(spec.name)
        scored = None
        if champion is not None:
            curation = curate_knowledge(spec)
            scored = score_champion(spec.name, champion, curation["questions_file"], spec.task)
            log_stage(run_id, scored, prefix="champion.")
    except BaseException:
        close_run(run_id, succeeded=False)
        raise
    close_run(run_id, succeeded=True)
    return refreshed | {"mlflow_run_id": run_id, "champion_version": champion,
                        "champion_metrics": scored}  # fmt: skip
