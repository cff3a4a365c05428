"""Recipe: parameter-efficient fine-tuning (LoRA and its peft siblings) of an encoder classifier.

setup -> train -> save, as top-level functions. Training uses the transformers ``Trainer``
(progress bar, seeding, gradient accumulation and resumable checkpoints for free); MLflow
reporting is off here because ``registry/`` is the only code that talks to MLflow: the loss
history is returned and logged by the flow.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.manifest import PackageManifest
from tasks.curate.records import read_jsonl

PEFT_METHODS = ("lora", "dora", "ia3")


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters a recipe needs (flattened from the spec's ``train`` block)."""

    epochs: float = 3.0
    learning_rate: float = 5e-4
    batch_size: int = 16
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    weight_decay: float = 0.0
    packing: bool = False
    virtual_tokens: int = 16
    unfrozen_layers: int = 2
    checkpoint_steps: int = 50
    max_new_tokens: int = 64
    precision: str = "auto"
    devices: int = 1
    target_modules: str | list[str] = "default"
    patience: int = 3
    seed: int = 42


@dataclass
class TrainResult:
    """What a training run produced (small and serialisable)."""

    package_dir: str
    method: str
    trainable_params: int
    total_params: int
    train_seconds: float
    train_tokens: int
    steps: int
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    #: With a validation part: the metric after each epoch, and the epoch kept (the best)
    validation_history: list[tuple[float, float]] = field(default_factory=list)
    best_epoch: float | None = None

    @property
    def tokens_per_second(self) -> float:
        """Non-padding training tokens processed per second."""
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


class _Examples:
    """Tokenised examples as a map-style dataset for the Trainer."""

    def __init__(self, encodings: dict[str, list[Any]], labels: list[int]) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {key: values[i] for key, values in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


def target_modules(value: str | list[str]) -> str | list[str] | None:
    """The peft ``target_modules`` of ``train.target_modules``.

    ``default`` is None (peft's table per architecture: BERT's query and value projections,
    GPT-2's fused attention), ``all-linear`` every linear layer but the output head.
    """
    return None if value == "default" else value


def peft_config(method: str, hyper: Hyper, modules_to_save: list[str], model: Any = None) -> Any:
    """The peft config for ``method`` on a sequence-classification model.

    With ``model``, ``train.target_modules`` is checked against its layers, and architectures
    peft has no defaults for get adaptflow's (``tasks.train.methods.lora_targets``,
    ``ia3_targets``).

    Raises:
        SpecError: A ``train.target_modules`` name matches no layer of ``model``.
    """
    from peft import IA3Config, LoraConfig, TaskType

    from tasks.train.methods import ia3_targets, lora_targets

    if method in ("lora", "dora"):
        targets = (
            target_modules(hyper.target_modules)
            if model is None
            else lora_targets(model, hyper.target_modules)
        )
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=hyper.lora_r,
            lora_alpha=hyper.lora_alpha,
            lora_dropout=hyper.lora_dropout,
            use_dora=method == "dora",
            target_modules=targets,
            modules_to_save=modules_to_save,
        )
    if method == "ia3":
        # IA3 scales attention outputs and feed-forward inputs; its own table says which
        extra = ia3_targets(model) if model is not None else {}
        return IA3Config(task_type=TaskType.SEQ_CLS, modules_to_save=modules_to_save, **extra)
    raise ValueError(f"not a PEFT method for encoders: {method}")


def fresh_modules(model: Any, missing_keys: list[str]) -> list[str]:
    """The modules a checkpoint lacked (freshly initialised), from ``from_pretrained``'s keys.

    For each missing weight, the outermost module all of whose weights are missing: the whole
    ``classifier`` (RoBERTa's is dense + out_proj; naming both and peft's own ``classifier``
    nests wrappers that do not load back), but ``bert.pooler``, not ``bert``, when a BERT
    masked-LM checkpoint lacks only the pooler (naming ``bert`` would train a copy of the
    whole encoder).
    """
    missing = set(missing_keys)
    names = [name for name, _ in model.named_parameters()]
    fresh = set()
    for key in missing:
        parts = key.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth]) + "."
            if all(name in missing for name in names if name.startswith(prefix)):
                fresh.add(prefix[:-1])
                break
    return sorted(fresh)


def classifier_base(
    base_model: str, labels: list[str], seed: int, allow_pickle: bool = False
) -> tuple[Any, dict[str, Any]]:
    """``base_model`` with a fresh head over ``labels`` (seeded), and its loading info.

    Raises:
        SpecError: When the base has only pickle-based weights and ``allow_pickle`` is off.
    """
    from transformers import AutoModelForSequenceClassification, set_seed

    from adaptflow.catalogue import resolve_base_model
    from runtime.loading import refusing_pickle, weights_arguments

    set_seed(seed)  # the new head's initialisation draws from the global RNG
    with refusing_pickle(base_model, allow_pickle):
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(base_model),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            output_loading_info=True,
            **weights_arguments(allow_pickle),
        )
    return model, info


def setup(
    base_model: str, labels: list[str], method: str, hyper: Hyper, allow_pickle: bool = False
) -> Any:
    """Load the base encoder with a fresh classification head and wrap it with peft.

    Raises:
        SpecError: When the base has only pickle-based weights and ``allow_pickle`` is off.
    """
    from peft import get_peft_model

    model, info = classifier_base(base_model, labels, hyper.seed, allow_pickle)
    # Anything the checkpoint lacks is freshly initialised and must be trained and saved with
    # the adapter, or a reload would draw different random weights.
    fresh = fresh_modules(model, info["missing_keys"])
    return get_peft_model(model, peft_config(method, hyper, fresh, model))


@dataclass(frozen=True)
class Validation:
    """A validation part to stop training on: texts, label ids, label names and the metric."""

    texts: list[str]
    label_ids: list[int]
    labels: list[str]
    metric: str = "f1_macro"


@dataclass
class Trained:
    """What ``train`` did."""

    tokens: int
    seconds: float
    history: list[tuple[int, float]]
    steps: int
    validation_history: list[tuple[float, float]] = field(default_factory=list)
    best_epoch: float | None = None


def train(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    label_ids: list[int],
    hyper: Hyper,
    out: Path,
    validation: Validation | None = None,
) -> Trained:
    """Fine-tune ``model`` in place.

    With ``validation``, the model is scored on it after every epoch; training stops after
    ``hyper.patience`` epochs without improvement and the best epoch's weights are kept
    (transformers' ``EarlyStoppingCallback`` and ``load_best_model_at_end``). Its checkpoints
    go to ``out/trainer`` and are removed afterwards.
    """
    from transformers import (
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
    )

    from adaptflow.hardware import precision_arguments, resolve_precision
    from tasks.train.progress import show_progress

    encodings = tokenizer(texts, truncation=True, max_length=hyper.max_length)
    tokens = sum(len(ids) for ids in encodings["input_ids"])
    stopping: dict[str, Any] = {"save_strategy": "no"}
    extra: dict[str, Any] = {}
    if validation is not None:
        stopping = {
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            "save_only_model": True,
            "load_best_model_at_end": True,
            "metric_for_best_model": validation.metric,
            "greater_is_better": True,
            "per_device_eval_batch_size": 64,
        }
        held = tokenizer(validation.texts, truncation=True, max_length=hyper.max_length)
        extra = {
            "eval_dataset": _Examples(dict(held), validation.label_ids),
            "compute_metrics": partial(_scores, labels=validation.labels),
            "callbacks": [EarlyStoppingCallback(early_stopping_patience=hyper.patience)],
        }
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.learning_rate,
        per_device_train_batch_size=hyper.batch_size,
        weight_decay=hyper.weight_decay,
        seed=hyper.seed,
        data_seed=hyper.seed,
        logging_strategy="steps",
        logging_steps=5,
        report_to="none",
        use_cpu=True,
        # this recipe trains on CPU (see adaptflow.hardware.CPU_RECIPE_TASKS): auto is fp32
        **precision_arguments(resolve_precision(hyper.precision, "cpu", False)),
        optim="adamw_torch",
        dataloader_num_workers=0,
        # batches of similar lengths pad less: half of a random batch's positions were padding
        # on the development sets, and 480 AWS examples trained 2 epochs in 44 s, not 74 s
        train_sampling_strategy="group_by_length",
        **stopping,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Examples(dict(encodings), label_ids),
        data_collator=DataCollatorWithPadding(tokenizer),
        **extra,
    )
    show_progress(trainer, "train" if validation is None else "train (scored per epoch)")
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(out / "trainer", ignore_errors=True)
    logged = trainer.state.log_history
    history = [(int(e["step"]), float(e["loss"])) for e in logged if "loss" in e]
    epochs = max(1, round(hyper.epochs))
    trained = Trained(tokens * epochs, seconds, history, int(output.global_step))
    if validation is not None:
        trained.validation_history = epoch_scores(logged, validation.metric)
        trained.best_epoch = best_epoch(trained.validation_history)
        trained.tokens = tokens * max(1, round(max(e for e, _ in trained.validation_history)))
    return trained


def epoch_scores(log_history: list[dict[str, Any]], metric: str) -> list[tuple[float, float]]:
    """(epoch, validation ``metric``) after every epoch, from a Trainer's log history."""
    key = f"eval_{metric}"
    return [(float(round(e["epoch"])), float(e[key])) for e in log_history if key in e]


def best_epoch(history: list[tuple[float, float]], lower_is_better: bool = False) -> float:
    """The first epoch with the best score: the one ``load_best_model_at_end`` restores."""
    sign = -1.0 if lower_is_better else 1.0
    return max(history, key=lambda item: (sign * item[1], -item[0]))[0]


def _scores(prediction: Any, labels: list[str]) -> dict[str, float]:
    """Classification metrics of a Trainer evaluation (logits -> predicted labels)."""
    from tasks.evaluate.classification import classification_metrics

    predicted = prediction.predictions.argmax(axis=-1)
    return classification_metrics(
        [labels[i] for i in prediction.label_ids], [labels[i] for i in predicted]
    )


def save(
    model: Any,
    tokenizer: Any,
    out: Path,
    method: str,
    base_model: str,
    labels: list[str],
    hyper: Hyper,
    allow_pickle: bool = False,
) -> tuple[int, int]:
    """Write the package: adapter + tokenizer + manifest; returns (trainable, total) params."""
    trainable, total = model.get_nb_trainable_parameters()
    model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    PackageManifest(
        kind="encoder-classifier",
        method=method,
        base_model=base_model,
        labels=labels,
        max_length=hyper.max_length,
        trainable_params=int(trainable),
        total_params=int(total),
        options={"allow_pickle": True} if allow_pickle else {},
    ).write(out)
    return int(trainable), int(total)


def train_peft_classifier(
    train_path: Path,
    base_model: str,
    method: str,
    hyper: Hyper,
    out: Path,
    allow_pickle: bool = False,
    validation_path: Path | None = None,
    metric: str = "f1_macro",
) -> TrainResult:
    """Fine-tune an encoder classifier with a PEFT method and save it as a package.

    Args:
        train_path: Curated training JSONL (``text``, ``label``).
        base_model: Catalogue alias, folder, or hub id (stored as given in the manifest).
        method: One of ``PEFT_METHODS``.
        hyper: Hyperparameters.
        out: Package folder to write.
        allow_pickle: The spec's ``allow_pickle`` (the base may load from pickle-based weights).
        validation_path: A validation part of the training data (never the eval split): the
            model is scored there after each epoch and the best epoch is kept (early stopping).
        metric: The classification metric validation is judged by.

    Returns:
        Where the package is, and what training cost.
    """
    from transformers import AutoTokenizer

    from adaptflow.catalogue import resolve_base_model

    rows = read_jsonl(train_path)
    labels = sorted({row["label"] for row in rows})
    label_ids = [labels.index(row["label"]) for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(base_model))
    model = setup(base_model, labels, method, hyper, allow_pickle)
    held = None
    if validation_path is not None:
        val_rows = [row for row in read_jsonl(validation_path) if row["label"] in labels]
        held = Validation(
            [row["text"] for row in val_rows],
            [labels.index(row["label"]) for row in val_rows],
            labels,
            metric,
        )
    trained = train(model, tokenizer, [row["text"] for row in rows], label_ids, hyper, out, held)
    trainable, total = save(model, tokenizer, out, method, base_model, labels, hyper, allow_pickle)
    return TrainResult(
        str(out), method, trainable, total, trained.seconds, trained.tokens, trained.steps,
        trained.history, trained.validation_history, trained.best_epoch,
    )  # fmt: skip


train_peft_classifier_task = task(name="train_peft", cache_policy=NO_CACHE, tags=["gpu"])(
    train_peft_classifier
)
