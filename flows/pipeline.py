"""The adaptation pipeline: curate data -> adapt -> evaluate -> register."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from adaptflow.catalogue import base_family
from adaptflow.errors import InvariantError, SpecError
from adaptflow.hardware import check_capabilities
from adaptflow.methods import (
    COMPRESS_METHODS,
    REWARD_METHODS,
    TRL_METHODS,
    check_method,
    resolve_method,
)
from adaptflow.secrets import load_secret_blocks
from adaptflow.spec import Method, Spec, apply_overrides, load_spec, parse_spec
from flows.compare import compare
from flows.curate import curate
from flows.search import brief_choice, choose_training
from flows.steps import (
    attempt,
    log_curation,
    provenance,
    register_attempt,
    run_params,
    summary,
    with_registered_base,
)
from tasks.advise import recommend_task
from tasks.evaluate.gate import compression_decision, decide_promotion
from tasks.evaluate.win_rate import candidate_win_rate
from tasks.tracking import close_run, log_stage, open_run
from tasks.train.methods import check_target_modules


@flow(name="adapt-pipeline")
def adapt_pipeline(
    spec_path: str | None = None,
    method: Method | None = None,
    spec: Spec | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline for one spec (a YAML file or inline); returns the run summary.

    The ``rag`` method takes its own path (``flows.rag``): the same stages, with indexing as
    the adaptation and the questions as the eval set.

    Args:
        spec_path: Path to the use-case spec (YAML); its relative paths resolve against the
            spec file's folder.
        method: Overrides the spec's ``method`` when given (``auto`` and ``ladder`` included);
            the run form shows the spec's method names as a select.
        spec: The spec itself instead of a file (the Prefect UI renders it as a form). Its
            relative data paths resolve against the flow's working directory: the repository
            on a worker (prefect.yaml's pull step), the current directory in-process.
        overrides: Spec fields set over the spec's own, by dotted key
            (``{"train.learning_rate": 0.0003}``; ``adaptflow run --set``, ``dvc exp run -S``).

    Raises:
        SpecError: When neither or both of ``spec_path`` and ``spec`` are given, or the spec
            is invalid.
    """
    load_secret_blocks()  # tokens kept in Prefect Secret blocks (ADAPTFLOW_SECRET_BLOCKS)
    spec = _the_spec(spec_path, spec, overrides or {})
    requested = method or spec.method
    # a registered version (models:/NAME@ALIAS) becomes a local folder the whole run starts from
    spec = with_registered_base(spec, requested)
    family = base_family(spec.base_model)  # an unresolvable base model fails before any work
    check_method(spec.task, requested, family)
    # a GPU feature this machine lacks fails here, before any work
    check_capabilities(spec.task, requested, spec.train.precision, spec.train.devices)
    # the ladder and RAG flows are imported only where they run: the RAG one brings the
    # retrieval stack, ~0.6 s of every other run's start (bench_pipeline_overhead.py)
    if requested == "ladder":
        from flows.ladder import ladder

        return ladder(spec, recommend_task(spec))
    advice = recommend_task(spec) if requested == "auto" else None
    chosen = resolve_method(spec.task, requested, advice, family)
    if chosen != requested:
        check_capabilities(spec.task, chosen, spec.train.precision, spec.train.devices)
    # a train.target_modules name the base has no layer for fails here, before curation
    check_target_modules(
        spec.base_model, family, adapter_of(spec, chosen), spec.train.target_modules
    )
    if chosen == "rag":
        from flows.rag import rag_pipeline

        return rag_pipeline(spec, advice)
    tags = provenance(spec, chosen)
    run_id = open_run(spec.name, f"{spec.name}-{chosen}", run_params(spec, chosen), tags)
    try:
        curation = curate(spec)
        log_curation(run_id, spec, curation, advice)
        # settings tried or chosen on a validation part of train; the best trains on all of it
        spec, searched = choose_training(spec, chosen, curation, run_id)
        candidate = attempt(spec, chosen, curation, run_id)
        candidate["choice"] = brief_choice(searched)
        metrics = candidate["evaluation"]["metrics"]
        refs = compare(spec, chosen, curation["train_file"], curation["eval_file"])
        log_stage(run_id, refs["baseline"], prefix="baseline.")
        if (
            spec.align.judge is not None
        ):  # the judge compares the candidate's answers with the base's
            judged = candidate_win_rate(
                spec.align.judge,
                spec.source.parent if spec.source else None,
                candidate["evaluation"]["artifacts"],
                refs["baseline_answers"] or [],
            )
            metrics |= judged
            log_stage(run_id, judged)
        compressing = chosen in COMPRESS_METHODS
        gate = decide_promotion(
            spec.metric,
            metrics,
            refs["baseline"],
            # a compressed candidate is judged against its teacher (retained, speedup), not
            # asked to beat the champion, which is usually the teacher itself
            None if compressing else refs["champion_metrics"],
            refs["baseline_method"],
            candidate["evaluation"].get("forgetting"),
        )
        if compressing:
            gate = compression_decision(gate, metrics, spec.compress)
        registered = register_attempt(spec, chosen, run_id, curation, candidate, refs, gate, tags)
    except BaseException:
        close_run(run_id, succeeded=False)
        raise
    close_run(run_id, succeeded=True)
    result = summary(
        spec, chosen, run_id, curation, candidate, refs, registered, gate.reasons, advice
    )
    return result | {"search": searched}


def adapter_of(spec: Spec, method: str) -> str:
    """What trains for ``method``: ``align.adapter`` for preference, RL and reward methods."""
    return spec.align.adapter if method in (*TRL_METHODS, *REWARD_METHODS) else method


def _the_spec(spec_path: str | None, spec: Spec | None, overrides: dict[str, Any]) -> Spec:
    if (spec_path is None) == (spec is None):
        given = "both" if spec is not None else "neither"
        raise SpecError(
            f"adapt-pipeline takes exactly one of spec_path (a YAML file) and spec (an inline "
            f"spec); {given} given. In the Prefect UI's run form, clear the one you do not use."
        )
    if spec is not None:  # Prefect validated it against Spec (relative paths: working directory)
        if not overrides:
            return spec
        raw = apply_overrides(spec.model_dump(mode="json", exclude_unset=True), overrides)
        return parse_spec(raw, base_dir=Path.cwd(), source="the inline spec")
    if spec_path is None:
        raise InvariantError("one of spec and spec_path is given (checked above)")
    return load_spec(spec_path, overrides)
