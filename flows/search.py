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

from adaptflow.settings import load_settings
from adaptflow.spec import Spec
from flows.adapt import adapt
from flows.evaluate import evaluate
from flows.steps import TRAIN_KEYS, provenance, run_params
from tasks.curate.records import read_jsonl
from tasks.evaluate.search import best_trial, split_validation_task, trial_configs
from tasks.tracking import close_run, log_stage, open_run


def with_train(spec: Spec, config: dict[str, Any]) -> Spec:
    """``spec`` with ``config`` applied to its ``train`` block."""
    return spec.model_copy(update={"train": spec.train.model_copy(update=config)})


@task(name="search_trial", cache_policy=NO_CACHE)
def search_trial(
    config: dict[str, Any],
    number: int,
    spec: Spec,
    method: str,
    fit_file: str,
    validation_file: str,
    parent: str,
) -> dict[str, Any]:
    """Train one configuration and score it on validation, in a child run of ``parent``."""
    trial_spec = with_train(spec, config)
    tags = provenance(spec, method) | {
        "mlflow.parentRunId": parent,
        "adaptflow.search_trial": str(number),
    }
    params = run_params(trial_spec, method) | {f"search.{k}": v for k, v in config.items()}
    child = open_run(spec.name, f"{spec.name}-search-{number}", params, tags)
    try:
        trained = adapt(trial_spec, method, fit_file, child)
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
    }


#: One trial at a time (see the module docstring); typed Any for Prefect's generic runner type.
ONE_AT_A_TIME: Any = ThreadPoolTaskRunner(max_workers=1)


@flow(name="search", task_runner=ONE_AT_A_TIME)
def search(spec: Spec, method: str, train_file: str, parent: str) -> dict[str, Any]:
    """Try the configurations of ``spec.search``; returns ``trials``, ``best`` and ``metric``."""
    cfg = spec.search
    configs = trial_configs(cfg.space, cfg.max_trials, spec.seed)
    out_dir = load_settings().work_dir / spec.name / parent / "search"
    fit, validation = split_validation_task(
        Path(train_file), cfg.validation_fraction, spec.seed, out_dir
    )
    futures = search_trial.map(
        configs,
        range(1, len(configs) + 1),
        unmapped(spec),
        unmapped(method),
        unmapped(str(fit)),
        unmapped(str(validation)),
        unmapped(parent),
    )
    trials = [future.result() for future in futures]
    best = best_trial(trials, spec.metric)
    sizes = {
        "fit_examples": len(read_jsonl(Path(fit))),
        "validation_examples": len(read_jsonl(Path(validation))),
    }
    report = {"metric": spec.metric, "trials": trials, "best": best} | sizes
    log_stage(
        parent,
        {f"search.best.{k}": float(v) for k, v in best["config"].items()},
        json_artifacts={"search.json": report},
    )
    return report
