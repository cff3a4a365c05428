"""``method: distill`` with ``compress.objective: logit``: on-policy distillation through TRL.

See ``tasks.train.distill`` for the method and its sources. The student (``base_model``) answers
each prompt (the training prompts and ``compress.unlabelled``), rendered exactly as SFT,
evaluation and serving render them; TRL's ``DistillationTrainer`` (reached through
``tasks.train.align``, the one module importing ``trl``) moves its next-token distributions over
those answers toward the teacher's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptflow.errors import SpecError
from adaptflow.jsonl import read_jsonl
from tasks.train.peft import Hyper, TrainResult


def teacher_model(teacher: Path | str, allow_pickle: bool) -> tuple[Any, Any]:
    """The teacher decoder (adapter merged) and its tokenizer.

    Raises:
        SpecError: The teacher is not a decoder.
    """
    from adaptflow.catalogue import base_family
    from runtime.loading import load_base, load_base_tokenizer, load_generator

    if isinstance(teacher, Path):
        model, tokenizer, manifest = load_generator(teacher)
        if manifest.kind != "causal-lm":
            raise SpecError(
                f"compress.objective logit: the teacher {teacher} is a '{manifest.kind}'; "
                "TRL's distillation trains decoders (use objective: sequence)"
            )
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model, tokenizer
    if base_family(teacher) != "decoder":
        raise SpecError(
            f"compress.objective logit: the teacher '{teacher}' is not a decoder "
            "(use objective: sequence)"
        )
    return load_base(teacher, "decoder", allow_pickle), load_base_tokenizer(teacher)


def same_vocabulary(student: Any, teacher: Any) -> bool:
    """Whether two tokenizers map every token to the same id (logit distillation needs it)."""
    return bool(student.get_vocab() == teacher.get_vocab())


def prompt_records(tokenizer: Any, rows: list[dict[str, Any]], extra: list[str]) -> list[dict]:
    """One ``{"prompt"}`` per training row and unlabelled text, rendered as everywhere else.

    Earlier turns, tools and steps of a row are rendered too (``runtime.prompts.render_prompt``).
    """
    from runtime.prompts import render_prompt

    prompts = [
        render_prompt(
            tokenizer, row["text"], row.get("context"), row.get("tools"), row.get("steps")
        )
        for row in rows
    ]
    prompts += [render_prompt(tokenizer, text) for text in extra]
    return [{"prompt": prompt} for prompt in prompts]


def distill_logits(
    train_path: Path,
    teacher: Path | str,
    base_model: str,
    hyper: Hyper,
    options: Any,
    out: Path,
    unlabelled: Any,
    allow_pickle: bool = False,
) -> TrainResult:
    """Train ``base_model`` on the teacher's token distributions over its own answers.

    Args:
        train_path: Curated training JSONL (its prompts; the answers are not used).
        teacher: The teacher package folder, or a base model reference.
        base_model: The student.
        hyper: The spec's training settings (epochs, learning rate, max_new_tokens...).
        options: ``tasks.train.distill.DistillOptions``.
        out: Package folder to write.
        unlabelled: ``tasks.train.distill.Unlabelled``: more prompts.
        allow_pickle: The spec's ``allow_pickle``.

    Raises:
        SpecError: A student method this objective cannot train; a student that does not share
            the teacher's vocabulary; a teacher or student that is not a decoder.
    """
    import shutil

    from tasks.train import align
    from tasks.train.distill import LOGIT_METHODS, _mark_distilled, _unlabelled_options

    if options.student_method not in LOGIT_METHODS:
        raise SpecError(
            f"compress.objective logit trains the student in full or with an adapter "
            f"({', '.join(LOGIT_METHODS)}), not '{options.student_method}'"
        )
    settings = align.AlignOptions(
        adapter=options.student_method,
        beta=options.beta,
        temperature=options.temperature,
        max_new_tokens=hyper.max_new_tokens,
    )
    student, tokenizer, peft = align.setup(base_model, "distill", hyper, settings, allow_pickle)
    teacher_lm, teacher_tokenizer = teacher_model(teacher, allow_pickle)
    if not same_vocabulary(tokenizer, teacher_tokenizer):
        raise SpecError(
            f"compress.objective logit compares token distributions, so the student "
            f"'{base_model}' and the teacher must share a tokenizer; theirs differ "
            "(use objective: sequence)"
        )
    teacher_lm.eval()
    records = prompt_records(tokenizer, read_jsonl(train_path), unlabelled.texts)
    checkpoints = out.parent / "distill-checkpoints"
    model, seconds, log, steps, _ = align.train(
        "distill",
        student,
        tokenizer,
        records,
        hyper,
        settings,
        peft,
        checkpoints,
        teacher=teacher_lm,
    )
    out.mkdir(parents=True, exist_ok=True)
    trainable, total = align.save(
        model, tokenizer, out, "distill", base_model, hyper, settings, allow_pickle
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    _mark_distilled(out, options, {"beta": options.beta} | _unlabelled_options(unlabelled))
    history = [(int(e["step"]), float(e["loss"])) for e in log if "loss" in e and "step" in e]
    prompt_tokens = sum(
        len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records
    )
    return TrainResult(
        package_dir=str(out),
        method="distill",
        trainable_params=trainable,
        total_params=total,
        train_seconds=seconds,
        # the prompts' tokens per epoch; the student's sampled answers are not counted
        train_tokens=round(prompt_tokens * hyper.epochs),
        loss_history=history,
        steps=steps,
    )
