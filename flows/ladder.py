"""The escalation ladder: try suitable methods cheapest first, stop at the first that is enough.

Every rung is a child MLflow run under one parent run and is scored on the same eval split.
The winner (the first rung that meets the target, else the best rung) goes through the usual
promotion gate; if no rung met the target it is registered as ``challenger`` only.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from adaptflow.errors import SpecError
from adaptflow.settings import load_settings
from adaptflow.spec import Spec
from flows.compare import compare
from flows.curate import curate
from flows.search import brief_choice, choose_training
from flows.steps import (
    attempt,
    log_curation,
    meets_target,
    provenance,
    register_attempt,
    run_params,
    summary,
)
from tasks.evaluate.gate import decide_promotion
from tasks.evaluate.ladder import best_rung, ladder_report_task
from tasks.tracking import close_run, log_stage, open_run


def _climb(
    spec: Spec, rungs: list[str], advice: dict[str, Any], curation: dict[str, Any], parent: str
) -> list[dict[str, Any]]:
    estimates = {item["method"]: item["estimate"] for item in advice["ranking"]}
    tried: list[dict[str, Any]] = []
    for number, method in enumerate(rungs, start=1):
        tags = provenance(spec, method) | {
            "mlflow.parentRunId": parent,
            "adaptflow.ladder_rung": str(number),
        }
        child = open_run(
            spec.name, f"{spec.name}-ladder-{number}-{method}", run_params(spec, method), tags
        )
        try:
            rung_spec, searched = choose_training(spec, method, curation, child)
            candidate = attempt(rung_spec, method, curation, child)
            candidate["choice"] = brief_choice(searched)
        except BaseException:
            close_run(child, succeeded=False)
            raise
        close_run(child, succeeded=True)
        metrics = candidate["evaluation"]["metrics"]
        tried.append(
            {
                "method": method,
                "metrics": metrics,
                "met_target": meets_target(spec, metrics),
                "mlflow_run_id": child,
                "estimate": estimates[method],
                "train_seconds": candidate["trained"]["train_seconds"],
                "trainable_params": candidate["trained"]["trainable_params"],
                "candidate": candidate,
                "tags": tags,
                "search": searched,
                "choice": (searched or {}).get("reason"),
            }
        )
        if spec.target.min is not None and tried[-1]["met_target"]:
            break
    return tried


@flow(name="ladder")
def ladder(spec: Spec, advice: dict[str, Any]) -> dict[str, Any]:
    """Climb the advisor's ladder for ``spec``; returns the pipeline summary with ``ladder``."""
    rungs: list[str] = advice["ladder"]
    if not rungs:
        raise SpecError(
            f"method 'ladder': no suitable method this version can run for task '{spec.task}' "
            "(see 'adaptflow recommend SPEC' for the reasons)"
        )
    parent_tags = provenance(spec, "ladder")
    params = run_params(spec, "ladder") | {"ladder.rungs": ",".join(rungs)}
    parent = open_run(spec.name, f"{spec.name}-ladder", params, parent_tags)
    try:
        curation = curate(spec)
        log_curation(parent, spec, curation, advice)
        tried = _climb(spec, rungs, advice, curation, parent)
        met = [rung for rung in tried if rung["met_target"]]
        winner = met[0] if met else best_rung(tried, spec.metric)
        out_dir = load_settings().work_dir / spec.name / parent
        # what the table, the chart and the summary show of each rung (no packages or tags)
        hidden = ("candidate", "tags", "search")
        shown = [{k: v for k, v in r.items() if k not in hidden} for r in tried]
        report = ladder_report_task(
            shown,
            spec.metric,
            spec.target.min,
            out_dir,
        )
        icl = next((r for r in tried if r["method"] == "icl"), None)
        known = None
        if icl is not None and winner["method"] != "icl":
            known = {"metrics": icl["metrics"], "method": "the ladder's icl rung"}
        refs = compare(spec, winner["method"], curation["train_file"], curation["eval_file"], known)
        gate = decide_promotion(
            spec.metric,
            winner["metrics"],
            refs["baseline"],
            refs["champion_metrics"],
            refs["baseline_method"],
            winner["candidate"]["evaluation"].get("forgetting"),
        )
        if not met:
            gate.promote = False
            gate.reasons.insert(
                0,
                f"no rung met the target {spec.metric} {spec.target.min}; the best rung "
                f"({winner['method']}, {winner['metrics'][spec.metric]:.4f}) is registered as "
                "challenger only",
            )
        rung_metrics = {
            f"ladder.{r['method']}.{k}": v for r in tried for k, v in r["metrics"].items()
        }
        log_stage(
            parent,
            winner["metrics"] | rung_metrics,
            tags={"adaptflow.ladder_winner": winner["method"]},
            artifacts=[report["table"], report["chart"]],
        )
        log_stage(parent, refs["baseline"], prefix="baseline.")
        candidate, run_id = winner["candidate"], winner["mlflow_run_id"]
        tags = winner["tags"] | {"adaptflow.ladder_parent_run_id": parent}
        tags.pop("mlflow.parentRunId")
        registered = register_attempt(
            spec, winner["method"], run_id, curation, candidate, refs, gate, tags
        )
    except BaseException:
        close_run(parent, succeeded=False)
        raise
    close_run(parent, succeeded=True)
    ladder_summary = {
        "planned": rungs,
        "rungs": shown,
        "winner": winner["method"],
        "winner_run_id": winner["mlflow_run_id"],
        "target_met": bool(met),
        "stopped_early": len(tried) < len(rungs),
        "table": report["table"],
        "chart": report["chart"],
    }
    result = summary(
        spec,
        winner["method"],
        parent,
        curation,
        candidate,
        refs,
        registered,
        gate.reasons,
        advice,
        ladder_summary,
    )
    return result | {"search": winner["search"]}
