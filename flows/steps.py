"""Wiring shared by the pipeline and the ladder (plain functions that call flows and tasks).

Not a flow itself: these are the few lines both ``adapt-pipeline`` and ``ladder`` would
otherwise repeat (run parameters and provenance, logging a stage, trying one candidate).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run

from adaptflow.catalogue import registered_reference
from adaptflow.errors import InvariantError
from adaptflow.hardware import training_precision
from adaptflow.inputs import display
from adaptflow.methods import (
    COMPRESS_METHODS,
    GENERATIVE_TASKS,
    LM_TASKS,
    REWARD_METHODS,
    UNTRAINED,
)
from adaptflow.provenance import dvc_experiment, git_commit, input_lineage
from adaptflow.settings import load_settings
from adaptflow.spec import LOWER_IS_BETTER, Spec
from flows.adapt import adapt
from flows.evaluate import evaluate
from flows.register import register
from registry.models import materialize_base
from runtime.manifest import KINDS, PackageManifest
from tasks.evaluate.compression import teacher_comparison
from tasks.evaluate.forgetting import forgetting_check_task, forgetting_metrics
from tasks.evaluate.gate import GateDecision
from tasks.rewards import pin_reward_models
from tasks.tracking import log_stage
from tasks.train.teachers import pinned_teacher, teacher_source
from tasks.train.tune import keys_to_choose

TRAIN_KEYS = ("trainable_params", "trainable_percent", "train_seconds", "tokens_per_second")


def run_params(spec: Spec, method: str) -> dict[str, Any]:
    """The MLflow params of a pipeline (or rung) run.

    Settings that are chosen during the run (on validation) are logged once chosen, not here.
    """
    chosen_later = set(spec.retrieval_to_choose()) if method == "rag" else set()
    return {
        "task": spec.task,
        "method": method,
        "base_model": spec.base_model,
        "target_metric": spec.metric,
        "target_min": spec.target.min,
        "seed": spec.seed,
        # a dvc:// input is logged as its URL, not the folder it was fetched into
        "data.train": display(spec.data.train),
        "data.eval": display(spec.data.eval),
        **(
            {
                "data.knowledge": display(spec.data.knowledge),
                "data.questions": display(spec.data.questions),
                **{
                    f"retrieval.{k}": v
                    for k, v in spec.retrieval.model_dump().items()
                    if k not in chosen_later
                },
            }
            if method == "rag"
            else train_params(spec, method)
        ),
        **{  # the seed is logged as ``seed``
            f"generation.{k}": v
            for k, v in (generation_settings(spec, method) or {}).items()
            if k != "seed"
        },
    }


def generation_settings(spec: Spec, method: str) -> dict[str, Any] | None:
    """How a candidate of ``method`` answers: the spec's ``generation``, resolved (or None).

    None where nothing is generated (other tasks, a reward model). ``max_new_tokens`` is
    ``train.max_new_tokens``, which ``generation.max_new_tokens`` overrides when set (the spec
    copies it there); ``seed`` is the spec's, which sampled eval answers are drawn with.
    """
    if spec.task not in GENERATIVE_TASKS or method in REWARD_METHODS:
        return None
    generation = spec.generation
    return {
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "max_new_tokens": spec.train.max_new_tokens,
        "repetition_penalty": generation.repetition_penalty,
        "seed": spec.seed,
    }


def record_generation(spec: Spec, method: str, package_dir: str) -> None:
    """Write the spec's generation settings into a generative package's manifest.

    The ``generation`` option is what ``Generator.from_package`` decodes with: the evaluation,
    the champion's re-scoring, ``predict`` and serving all answer with it. Recorded here, where
    the spec is known, for every recipe's package (SFT, preference tuning, GRPO, compression).
    """
    settings = generation_settings(spec, method)
    if settings is None:
        return
    package = Path(package_dir)
    manifest = PackageManifest.read(package)
    if manifest.kind not in KINDS.values():  # not a generator: nothing decodes
        return
    options = manifest.options | {"generation": settings}
    replace(manifest, options=options).write(package)


def train_params(spec: Spec, method: str) -> dict[str, Any]:
    """The ``train.*`` params; ``train.precision`` is what training runs in on this machine.

    Settings chosen on validation (``tasks.train.tune``) are logged once chosen, not here.
    """
    # a ladder's rungs choose their own (its parent run trains nothing)
    later = set(keys_to_choose(spec, "lora" if method == "ladder" else method))
    params = {f"train.{k}": v for k, v in spec.train.model_dump().items() if k not in later}
    if method not in UNTRAINED:  # 'auto' resolved; the spec's own word: spec.resolved.json
        params["train.precision"] = training_precision(spec.task, spec.train.precision)
    return params


def provenance(spec: Spec, method: str) -> dict[str, str]:
    """Tags that say where a run came from (spec hash, git commit, Prefect flow run)."""
    return {
        "adaptflow.spec_hash": spec.spec_hash(),
        # an inline spec (no file) runs in the flow's working directory: the repo, on a worker
        "adaptflow.git_commit": git_commit(spec.source.parent if spec.source else Path.cwd()) or "",
        "adaptflow.flow_run_id": str(flow_run.id or ""),
        "adaptflow.method": method,
        **spec.lineage,  # the registered version it starts from, if any (with_registered_base)
        **spec.pins,  # the reward models and judge it uses, pinned to versions
        # which revision of each input file the run read, where git or DVC tracks it
        **input_lineage("train", spec.data.train),
        **input_lineage("eval", spec.data.eval),
        **dvc_experiment(),
    }


def with_registered_base(spec: Spec, method: str) -> Spec:
    """The spec starting from its registered base, when ``base_model`` names one.

    ``models:/NAME@ALIAS`` or ``models:/NAME/N`` is resolved and materialized as a plain model
    folder under ``ADAPTFLOW_HOME/work/bases/NAME/VERSION`` (``registry.models``); the spec
    returned names that folder, so training, the baseline (then the parent version itself) and
    the package all start from it, and its runs and versions carry the lineage tags
    ``adaptflow.parent`` (``NAME/VERSION``), ``adaptflow.parent_run_id`` and
    ``adaptflow.base_model_uri`` (the URI as written). Any other spec is returned as it is.
    The reward models the spec names (``rewards`` of kind ``model``, ``align.judge``) are
    fetched, checked and pinned to the version their alias names now (tags
    ``adaptflow.reward_model.I``, ``adaptflow.judge``), so a wrong one fails before any work and
    an alias moved mid-run changes nothing.

    Raises:
        SpecError: No such model, alias or version, or not a generative version.
        ServiceError: The registry could not be read.
    """
    # reward models (GRPO's, the judge): checked now, before any work, and pinned to a version
    spec = pin_reward_models(spec)
    if method in COMPRESS_METHODS and spec.compress.teacher is not None:  # compressed/imitated
        spec = spec.with_pinned_teacher(pinned_teacher(spec.compress.teacher, spec.task))
    if registered_reference(spec.base_model) is None:
        return spec
    base = materialize_base(spec.base_model, load_settings().work_dir / "bases", method)
    lineage = base.lineage | {"adaptflow.base_model_uri": spec.base_model}
    return spec.with_base_folder(base.folder, lineage)


def log_curation(
    run_id: str, spec: Spec, curation: dict[str, Any], advice: dict[str, Any] | None
) -> None:
    """Log the curation counts, data hash, report and the resolved spec (and the advice)."""
    json_artifacts: dict[str, Any] = {"spec.resolved.json": spec.model_dump(mode="json")}
    if advice is not None:
        json_artifacts["advice.json"] = advice
    counts = {k: curation[k] for k in ("input", "kept", "quarantined")}
    counts["dropped"] = sum(curation["dropped"].values())
    counts |= {f"pii.{kind}": n for kind, n in curation["pii"].items()}
    log_stage(
        run_id,
        counts,
        prefix="curation.",
        tags=data_tags(curation),
        artifacts=[
            curation["report"],
            curation["funnel_chart"],
            curation["quarantine"],
            curation["dropped_file"],
            *([str(spec.source)] if spec.source else []),  # an inline spec has no file
        ],
        json_artifacts=json_artifacts,
    )


def attempt(spec: Spec, method: str, curation: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Adapt with ``method`` and score the candidate on the eval split, logging both on the run.

    Returns:
        ``trained`` (the recipe's result without the loss history) and ``evaluation``.
    """
    trained = adapt(spec, method, curation["train_file"], run_id)
    record_generation(spec, method, trained["package_dir"])  # before it is scored
    total = trained["total_params"]
    trained["trainable_percent"] = 100.0 * trained["trainable_params"] / total if total else 0.0
    extra = {"icl_k": float(trained["k"])} if "k" in trained else {}
    log_stage(
        run_id,
        {k: trained[k] for k in TRAIN_KEYS} | extra,
        prefix="train.",
        series={"train.loss": trained["loss_history"]},
    )
    evaluation = evaluate(trained["package_dir"], curation["eval_file"])
    log_stage(run_id, evaluation["metrics"], artifacts=evaluation["artifacts"])
    if spec.data.general is not None and spec.task in GENERATIVE_TASKS + LM_TASKS:
        evaluation["forgetting"] = check_forgetting(spec, trained["package_dir"], run_id)
    if method in COMPRESS_METHODS:  # quality and cost side by side with the teacher
        evaluation["compression"] = check_compression(
            spec, trained["package_dir"], curation["eval_file"], evaluation["metrics"], run_id
        )
        evaluation["metrics"] |= evaluation["compression"]["metrics"]
    trained.pop("loss_history")
    return {"trained": trained, "evaluation": evaluation}


def check_compression(
    spec: Spec, package_dir: str, eval_file: str, metrics: dict[str, float], run_id: str
) -> dict[str, Any]:
    """The compressed candidate's cost next to its teacher's (``tasks.evaluate.compression``).

    Logs the candidate's ``retained``, ``speedup``, ``params``, ``size_mb`` and latency
    percentiles (a generator's also ``token_throughput``), and the teacher's metrics and costs
    as ``teacher.*``; tags the run with the removed blocks and the quantization
    (``adaptflow.quantize``: ``int8`` or ``none``). The teacher is a classifier or generator
    package, or for a generative ``distill`` a base model.
    """
    if spec.compress.teacher is None:
        raise InvariantError("the spec checks that method prune names compress.teacher")
    package = Path(package_dir)
    report = teacher_comparison(
        spec.metric,
        package,
        teacher_source(spec.compress.teacher, spec.task),  # a generative distill's: a base too
        Path(eval_file),
        package.parent / "eval",
        metrics,
        spec.allow_pickle,
    )
    manifest = PackageManifest.read(package)
    options = manifest.options
    report["removed_blocks"] = options.get("removed_blocks", [])
    report["block_influence"] = options.get("block_influence", [])
    report["quantize"] = options.get("quantize")
    report["quantization"] = options.get("quantization")
    report["metric"], report["candidate_metric"] = spec.metric, metrics[spec.metric]
    report["method"], report["student"] = manifest.method, manifest.base_model
    report["objective"] = options.get("objective")
    report["unlabelled"] = (options.get("unlabelled") or {}).get("kept", 0)
    log_stage(
        run_id,
        report["metrics"],
        tags={
            "adaptflow.removed_blocks": json.dumps(report["removed_blocks"]),
            "adaptflow.quantize": report["quantize"] or "none",
        },
    )
    log_stage(run_id, report["teacher"], prefix="teacher.")
    return report


def check_forgetting(spec: Spec, package_dir: str, run_id: str) -> dict[str, Any]:
    """The forgetting check on ``data.general`` for one candidate, logged on its run."""
    if spec.data.general is None:
        raise InvariantError("the forgetting check runs only with data.general")
    package = Path(package_dir)
    report = forgetting_check_task(
        package,
        spec.base_model,
        spec.data.general,
        spec.data.text_field,
        spec.forgetting.max_increase,
        spec.forgetting.check_fraction,
        spec.forgetting.max_check_texts,
        package.parent / "eval",
        spec.allow_pickle,
    )
    artifacts = [report["artifact"]] if "artifact" in report else []
    log_stage(run_id, forgetting_metrics(report), prefix="forgetting.", artifacts=artifacts)
    return dict(report)


def meets_target(spec: Spec, metrics: dict[str, float]) -> bool:
    """Whether ``metrics`` reach the spec's ``target.min`` (always true when none is set)."""
    if spec.target.min is None:
        return True
    value = metrics[spec.metric]
    return value <= spec.target.min if spec.metric in LOWER_IS_BETTER else value >= spec.target.min


def card_facts(
    spec: Spec,
    method: str,
    curation: dict[str, Any],
    candidate: dict[str, Any],
    references: dict[str, Any],
    gate: list[str],
    tags: dict[str, str],
    run_id: str,
) -> dict[str, Any]:
    """What the model card says about one registered candidate."""
    trained = candidate["trained"]
    return {
        "name": spec.name,
        "task": spec.task,
        "method": method,
        "base_model": spec.base_model,
        "target": spec.target.model_dump(),
        "needs": spec.needs.model_dump(),
        "data": {k: display(v) for k, v in spec.data.model_dump().items() if isinstance(v, Path)},
        "curation": curation,
        "metrics": candidate["evaluation"]["metrics"],
        "baseline": references["baseline"],
        "baseline_method": references["baseline_method"],
        "trainable_params": trained["trainable_params"],
        "total_params": trained["total_params"],
        "index": trained.get("index"),
        "retrieval": spec.retrieval.model_dump() if method == "rag" else None,
        "generation": generation_settings(spec, method),
        "choice": candidate.get("choice"),
        "forgetting": candidate["evaluation"].get("forgetting"),
        "compression": candidate["evaluation"].get("compression"),
        "gate": gate,
        "git_commit": tags["adaptflow.git_commit"],
        "flow_run_id": tags["adaptflow.flow_run_id"],
        "mlflow_run_id": run_id,
    }


def data_tags(curation: dict[str, Any]) -> dict[str, str]:
    """The curated data's DVC hash, and its ``.dvc`` file when the user's repository holds it."""
    tags = {"adaptflow.data_hash": curation["data_hash"]}
    if curation.get("dvc_file"):  # data.version_in: project
        tags["adaptflow.data_dvc_file"] = curation["dvc_file"]
    return tags


def version_tags(
    tags: dict[str, str], curation: dict[str, Any], run_id: str, metrics: dict[str, float]
) -> dict[str, str]:
    """Tags of a registered version: provenance, data hash, run id and the metrics."""
    return (
        tags
        | data_tags(curation)
        | {
            "adaptflow.mlflow_run_id": run_id,
            **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items()},
        }
    )


def register_attempt(
    spec: Spec,
    method: str,
    run_id: str,
    curation: dict[str, Any],
    candidate: dict[str, Any],
    references: dict[str, Any],
    gate: GateDecision,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Register the candidate logged on ``run_id`` with its card and tags; promote per the gate."""
    return register(
        spec.name,
        run_id,
        candidate["trained"]["package_dir"],
        card_facts(spec, method, curation, candidate, references, gate.reasons, tags, run_id),
        version_tags(tags, curation, run_id, candidate["evaluation"]["metrics"]),
        gate.promote,
        references["champion_version"],
        spec.metric,
    )


def summary(
    spec: Spec,
    method: str,
    run_id: str,
    curation: dict[str, Any],
    candidate: dict[str, Any],
    references: dict[str, Any],
    registered: dict[str, Any],
    gate: list[str],
    advice: dict[str, Any] | None,
    ladder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pipeline's result: what ``adaptflow run --json`` prints (DESIGN.md §3 keys)."""
    metrics = candidate["evaluation"]["metrics"]
    return {
        "name": spec.name,
        "method": method,
        "metrics": metrics,
        "baseline": references["baseline"],
        "baseline_method": references["baseline_method"],
        "champion_metrics_before": references["champion_metrics"],
        "mlflow_run_id": run_id,
        "model_uri": registered["model_uri"],
        "model_version": registered["version"],
        "promoted": registered["promoted"],
        "champion_version": registered["champion_version"],
        # A promotion decided again under the registry's lock (the champion moved meanwhile).
        "gate": gate + ([registered["promotion"]] if registered.get("promotion") else []),
        "target": spec.target.model_dump(),
        "target_met": meets_target(spec, metrics),
        "forgetting": candidate["evaluation"].get("forgetting"),
        "curation": curation,
        "choice": candidate.get("choice"),
        "train": candidate["trained"],
        "recommendation": None
        if advice is None
        else {k: advice[k] for k in ("recommended", "recommended_runnable", "ladder")},
        "ladder": ladder,
    }
