"""Measure what the advisor needs from the data and the base model, then ask it.

Facts are measured from the raw data the spec points at (not the curated split), so
``adaptflow recommend`` (no pipeline) and ``method: auto`` (inside the pipeline) give the same
answer for the same spec and data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.advisor import Advice, Facts, advise
from adaptflow.catalogue import base_family, model_shape, resolve_base_model
from adaptflow.errors import AdaptflowError
from adaptflow.methods import runnable_methods
from adaptflow.spec import Spec
from tasks.curate.records import Fields, read_records

#: Texts tokenised to measure tokens per word; the rest is counted in words and scaled.
TOKEN_SAMPLE = 2_000
#: Tokens per whitespace word when no tokenizer can be loaded (typical for English BPE).
FALLBACK_TOKENS_PER_WORD = 1.3


@dataclass(frozen=True)
class DataFacts:
    """Counts measured from the spec's data."""

    labelled: int
    labelled_tokens: int
    corpus_tokens: int
    knowledge_tokens: int
    notes: tuple[str, ...]
    pairs: int = 0
    thumbs: int = 0
    unlabelled: int = 0  # compress.unlabelled's usable inputs (distill)
    unlabelled_tokens: int = 0


class _TokenCounter:
    """Counts tokens with the base model's tokenizer on a sample, words times a ratio beyond."""

    def __init__(self, base_model: str) -> None:
        self.note = ""
        self.tokenizer: Any = None
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base_model))
        except Exception as exc:  # no hub access: counts are estimated from words
            self.note = (
                f"tokenizer of '{base_model}' not readable ({type(exc).__name__}); tokens "
                f"estimated as {FALLBACK_TOKENS_PER_WORD} per word"
            )

    def count(self, texts: list[str]) -> int:
        words = sum(len(t.split()) for t in texts)
        if self.tokenizer is None or not texts:
            return round(words * FALLBACK_TOKENS_PER_WORD)
        sample = texts[:TOKEN_SAMPLE]
        ids = self.tokenizer(sample, add_special_tokens=True)["input_ids"]
        sampled_tokens = sum(len(x) for x in ids)
        if len(sample) == len(texts):
            return sampled_tokens
        sample_words = max(1, sum(len(t.split()) for t in sample))
        return round(words * sampled_tokens / sample_words)


def _folder_texts(folder: Path) -> list[str]:
    """Texts of a document folder as curation reads them (markup removed, bad files skipped)."""
    from tasks.curate.documents import read_folder

    return [r.text for r in read_folder(folder, labelled=False).records]


def measure_data(spec: Spec) -> DataFacts:
    """Count usable labelled examples, their tokens, and the unlabelled text available."""
    data = spec.data
    counter = _TokenCounter(spec.base_model)
    notes = [counter.note] if counter.note else []
    labelled, labelled_tokens, corpus_tokens, pairs, thumbs = 0, 0, 0, 0, 0
    if data.train is None:
        pass  # retrieval-qa: the knowledge folder is the data
    elif data.train.is_dir() and spec.task == "classification":
        from tasks.curate.documents import read_folder

        documents = read_folder(data.train, labelled=True).records
        labelled = len(documents)
        labelled_tokens = counter.count([r.text for r in documents])
    elif data.train.is_dir():
        corpus_tokens = counter.count(_folder_texts(data.train))
    else:
        label = data.label_field if spec.task == "classification" else None
        target = data.target_field if spec.task != "classification" else None
        fields = Fields(
            text=data.text_field,
            label=label,
            target=target,
            id=data.id_field,
            format=spec.input_format,
        )
        records = read_records(data.train, fields).records
        texts = [r.text for r in records]
        if spec.task == "language-modeling":
            corpus_tokens = counter.count(texts)
        else:
            usable = [r for r in records if r.label is not None or r.target is not None]
            labelled = len(usable)
            # a pair's prompt is read twice in training: once with each answer
            answers = [
                r.full_text + " " + answer
                for r in usable
                for answer in (r.target or "", r.rejected)
                if answer is not None
            ]
            labelled_tokens = counter.count(answers)
            pairs = sum(r.rejected is not None for r in usable)
            thumbs = sum(r.label in ("desirable", "undesirable") for r in usable)
    knowledge_tokens = counter.count(_folder_texts(data.knowledge)) if data.knowledge else 0
    if data.general is not None and data.general.is_dir():
        notes.append("data.general is used by the forgetting check, not counted as domain text")
    corpus_tokens = max(corpus_tokens, knowledge_tokens if spec.task == "language-modeling" else 0)
    unlabelled = unlabelled_texts(spec)
    return DataFacts(
        labelled,
        labelled_tokens,
        corpus_tokens,
        knowledge_tokens,
        tuple(notes),
        pairs,
        thumbs,
        len(unlabelled),
        counter.count(unlabelled) if unlabelled else 0,
    )


def spec_facts(spec: Spec) -> Facts:
    """The advisor's inputs for ``spec``: its fields plus the measured data and model."""
    data = measure_data(spec)
    shape = model_shape(spec.base_model)
    notes = data.notes + ((shape.note,) if shape.note else ())
    return Facts(
        task=spec.task,
        family=shape.family,
        params=shape.params,
        layers=shape.layers,
        hidden=shape.hidden,
        heads=shape.heads,
        labelled=data.labelled,
        labelled_tokens=data.labelled_tokens,
        mean_tokens=round(data.labelled_tokens / data.labelled, 1) if data.labelled else 0.0,
        corpus_tokens=data.corpus_tokens,
        knowledge_tokens=data.knowledge_tokens,
        has_knowledge=spec.data.knowledge is not None,
        **spec.needs.model_dump(),
        gpu_hours=spec.budget.gpu_hours,
        hardware=spec.budget.hardware,
        epochs=spec.train.epochs,
        batch_size=spec.train.batch_size,
        max_length=spec.train.max_length,
        lora_r=spec.train.lora_r,
        pairs=data.pairs,
        thumbs=data.thumbs,
        rewards=len(spec.rewards),
        tuned_base=bool(spec.lineage),
        teacher=spec.compress.teacher is not None,
        num_generations=spec.align.num_generations,
        max_new_tokens=spec.train.max_new_tokens,
        name=spec.name,
        teacher_params=teacher_params(spec),
        unlabelled=data.unlabelled,
        unlabelled_tokens=data.unlabelled_tokens,
        prune_blocks=spec.compress.prune.blocks,
        prune_ratio=spec.compress.prune.ratio,
        quantize=spec.compress.quantize,
        distill_objective=spec.compress.objective,
        student_method=spec.compress.student_method,
        notes=notes,
    )


def unlabelled_texts(spec: Spec) -> list[str]:
    """``compress.unlabelled``'s usable inputs (none when unset or unreadable here)."""
    from tasks.train.distill import read_unlabelled

    try:
        return read_unlabelled(spec.compress.unlabelled, spec.data.text_field).texts
    except AdaptflowError:
        return []


def teacher_params(spec: Spec) -> int | None:
    """``compress.teacher``'s parameters when they can be read here without the registry.

    A base model (generative distill) from its config; a package folder from its manifest. A
    registered version is not fetched for advice: None (the advisor then assumes, and says so).
    """
    from adaptflow.catalogue import registered_reference
    from runtime.manifest import read_raw

    teacher = spec.compress.teacher
    if teacher is None or registered_reference(teacher) is not None:
        return None
    if (Path(teacher) / "adaptflow_model.json").is_file():
        try:
            total = read_raw(Path(teacher)).get("total_params")
        except AdaptflowError:
            return None
        return int(total) if total else None
    return model_shape(teacher).params


def recommend(spec: Spec) -> Advice:
    """Measure the facts for ``spec`` and rank every method.

    A method is marked runnable only when it runs for the task on the spec's base model (an
    encoder runs no generative method); a base model whose config cannot be read (offline)
    leaves that to the task alone, so ``recommend`` still answers.
    """
    try:
        family: str | None = base_family(spec.base_model)
    except AdaptflowError:
        family = None
    return advise(spec_facts(spec), runnable=runnable_methods(spec.task, family))


@task(name="recommend_methods", cache_policy=NO_CACHE)
def recommend_task(spec: Spec) -> dict[str, Any]:
    """The advisor's ranking as JSON (what ``adaptflow recommend --json`` prints)."""
    return recommend(spec).as_dict()
