"""Stage flow: adapt the base model with the chosen method (one recipe per method family)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow

from adaptflow.errors import InvariantError
from adaptflow.methods import GENERATIVE_TASKS, LM_TASKS, TRL_METHODS
from adaptflow.settings import load_settings
from adaptflow.spec import Spec, Target
from flows.curate import curate
from tasks.icl.knn import build_knn_classifier_task
from tasks.tracking import log_stage
from tasks.train.align import AlignOptions, train_aligned_task
from tasks.train.compress import PruneOptions, prune_and_distill_task
from tasks.train.compress_lm import prune_and_distill_lm_task
from tasks.train.cpt import CptResult, train_cpt_task
from tasks.train.distill import DistillOptions, distill_task
from tasks.train.peft import Hyper, TrainResult, train_peft_classifier_task
from tasks.train.reward import train_reward_model_task
from tasks.train.sft import train_generator_task
from tasks.train.teachers import teacher_folder, teacher_source


def continue_pretraining(
    spec: Spec,
    train_file: Path,
    hyper: Hyper,
    out: Path,
    work: Path,
    validation_file: Path | None = None,
) -> CptResult:
    """The CPT recipe on curated domain text, with the spec's replay and check split.

    ``validation_file`` (domain documents held out of ``train_file``) makes it stop early.
    """
    result: CptResult = train_cpt_task(
        train_file,
        spec.base_model,
        hyper,
        out,
        work / "checkpoints",
        spec.data.general,
        spec.data.text_field,
        spec.cpt.replay,
        spec.forgetting.check_fraction,
        spec.forgetting.max_check_texts,
        spec.allow_pickle,
        validation_file,
    )
    return result


def cpt_stage(spec: Spec, out: Path, work: Path, run_id: str) -> str:
    """Curate ``cpt.corpus`` and continue pre-training on it; returns the new base's folder.

    The corpus goes through the same curation (and DVC versioning) as any training data, under
    the name ``<name>-cpt-corpus``; its counts and the stage's costs are logged as ``cpt.*``.
    """
    data = spec.data.model_copy(
        update={
            "train": spec.cpt.corpus,
            "eval": None,
            "format": "fields",
            "id_field": None,  # the corpus is plain text; its ids are line numbers or paths
            "target_field": None,
        }
    )
    corpus_spec = spec.model_copy(
        update={
            "name": f"{spec.name}-cpt-corpus",
            "task": "language-modeling",
            "method": "cpt",
            "data": data,
            "target": Target(metric="perplexity"),
            "cpt": spec.cpt.model_copy(update={"corpus": None}),
        }
    )
    curated = curate(corpus_spec)
    overrides = {k: getattr(spec.cpt, k) for k in ("epochs", "learning_rate")}
    stage = spec.train.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    result = continue_pretraining(
        spec, Path(curated["train_file"]), Hyper(**stage.model_dump(), seed=spec.seed), out, work
    )
    counts = {k: float(curated[k]) for k in ("input", "kept", "quarantined")}
    counts["dropped"] = float(sum(curated["dropped"].values()))
    costs = {
        k: float(getattr(result, k))
        for k in ("domain_tokens", "replay_tokens", "replay_share", "train_seconds", "steps")
    }
    log_stage(
        run_id,
        counts | costs,
        prefix="cpt.",
        tags={"adaptflow.cpt_data_hash": curated["data_hash"]},
    )
    return str(Path(result.package_dir) / "weights")


@flow(name="adapt")
def adapt(
    spec: Spec, method: str, train_file: str, run_id: str, validation_file: str | None = None
) -> dict[str, Any]:
    """Build a candidate; returns its package path and what it cost (and the loss history).

    ``validation_file`` (a part of the training split) makes the encoder-classifier, the
    generative and the CPT recipes score each epoch there and keep the best (early stopping);
    the ICL recipe ignores it.
    """
    work = load_settings().work_dir / spec.name
    out = work / run_id / "package"
    if method == "icl":
        return build_knn_classifier_task(
            Path(train_file), spec.base_model, out, spec.metric, spec.allow_pickle
        )
    hyper = Hyper(**spec.train.model_dump(), seed=spec.seed)
    result: TrainResult
    validation = Path(validation_file) if validation_file else None
    if spec.task in LM_TASKS:
        result = continue_pretraining(spec, Path(train_file), hyper, out, work, validation)
    elif method == "distill":  # a smaller student imitates compress.teacher
        if spec.compress.teacher is None:
            raise InvariantError("the spec checks that method distill names compress.teacher")
        result = distill_task(
            Path(train_file),
            teacher_source(spec.compress.teacher, spec.task),
            spec.base_model,
            hyper,
            DistillOptions(
                teacher=spec.compress.teacher,
                alpha=spec.compress.alpha,
                temperature=spec.compress.distill_temperature,
                objective=spec.compress.objective,
                beta=spec.compress.beta,
                student_method=spec.compress.student_method,
                text_field=spec.data.text_field,
            ),
            out,
            work / "checkpoints",
            spec.task,
            spec.compress.unlabelled,
            spec.allow_pickle,
        )
    elif method == "prune":  # the least influential blocks removed, distilled, maybe int8
        if spec.compress.teacher is None:
            raise InvariantError("the spec checks that method prune names compress.teacher")
        # a decoder's blocks go by the same rule; its recovery is token-level distillation
        prune = (
            prune_and_distill_lm_task if spec.task in GENERATIVE_TASKS else prune_and_distill_task
        )
        result = prune(
            Path(train_file),
            teacher_folder(spec.compress.teacher, spec.task),
            hyper,
            PruneOptions(
                teacher=spec.compress.teacher,
                blocks=spec.compress.prune.blocks,
                ratio=spec.compress.prune.ratio,
                alpha=spec.compress.alpha,
                temperature=spec.compress.temperature,
                quantize=spec.compress.quantize,
            ),
            out,
        )
    elif method == "reward":  # a scalar head on preference pairs (TRL's RewardTrainer)
        result = train_reward_model_task(
            Path(train_file),
            spec.base_model,
            hyper,
            AlignOptions(**spec.align.model_dump(exclude={"judge"})),
            out,
            spec.allow_pickle,
        )
    elif method in TRL_METHODS:  # preference tuning and RL through TRL (no validation stop)
        result = train_aligned_task(
            Path(train_file),
            spec.base_model,
            method,
            hyper,
            AlignOptions(
                **spec.align.model_dump(exclude={"judge"}), max_new_tokens=spec.train.max_new_tokens
            ),
            out,
            work / "checkpoints",
            spec.task,
            spec.allow_pickle,
            [r.model_dump(exclude_none=True) for r in spec.rewards],
            spec.source.parent if spec.source else None,
        )
    elif spec.task in GENERATIVE_TASKS:
        base = spec.base_model
        if spec.cpt.corpus is not None:  # a sequential plan: CPT first, then fine-tune on it
            base = cpt_stage(spec, work / run_id / "cpt", work, run_id)
        # checkpoints are keyed by the inputs, so a killed run resumes on re-run
        result = train_generator_task(
            Path(train_file),
            base,
            method,
            hyper,
            out,
            work / "checkpoints",
            spec.task,
            bundle_base=base != spec.base_model,
            allow_pickle=spec.allow_pickle,
            validation_path=validation,
            metric=spec.metric,
        )
    else:
        result = train_peft_classifier_task(
            Path(train_file),
            spec.base_model,
            method,
            hyper,
            out,
            spec.allow_pickle,
            validation,
            spec.metric,
        )
    return asdict(result) | {"tokens_per_second": result.tokens_per_second}
