"""Stage flow: hyperparameter search as mapped Prefect tasks, one MLflow child run per trial.

Each trial trains one configuration of ``search.space`` on the training split minus a
validation part (``tasks.evaluate.search``) and scores it there. Trials run one at a time by
default: on CPU they would only fight over the cores, and one at a time keeps the global RNG of
each trial its own, so results repeat exactly. The best configuration is returned; the pipeline
then trains it on the whole training split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from adaptflow.methods import GENERATIVE_TASKS, LM_TASKS, UNTRAINED
from adaptflow.settings import load_settings
from adaptflow.spec import Spec
from flows.adapt import adapt
from flows.evaluate import evaluate
from flows.steps import TRAIN_KEYS, provenance, run_params
from tasks.curate.records import read_jsonl
from tasks.evaluate.search import best_trial, split_validation_task, trial_configs
from tasks.tracking import close_run, log_stage, open_run
from tasks.train.tune import (
    GENERATIVE_NOTE,
    LM_NOTE,
    TrainingPlan,
    clearly_better,
    flat,
    keys_to_choose,
    plan_training,
    second_learning_rate,
)


def with_train(spec: Spec, config: dict[str, Any]) -> Spec:
    """``spec`` with ``config`` applied to its ``train`` block."""
    return spec.model_copy(update={"train": spec.train.model_copy(update=config)})


def choose_training(
    spec: Spec, method: str, curation: dict[str, Any], run_id: str
) -> tuple[Spec, dict[str, Any] | None]:
    """The spec to train with: its search space tried, or its unset settings chosen.

    With ``search.space`` the grid runs as before. Otherwise, for the methods of
    ``tasks.train.tune`` and with ``search.auto``, the unset training settings are chosen on a
    validation part of the training split (or take the fixed defaults, with the reason); the
    values used are logged on ``run_id`` as its ``train.*`` params.

    In both cases the chosen settings then train on the whole training split (the candidate):
    on the development set man-sections, the early-stopped trial itself scored macro-F1 0.675
    on eval, the same settings trained on the whole split 0.697 (the pipeline as it is: 0.701,
    ``benchmarks/bench_quality.py``).

    Returns:
        (the spec with its ``train`` block settled, the search report or None).
    """
    if method in UNTRAINED:
        return spec, None
    if spec.search.space:
        searched = search(spec, method, curation["train_file"], run_id)
        return with_train(spec, searched["best"]["config"]), searched
    keys = keys_to_choose(spec, method)
    plan = plan_training(spec, method, curation["train_examples"])
    if plan is None:
        return spec, None
    spec = with_train(spec, plan.fixed)
    fixed = ", ".join(f"{k} {v}" for k, v in plan.fixed.items())
    report: dict[str, Any] = {"auto": True, "reason": plan.reason or f"fixed defaults: {fixed}"}
    if plan.early_stopping:
        spec, report = _stop_early(spec, method, curation["train_file"], run_id, plan)
    values = spec.train.model_dump()
    report["chosen"] = {key: values[key] for key in keys}
    chosen = "epochs" + (",learning_rate" if plan.check_learning_rate else "")
    best = report.get("best", {}).get("config", {})
    log_stage(
        run_id,
        # logged once, from the final choice (a losing second rate's trial never shows here)
        {f"search.best.{k}": float(v) for k, v in best.items() if isinstance(v, int | float)},
        params={f"train.{k}": v for k, v in report["chosen"].items()}
        | {"train.chosen_on_validation": chosen if plan.early_stopping else "none"},
        tags={"adaptflow.choice": report["reason"][:5000]},
        json_artifacts={"search.json": report},
    )
    return spec, report


def _stop_early(
    spec: Spec, method: str, train_file: str, run_id: str, plan: TrainingPlan
) -> tuple[Spec, dict[str, Any]]:
    """One early-stopped trial, and a second learning rate when its curve asks for one.

    Returns:
        (the spec with the winner's rate and epochs, the report).
    """
    report = search(spec, method, train_file, run_id, {}, early_stopping=True, log=False)
    best = report["best"]
    n = report["validation_examples"]
    notes = []
    second = None
    if plan.check_learning_rate:
        second = second_learning_rate(
            best["validation_history"], spec.train.learning_rate, spec.train.patience
        )
    if second is not None:
        rate, why = second
        other = search(
            spec, method, train_file, run_id, {"learning_rate": [rate]}, True, 2, log=False
        )
        report["trials"] += other["trials"]
        new, old = other["best"]["metrics"][spec.metric], best["metrics"][spec.metric]
        if clearly_better(new, old, n):
            best = other["best"]
            notes.append(f"{why} {rate:g} did better by more than the standard error")
        else:
            notes.append(f"{why} {rate:g} did not do better by more than the standard error")
    if flat(best["validation_history"]) and plan.fallback_epochs is not None:
        score = best["validation_history"][0][1]
        notes.append(
            f"{spec.metric} was {score:.4f} after every epoch (no signal to stop on): the "
            f"fixed default of {plan.fallback_epochs:g} epochs is used"
        )
        best = best | {"config": best["config"] | {"epochs": plan.fallback_epochs},
                       "best_epoch": plan.fallback_epochs}  # fmt: skip
    report |= {"auto": True, "best": best}
    spec = with_train(spec, best["config"])
    if spec.task in GENERATIVE_TASKS:
        notes.append(GENERATIVE_NOTE)
    elif spec.task in LM_TASKS:
        notes.append(LM_NOTE)
    report["reason"] = (
        f"learning rate {spec.train.learning_rate:g}, epochs {best['best_epoch']:g} (early "
        f"stopping): {spec.metric} {best['metrics'][spec.metric]:.4f} on {n} validation "
        f"examples" + "".join(f"; {note}" for note in notes)
    )
    return spec, report


def brief_choice(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the model card says of settings chosen on validation (None: none were)."""
    if not report or not report.get("auto"):
        return None
    return {"chosen": report["chosen"], "reason": report["reason"]}


@task(name="search_trial", cache_policy=NO_CACHE)
def search_trial(
    config: dict[str, Any],
    number: int,
    spec: Spec,
    method: str,
    fit_file: str,
    validation_file: str,
    parent: str,
    early_stopping: bool = False,
) -> dict[str, Any]:
    """Train one configuration and score it on validation, in a child run of ``parent``.

    With ``early_stopping`` the recipe scores every epoch on the validation part and keeps the
    best one (its epoch count comes back as ``best_epoch``).
    """
    trial_spec = with_train(spec, config)
    tags = provenance(spec, method) | {
        "mlflow.parentRunId": parent,
        "adaptflow.search_trial": str(number),
    }
    params = run_params(trial_spec, method) | {f"search.{k}": v for k, v in config.items()}
    child = open_run(spec.name, f"{spec.name}-search-{number}", params, tags)
    try:
        stop_on = validation_file if early_stopping else None
        trained = adapt(trial_spec, method, fit_file, child, stop_on)
        scored = evaluate(trained["package_dir"], validation_file)
    except BaseException:
        close_run(child, succeeded=False)
        raise
    total = trained["total_params"]
    trained["trainable_percent"] = 100.0 * trained["trainable_params"] / total if total else 0.0
    log_stage(child, {k: trained[k] for k in TRAIN_KEYS}, prefix="train.")
    log_stage(child, scored["metrics"], prefix="validation.")
    close_run(child, succeeded=True)
    return {
        "trial": number,
        "config": config,
        "metrics": scored["metrics"],
        "mlflow_run_id": child,
        "train_seconds": trained["train_seconds"],
        "best_epoch": trained.get("best_epoch"),
        "validation_history": trained.get("validation_history", []),
    }


#: One trial at a time (see the module docstring); typed Any for Prefect's generic runner type.
ONE_AT_A_TIME: Any = ThreadPoolTaskRunner(max_workers=1)


@flow(name="search", task_runner=ONE_AT_A_TIME)
def search(
    spec: Spec,
    method: str,
    train_file: str,
    parent: str,
    space: dict[str, list[Any]] | None = None,
    early_stopping: bool = False,
    first_trial: int = 1,
    log: bool = True,
) -> dict[str, Any]:
    """Try configurations on a validation part; returns ``trials``, ``best`` and ``metric``.

    Args:
        spec: The spec (its ``search`` block: the space unless ``space`` is given).
        method: The resolved method.
        train_file: The curated training split (the validation part comes out of it).
        parent: The pipeline's MLflow run (each trial is a child run).
        space: Configurations to try instead of ``spec.search.space`` (``search.auto``).
        early_stopping: Each trial stops on validation; the best trial's epoch count becomes
            part of ``best["config"]`` as ``epochs``.
        first_trial: The first trial's number (a second search in the same run goes on).
        log: Log ``search.best.*`` and ``search.json`` on ``parent`` (off when the caller
            logs the final choice itself, as ``choose_training`` does).
    """
    cfg = spec.search
    configs = trial_configs(space if space is not None else cfg.space, cfg.max_trials, spec.seed)
    out_dir = load_settings().work_dir / spec.name / parent / "search"
    fit, validation = split_validation_task(
        Path(train_file), cfg.fraction(spec.task), spec.seed, out_dir
    )
    futures = search_trial.map(
        configs,
        range(first_trial, first_trial + len(configs)),
        unmapped(spec),
        unmapped(method),
        unmapped(str(fit)),
        unmapped(str(validation)),
        unmapped(parent),
        unmapped(early_stopping),
    )
    trials = [future.result() for future in futures]
    best = best_trial(trials, spec.metric)
    if early_stopping and best["best_epoch"] is not None:
        best = best | {"config": best["config"] | {"epochs": float(best["best_epoch"])}}
    sizes = {
        "fit_examples": len(read_jsonl(Path(fit))),
        "validation_examples": len(read_jsonl(Path(validation))),
    }
    report = {"metric": spec.metric, "trials": trials, "best": best} | sizes
    if not log:
        return report
    log_stage(
        parent,
        {f"search.best.{k}": float(v) for k, v in best["config"].items()
         if isinstance(v, int | float)},
        json_artifacts={"search.json": report},
    )  # fmt: skip
    return report
