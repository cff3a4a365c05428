"""Recipe: prune whole transformer blocks of a trained encoder classifier, distill, quantize.

setup -> prune -> distill -> save (fp32, or int8 with ``compress.quantize``), as top-level
functions.

**Which blocks go.** Block Influence (BI) from ShortGPT (Men et al. 2024, "ShortGPT: Layers in
Large Language Models are More Redundant Than You Expect", arXiv:2403.03853): a block whose
output hidden states point the same way as its input changes little, so

    BI_i = 1 - mean over tokens of cos(h_i, h_{i+1})

measured on the teacher over calibration texts (the training texts, at most ``CALIBRATION``),
padding excluded. The ``n`` blocks with the lowest BI are removed. Minitron (Muralidharan et al.
2024, arXiv:2407.14679) uses the same depth-pruning signal family and recovers the pruned model
by distillation from the unpruned one, which is what follows here.

**Recovery.** Knowledge distillation (Hinton et al. 2015): the student (the pruned copy, every
weight trained) learns from the teacher's temperature-softened class distribution and from the
labels, ``loss = alpha * CE(student, label) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)``.
The teacher's logits are computed once, before training (the teacher is frozen), and travel with
each example. Written as a ``Trainer.compute_loss`` override: transformers has no
distillation trainer for sequence classification, and TRL's GKD trainer is for generative
decoders.

**int8** (``compress.quantize: int8``). The distilled student is saved dynamically quantized
(``runtime.int8``, the format ``adaptflow export --int8`` writes): linear layers int8 per output
channel with activations quantized at run time, and the embedding tables weight-only 8-bit per
row, which is where most of an encoder classifier's bytes are. Post-training and without
calibration data, so nothing trains for it. ``compress.prune.blocks: 0`` removes no block and
skips distillation: the candidate is the teacher itself, quantized (a quantize-only
candidate), gated against the teacher like any other.

The package is a full-weights classifier package (``weights/``): fp32 safetensors loaded by
``from_pretrained``, or the int8 format, which ``runtime.loading.load_classifier`` rebuilds from
the manifest's ``quantize: int8``. Its manifest records the removed blocks, every block's BI,
the teacher and, when quantized, what became int8.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.manifest import PackageManifest
from tasks.curate.records import read_jsonl
from tasks.train.methods import transformer_blocks
from tasks.train.peft import Hyper, TrainResult

#: Calibration texts for Block Influence (the first ones of the training set).
CALIBRATION = 256


@dataclass(frozen=True)
class PruneOptions:
    """The spec's ``compress`` block, flattened."""

    teacher: str
    blocks: int | None = None  # how many blocks to remove; else ``ratio`` of them
    ratio: float | None = None
    alpha: float = 0.5  # weight of the hard-label loss (1 - alpha: the teacher's)
    temperature: float = 2.0
    quantize: str | None = None  # "int8": save the student dynamically quantized


@dataclass
class PruneReport:
    """What pruning did: every block's importance and the ones removed (original indices)."""

    importance: list[float]
    removed: list[int]
    kept: list[int] = field(default_factory=list)


def blocks_to_remove(depth: int, options: PruneOptions) -> int:
    """How many of ``depth`` blocks to remove (at most ``depth - 1``).

    Zero only for ``blocks: 0`` with ``quantize`` (a quantize-only candidate); otherwise at
    least one.

    Raises:
        ValueError: When the spec asks to remove every block, or none without quantizing.
    """
    if options.blocks == 0 and options.quantize is not None:
        return 0
    count = options.blocks if options.blocks is not None else round(depth * (options.ratio or 0.5))
    if not 1 <= count < depth:
        raise ValueError(
            f"compress.prune would remove {count} of the teacher's {depth} blocks; it must "
            f"remove at least 1 and keep at least 1"
        )
    return count


def _batches(tokenizer: Any, texts: list[str], max_length: int, size: int) -> Iterator[Any]:
    """``texts`` tokenized ``size`` at a time, padded, as tensors."""
    for start in range(0, len(texts), size):
        yield tokenizer(
            texts[start : start + size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )


def block_influence(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> list[float]:
    """ShortGPT's Block Influence of each transformer block, on ``texts`` (see the docstring)."""
    import torch

    model.eval()
    totals: list[float] = []
    count = 0.0
    with torch.inference_mode():
        for batch in _batches(tokenizer, texts, max_length, 32):
            states = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].bool()
            count += float(mask.sum())
            for i in range(len(states) - 1):
                cosine = torch.nn.functional.cosine_similarity(
                    states[i].float(), states[i + 1].float(), dim=-1
                )
                influence = float((1 - cosine)[mask].sum())
                if len(totals) <= i:
                    totals.append(0.0)
                totals[i] += influence
    return [total / max(count, 1.0) for total in totals]


def one_stack(model: Any) -> Any:
    """The model's one stack of transformer blocks.

    Raises:
        ValueError: The model has none, or several (an encoder-decoder).
    """
    stacks = transformer_blocks(model)
    if len(stacks) != 1:
        raise ValueError(f"expected one stack of transformer blocks, found {len(stacks)}")
    return stacks[0]


def choose_blocks(importance: list[float], options: PruneOptions) -> PruneReport:
    """The blocks to remove: ``blocks_to_remove`` of them, the lowest influence first."""
    count = blocks_to_remove(len(importance), options)
    removed = sorted(sorted(range(len(importance)), key=lambda i: (importance[i], i))[:count])
    return PruneReport(importance, removed, [i for i in range(len(importance)) if i not in removed])


def pruned_options(options: PruneOptions, report: PruneReport) -> dict[str, Any]:
    """What a pruned package's manifest records of its teacher, blocks and distillation."""
    return {
        "teacher": options.teacher,
        "removed_blocks": report.removed,
        "kept_blocks": report.kept,
        "block_influence": [round(v, 6) for v in report.importance],
        "alpha": options.alpha,
        "temperature": options.temperature,
        "distilled": bool(report.removed),
    } | ({"quantize": options.quantize} if options.quantize else {})


def prune_blocks(model: Any, remove: list[int]) -> Any:
    """A copy of ``model`` without the blocks at indices ``remove`` (config updated to match)."""
    import torch

    pruned = copy.deepcopy(model)
    stack, removed = one_stack(pruned), set(remove)
    kept = [block for i, block in enumerate(stack) if i not in removed]
    for _, module in pruned.named_modules():
        for child_name, child in module.named_children():
            if child is stack:
                setattr(module, child_name, torch.nn.ModuleList(kept))
    pruned.config.num_hidden_layers = len(kept)
    return pruned


def teacher_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """The teacher's logits for ``texts`` as an (n, labels) float tensor."""
    import torch

    model.eval()
    chunks = []
    with torch.inference_mode():
        for batch in _batches(tokenizer, texts, max_length, 64):
            chunks.append(model(**batch).logits.float())
    return torch.cat(chunks) if chunks else torch.zeros((0, model.config.num_labels))


def distillation_loss(
    student: Any, teacher: Any, labels: Any, alpha: float, temperature: float
) -> Any:
    """``alpha`` x CE on the labels + (1 - alpha) x T^2 x KL(teacher^T || student^T).

    A label of -100 (an unlabelled text, ``method: distill``) has no CE term; a batch with no
    label at all learns from the teacher alone.
    """
    import torch.nn.functional as F

    labelled = labels != -100
    hard = F.cross_entropy(student[labelled], labels[labelled]) if bool(labelled.any()) else 0.0
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft


class _Distilled:
    """Tokenized examples with their labels and the teacher's logits."""

    def __init__(self, encodings: dict[str, Any], labels: list[int], logits: Any) -> None:
        self.encodings, self.labels, self.logits = encodings, labels, logits

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        return item | {"labels": self.labels[i], "teacher_logits": self.logits[i].tolist()}


def distill(
    student: Any,
    tokenizer: Any,
    texts: list[str],
    label_ids: list[int],
    logits: Any,
    hyper: Hyper,
    alpha: float,
    temperature: float,
    out: Path,
) -> tuple[list[tuple[int, float]], int, float, int]:
    """Train every weight of ``student`` on the distillation loss (``alpha``, ``temperature``).

    Returns:
        The loss history, the optimizer steps, the seconds and the tokens of one epoch.
    """
    import shutil

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tasks.train.progress import show_progress

    padding = DataCollatorWithPadding(tokenizer)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        soft = torch.tensor([f.pop("teacher_logits") for f in features])
        return dict(padding(features)) | {"teacher_logits": soft}

    class DistillingTrainer(Trainer):  # type: ignore[misc]
        def compute_loss(  # type: ignore[override]
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
        ) -> Any:
            soft = inputs.pop("teacher_logits")
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = distillation_loss(outputs.logits, soft, labels, alpha, temperature)
            return (loss, outputs) if return_outputs else loss

    for parameter in student.parameters():
        parameter.requires_grad = True
    encodings = tokenizer(texts, truncation=True, max_length=hyper.max_length)
    trainer = DistillingTrainer(
        model=student,
        args=TrainingArguments(
            output_dir=str(out / "trainer"),
            num_train_epochs=hyper.epochs,
            learning_rate=hyper.learning_rate,
            per_device_train_batch_size=hyper.batch_size,
            weight_decay=hyper.weight_decay,
            seed=hyper.seed,
            data_seed=hyper.seed,
            logging_strategy="steps",
            logging_steps=5,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            optim="adamw_torch",
            dataloader_num_workers=0,
            remove_unused_columns=False,  # teacher_logits is not a model argument
        ),
        train_dataset=_Distilled(dict(encodings), label_ids, logits),
        data_collator=collate,
    )
    show_progress(trainer, "distill")
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(out / "trainer", ignore_errors=True)
    history = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    tokens = sum(len(ids) for ids in encodings["input_ids"])
    return history, int(output.global_step), seconds, tokens


def save_student(model: Any, tokenizer: Any, manifest: PackageManifest, out: Path) -> None:
    """Write a classifier package: ``weights/`` (fp32, or int8 per the manifest), tokenizer.

    With ``quantize: int8`` in the manifest's options, ``model`` is quantized in place
    (``runtime.int8.quantize_int8``, embeddings included) and what became int8 is added to the
    manifest's options as ``quantization``.
    """
    from dataclasses import replace

    from runtime.int8 import quantize_int8, save_int8

    model.eval()
    options = dict(manifest.options)
    if options.get("quantize") == "int8":
        options["quantization"] = quantize_int8(model, embeddings=True)
        save_int8(model, out / "weights")
    else:
        model.save_pretrained(str(out / "weights"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    replace(manifest, options=options).write(out)


def prune_and_distill(
    train_path: Path, teacher_dir: Path, hyper: Hyper, options: PruneOptions, out: Path
) -> TrainResult:
    """Prune the teacher package's lowest-influence blocks, distill, and save a package.

    With ``options.quantize`` the package is int8 (``save_student``); with no block to remove
    (``blocks: 0``, quantizing) nothing trains and the package is the teacher, quantized.

    Args:
        train_path: Curated training JSONL (``text``, ``label``).
        teacher_dir: The teacher's classifier package (adapter or weights).
        hyper: Training hyperparameters of the distillation (epochs, learning rate, batch).
        options: The spec's ``compress`` block.
        out: Package folder to write.

    Returns:
        What training cost; with ``quantize``, ``train_seconds`` includes quantizing and
        saving, and a quantize-only candidate reports no trainable parameters, steps or tokens.

    Raises:
        DataError: A training label the teacher does not know.
        ValueError: A block count that removes all blocks, or none without quantizing.
    """
    from transformers import set_seed

    from adaptflow.errors import DataError
    from runtime.int8 import parameter_count
    from runtime.loading import load_classifier

    teacher, tokenizer, manifest = load_classifier(teacher_dir)
    if hasattr(teacher, "merge_and_unload"):
        teacher = teacher.merge_and_unload()  # a plain model: blocks can be removed and saved
    rows = read_jsonl(train_path)
    texts = [str(row["text"]) for row in rows]
    unknown = sorted({str(row["label"]) for row in rows} - set(manifest.labels))
    if unknown:
        raise DataError(
            f"{train_path}: labels {unknown} are not among the teacher's "
            f"{manifest.labels}; a pruned student keeps the teacher's head"
        )
    label_ids = [manifest.labels.index(str(row["label"])) for row in rows]
    importance = block_influence(teacher, tokenizer, texts[:CALIBRATION], hyper.max_length)
    report = choose_blocks(importance, options)
    removed = report.removed
    history: list[tuple[int, float]] = []
    steps, seconds, tokens = 0, 0.0, 0
    student = teacher  # quantize-only (no block removed): the teacher's weights, nothing trains
    if removed:
        logits = teacher_logits(teacher, tokenizer, texts, hyper.max_length)
        set_seed(hyper.seed)
        student = prune_blocks(teacher, removed)
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
    total = parameter_count(student)
    trained = total if removed else 0  # distillation trains every weight of the student
    started = time.perf_counter()
    save_student(
        student,
        tokenizer,
        PackageManifest(
            kind="encoder-classifier",
            method="prune",
            base_model=manifest.base_model,
            labels=manifest.labels,
            max_length=hyper.max_length,
            trainable_params=int(trained),
            total_params=int(total),
            options=pruned_options(options, report),
        ),
        out,
    )
    if options.quantize:
        seconds += time.perf_counter() - started
    return TrainResult(
        package_dir=str(out),
        method="prune",
        trainable_params=int(trained),
        total_params=int(total),
        train_seconds=seconds,
        train_tokens=tokens * max(1, round(hyper.epochs)),
        loss_history=history,
        steps=steps,
    )


@task(name="prune_and_distill", cache_policy=NO_CACHE)
def prune_and_distill_task(
    train_path: Path, teacher_dir: Path, hyper: Hyper, options: PruneOptions, out: Path
) -> TrainResult:
    """``prune_and_distill`` as a Prefect task."""
    return prune_and_distill(train_path, teacher_dir, hyper, options, out)
