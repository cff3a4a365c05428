"""Recipe: ``method: distill``: train a smaller student (``base_model``) to imitate a teacher.

The teacher is ``compress.teacher`` (``tasks.train.teachers``); the student is the spec's
``base_model``. What the student learns from depends on the task:

**Classification: soft-label knowledge distillation** (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network", arXiv:1503.02531). The teacher's class logits are computed once
(it is frozen) for every training text and every ``compress.unlabelled`` text; the student, a
fresh classification head on ``base_model`` with every weight trained, minimises

    alpha * CE(student, label) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)

where an unlabelled text has no label term (``tasks.train.compress.distillation_loss`` with
label ``-100``). Student and teacher need not share a tokenizer: what passes between them is a
distribution over the teacher's labels, which the student keeps.

**Generative, ``compress.objective: sequence``**: sequence-level knowledge distillation (Kim &
Rush 2016, "Sequence-Level Knowledge Distillation", arXiv:1606.07947). The teacher answers every
training prompt and every unlabelled prompt greedily, as it would be served; the student is
fine-tuned on those answers with the SFT recipe (``tasks.train.sft``, ``compress.student_method``,
the spec's ``train:`` settings). Any tokenizers; any student method the SFT recipe runs.

**Generative, ``compress.objective: logit``**: on-policy distillation (Agarwal et al. 2024,
"On-Policy Distillation of Language Models", arXiv:2306.13649, GKD with lambda = 1) through TRL's
``DistillationTrainer``: the student answers each prompt and learns the teacher's next-token
distributions over its own answer, by the generalized Jensen-Shannon divergence
``compress.beta``. TRL compares the two models' logits position by position, so teacher and
student must share a tokenizer (checked: same vocabulary). It cannot combine with the
virtual-token PEFT methods (prefix, prompt-tuning, p-tuning: their virtual tokens shift the
positions TRL aligns), nor with ``freeze`` (the SFT recipe's own layer freezing); here the
student trains in full or with a LoRA-family adapter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import DataError, SpecError
from adaptflow.jsonl import read_jsonl, write_jsonl
from runtime.manifest import PackageManifest
from tasks.train.compress import distill, teacher_logits
from tasks.train.peft import Hyper, TrainResult, classifier_base

#: Label id of an unlabelled text: no hard-label term (``distillation_loss``).
UNLABELLED = -100
#: Student methods the logit objective can train (see the module docstring).
LOGIT_METHODS = ("full", "lora", "dora", "ia3")


@dataclass(frozen=True)
class DistillOptions:
    """The spec's ``compress`` block as ``distill`` reads it."""

    teacher: str  # the spec's reference (pinned): named in the manifest
    alpha: float = 0.5
    temperature: float = 2.0
    objective: str = "sequence"
    beta: float = 0.5
    student_method: str = "full"
    text_field: str = "text"  # the field of a JSONL ``compress.unlabelled`` file


@dataclass
class Unlabelled:
    """``compress.unlabelled`` read: the inputs kept and, per problem line, why it was not."""

    texts: list[str]
    problems: list[str]

    @property
    def counts(self) -> dict[str, int]:
        """``input`` = ``kept`` + ``quarantined``."""
        kept, bad = len(self.texts), len(self.problems)
        return {"input": kept + bad, "kept": kept, "quarantined": bad}


def read_unlabelled(path: Path | None, field: str) -> Unlabelled:
    """The inputs of ``compress.unlabelled``.

    A ``.jsonl`` file (``field`` of each object) or plain text, one input per non-empty line.

    A JSONL line that is not an object with a non-empty string ``field`` is quarantined with
    its line number and reason, never dropped silently.

    Raises:
        DataError: The file cannot be read, or no line of it is usable.
    """
    if path is None:
        return Unlabelled([], [])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"compress.unlabelled: cannot read {path}: {error}") from None
    texts: list[str] = []
    problems: list[str] = []
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path}:{number}: not JSON ({error.msg})")
            continue
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{path}:{number}: no non-empty string field '{field}'")
            continue
        texts.append(value)
    if not texts:
        detail = f"; first problem: {problems[0]}" if problems else ""
        raise DataError(f"compress.unlabelled: {path} has no usable input{detail}")
    return Unlabelled(texts, problems)


def _unlabelled_options(unlabelled: Unlabelled) -> dict[str, Any]:
    """What the manifest records of the unlabelled inputs (counts, the first problems)."""
    return {"unlabelled": unlabelled.counts | {"problems": unlabelled.problems[:20]}}


# ---------------------------------------------------------------------------- classification


def distill_classifier(
    train_path: Path,
    teacher_dir: Path,
    base_model: str,
    hyper: Hyper,
    options: DistillOptions,
    out: Path,
    unlabelled: Unlabelled,
    allow_pickle: bool = False,
) -> TrainResult:
    """Distill the teacher classifier package into ``base_model`` (see the module docstring).

    Raises:
        DataError: A training label the teacher does not know.
    """
    from transformers import AutoTokenizer

    from adaptflow.catalogue import resolve_base_model
    from runtime.int8 import parameter_count
    from runtime.loading import load_classifier

    teacher, teacher_tokenizer, manifest = load_classifier(teacher_dir)
    rows = read_jsonl(train_path)
    unknown = sorted({str(row["label"]) for row in rows} - set(manifest.labels))
    if unknown:
        raise DataError(
            f"{train_path}: labels {unknown} are not among the teacher's {manifest.labels}; "
            "the student learns the teacher's labels"
        )
    texts = [str(row["text"]) for row in rows] + unlabelled.texts
    label_ids = [manifest.labels.index(str(row["label"])) for row in rows]
    label_ids += [UNLABELLED] * len(unlabelled.texts)
    logits = teacher_logits(teacher, teacher_tokenizer, texts, manifest.max_length)
    del teacher
    # every weight of the student trains: a fresh head on base_model, no adapter
    student, _ = classifier_base(base_model, manifest.labels, hyper.seed, allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base_model))
    history, steps, seconds, tokens = distill(
        student,
        tokenizer,
        texts,
        label_ids,
        logits,
        hyper,
        options.alpha,
        options.temperature,
        out,
    )
    student.eval()
    student.save_pretrained(str(out / "weights"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    total = parameter_count(student)
    PackageManifest(
        kind="encoder-classifier",
        method="distill",
        base_model=base_model,
        labels=manifest.labels,
        max_length=hyper.max_length,
        trainable_params=int(total),
        total_params=int(total),
        options={
            "teacher": options.teacher,
            "alpha": options.alpha,
            "temperature": options.temperature,
            "labelled": len(rows),
        }
        | _unlabelled_options(unlabelled),
    ).write(out)
    return TrainResult(
        package_dir=str(out),
        method="distill",
        trainable_params=int(total),
        total_params=int(total),
        train_seconds=seconds,
        train_tokens=tokens * max(1, round(hyper.epochs)),
        loss_history=history,
        steps=steps,
    )


# -------------------------------------------------------------------------------- generative


def teacher_generator(teacher: Path | str, hyper: Hyper, allow_pickle: bool) -> Any:
    """The teacher as a ``runtime.generate.Generator`` (a package, or a base model)."""
    from runtime.generate import Generator

    if isinstance(teacher, Path):
        return Generator.from_package(teacher)
    return Generator.from_base(teacher, hyper.max_length, hyper.max_new_tokens, allow_pickle)


def teacher_answers(
    generator: Any, rows: list[dict[str, Any]], unlabelled: list[str], batch: int = 16
) -> list[dict[str, Any]]:
    """The training rows and unlabelled prompts, each ``target`` the teacher's greedy answer.

    Rows the teacher answers with nothing are left out.
    """
    from tqdm.auto import tqdm

    prompts = [dict(row) for row in rows] + [{"text": text} for text in unlabelled]
    answered: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(prompts), batch), desc="teacher answers", unit="batch"):
        chunk = prompts[start : start + batch]
        answers = generator.predict(
            [row["text"] for row in chunk],
            [row.get("context") for row in chunk],
            tools=[row.get("tools") for row in chunk],
            steps=[row.get("steps") for row in chunk],
        )
        for row, answer in zip(chunk, answers, strict=True):
            if answer.strip():
                answered.append(row | {"target": answer})
    return answered


def distill_sequences(
    train_path: Path,
    teacher: Path | str,
    base_model: str,
    hyper: Hyper,
    options: DistillOptions,
    out: Path,
    checkpoint_root: Path,
    task_name: str,
    unlabelled: Unlabelled,
    allow_pickle: bool = False,
) -> TrainResult:
    """Sequence-level distillation: the teacher answers, the student is fine-tuned on them.

    The teacher's answers are kept beside the package (``teacher_answers.jsonl`` in its parent
    folder) and their count is in the manifest.

    Raises:
        DataError: The teacher answered no prompt (nothing to learn from).
    """
    from tasks.train.sft import train_generator

    rows = read_jsonl(train_path)
    generator = teacher_generator(teacher, hyper, allow_pickle)
    started = time.perf_counter()
    answered = teacher_answers(generator, rows, unlabelled.texts)
    answering = time.perf_counter() - started
    del generator
    if not answered:
        raise DataError(f"compress.teacher answered none of the {len(rows)} training prompts")
    answers_path = out.parent / "teacher_answers.jsonl"
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(answers_path, answered)
    result = train_generator(
        answers_path,
        base_model,
        options.student_method,
        hyper,
        out,
        checkpoint_root,
        task_name,
        allow_pickle=allow_pickle,
    )
    _mark_distilled(
        out,
        options,
        {"teacher_answers": len(answered), "teacher_seconds": round(answering, 3)}
        | _unlabelled_options(unlabelled),
    )
    return replace(result, method="distill")


def _mark_distilled(out: Path, options: DistillOptions, extra: dict[str, Any]) -> None:
    """Rewrite the student's manifest as a ``distill`` package naming its teacher."""
    manifest = PackageManifest.read(out)
    manifest_options = dict(manifest.options) | extra
    manifest_options |= {
        "teacher": options.teacher,
        "objective": options.objective,
        "student_method": options.student_method,
    }
    replace(manifest, method="distill", options=manifest_options).write(out)


@task(name="distill", cache_policy=NO_CACHE, tags=["gpu"])
def distill_task(
    train_path: Path,
    teacher: Path | str,
    base_model: str,
    hyper: Hyper,
    options: DistillOptions,
    out: Path,
    checkpoint_root: Path,
    task_name: str,
    unlabelled_path: Path | None = None,
    allow_pickle: bool = False,
) -> TrainResult:
    """``method: distill`` for any task (the recipe the task and ``objective`` pick).

    Raises:
        SpecError: A classification teacher that is not a package; the logit objective with a
            student method it cannot train or a student that does not share the teacher's
            vocabulary.
        DataError: Unusable ``compress.unlabelled``; labels the teacher does not know.
    """
    unlabelled = read_unlabelled(unlabelled_path, options.text_field)
    if task_name == "classification":
        if not isinstance(teacher, Path):
            raise SpecError("compress.teacher: a classification student needs a trained teacher")
        return distill_classifier(
            train_path, teacher, base_model, hyper, options, out, unlabelled, allow_pickle
        )
    if options.objective == "logit":
        from tasks.train.distill_logit import distill_logits

        return distill_logits(
            train_path, teacher, base_model, hyper, options, out, unlabelled, allow_pickle
        )
    return distill_sequences(
        train_path,
        teacher,
        base_model,
        hyper,
        options,
        out,
        checkpoint_root,
        task_name,
        unlabelled,
        allow_pickle,
    )
