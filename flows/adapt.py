"""Stage flow: adapt the base model with the chosen method (one recipe per method family)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow

from adaptflow.methods import GENERATIVE_TASKS, LM_TASKS
from adaptflow.settings import load_settings
from adaptflow.spec import Spec
from tasks.icl.knn import build_knn_classifier_task
from tasks.train.cpt import train_cpt_task
from tasks.train.peft import Hyper, TrainResult, train_peft_classifier_task
from tasks.train.sft import train_generator_task


@flow(name="adapt")
def adapt(spec: Spec, method: str, train_file: str, run_id: str) -> dict[str, Any]:
    """Build a candidate; returns its package path and what it cost (and the loss history)."""
    work = load_settings().work_dir / spec.name
    out = work / run_id / "package"
    if method == "icl":
        return build_knn_classifier_task(Path(train_file), spec.base_model, out, spec.metric)
    hyper = Hyper(**spec.train.model_dump(), seed=spec.seed)
    result: TrainResult
    if spec.task in LM_TASKS:
        result = train_cpt_task(
            Path(train_file),
            spec.base_model,
            hyper,
            out,
            work / "checkpoints",
            spec.data.general,
            spec.data.text_field,
            spec.cpt.replay,
            spec.forgetting.check_fraction,
            spec.forgetting.max_check_texts,
        )
    elif spec.task in GENERATIVE_TASKS:
        # checkpoints are keyed by the inputs, so a killed run resumes on re-run
        result = train_generator_task(
            Path(train_file), spec.base_model, method, hyper, out, work / "checkpoints", spec.task
        )
    else:
        result = train_peft_classifier_task(Path(train_file), spec.base_model, method, hyper, out)
    return asdict(result) | {"tokens_per_second": result.tokens_per_second}
