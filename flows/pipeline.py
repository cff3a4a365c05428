"""The adaptation pipeline: curate data -> adapt -> evaluate -> register."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from adaptflow.methods import resolve_method
from adaptflow.provenance import git_commit
from adaptflow.spec import Spec, load_spec
from flows.adapt import adapt
from flows.curate import curate
from flows.evaluate import evaluate
from flows.register import register
from tasks.evaluate.gate import decide_promotion
from tasks.tracking import close_run, log_stage, open_run


def _run_params(spec: Spec, method: str) -> dict[str, Any]:
    return {
        "task": spec.task,
        "method": method,
        "base_model": spec.base_model,
        "target_metric": spec.metric,
        "target_min": spec.target.min,
        "seed": spec.seed,
        "data.train": spec.data.train,
        "data.eval": spec.data.eval,
        **{f"train.{k}": v for k, v in spec.train.model_dump().items()},
    }


@flow(name="adapt-pipeline")
def adapt_pipeline(spec_path: str, method: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline for the spec at ``spec_path``; returns the run summary.

    Args:
        spec_path: Path to the use-case spec (YAML).
        method: Overrides the spec's ``method`` when given.
    """
    spec = load_spec(spec_path)
    chosen = resolve_method(spec.task, method or spec.method)
    provenance = {
        "adaptflow.spec_hash": spec.spec_hash(),
        "adaptflow.git_commit": git_commit(spec.source.parent if spec.source else None) or "",
        "adaptflow.flow_run_id": str(flow_run.id or ""),
        "adaptflow.method": chosen,
    }
    run_id = open_run(spec.name, f"{spec.name}-{chosen}", _run_params(spec, chosen), provenance)
    try:
        curation = curate(spec)
        log_stage(
            run_id,
            {k: curation[k] for k in ("input", "kept", "quarantined")},
            prefix="curation.",
            tags={"adaptflow.data_hash": curation["data_hash"]},
            artifacts=[curation["report"], curation["quarantine"], str(spec.source)],
            json_artifacts={"spec.resolved.json": spec.model_dump(mode="json")},
        )
        trained = adapt(spec, chosen, curation["train_file"], run_id)
        log_stage(
            run_id,
            {k: trained[k] for k in ("trainable_params", "train_seconds", "tokens_per_second")},
            prefix="train.",
            series={"train.loss": trained["loss_history"]},
        )
        evaluation = evaluate(
            spec, trained["package_dir"], curation["train_file"], curation["eval_file"]
        )
        log_stage(run_id, evaluation["metrics"], artifacts=[evaluation["confusion_matrix"]])
        log_stage(run_id, evaluation["baseline"], prefix="baseline.")
        gate = decide_promotion(
            spec.metric,
            evaluation["metrics"],
            evaluation["baseline"],
            evaluation["champion_metrics"],
        )
        card_facts = {
            "name": spec.name,
            "task": spec.task,
            "method": chosen,
            "base_model": spec.base_model,
            "target": spec.target.model_dump(),
            "needs": spec.needs.model_dump(),
            "data": {"train": str(spec.data.train), "eval": spec.data.eval and str(spec.data.eval)},
            "curation": curation,
            "metrics": evaluation["metrics"],
            "baseline": evaluation["baseline"],
            "trainable_params": trained["trainable_params"],
            "total_params": trained["total_params"],
            "gate": gate.reasons,
            "git_commit": provenance["adaptflow.git_commit"],
            "flow_run_id": provenance["adaptflow.flow_run_id"],
            "mlflow_run_id": run_id,
        }
        version_tags = provenance | {
            "adaptflow.data_hash": curation["data_hash"],
            "adaptflow.mlflow_run_id": run_id,
            **{f"metric.{k}": f"{v:.6f}" for k, v in evaluation["metrics"].items()},
        }
        registered = register(
            spec.name,
            run_id,
            trained["package_dir"],
            card_facts,
            version_tags,
            gate.promote,
            evaluation["champion_version"],
        )
    except BaseException:
        close_run(run_id, succeeded=False)
        raise
    close_run(run_id, succeeded=True)
    return {
        "name": spec.name,
        "method": chosen,
        "metrics": evaluation["metrics"],
        "baseline": evaluation["baseline"],
        "champion_metrics_before": evaluation["champion_metrics"],
        "mlflow_run_id": run_id,
        "model_uri": registered["model_uri"],
        "model_version": registered["version"],
        "promoted": registered["promoted"],
        "champion_version": registered["champion_version"],
        "gate": gate.reasons,
        "target": spec.target.model_dump(),
        "target_met": spec.target.min is None
        or evaluation["metrics"][spec.metric] >= spec.target.min,
        "curation": curation,
        "train": {k: v for k, v in trained.items() if k != "loss_history"},
        "ladder": None,
    }
