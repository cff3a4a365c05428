"""Recipe: parameter-efficient fine-tuning (LoRA and its peft siblings) of an encoder classifier.

setup -> train -> save, as top-level functions. Training uses the transformers ``Trainer``
(progress bar, seeding, gradient accumulation and resumable checkpoints for free); MLflow
reporting is off here because ``registry/`` is the only code that talks to MLflow: the loss
history is returned and logged by the flow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import SpecError
from tasks.curate.records import read_jsonl
from tasks.train.encoder import PackageManifest

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


def peft_config(method: str, hyper: Hyper, modules_to_save: list[str]) -> Any:
    """The peft config for ``method`` on a sequence-classification model."""
    from peft import IA3Config, LoraConfig, TaskType

    if method in ("lora", "dora"):
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=hyper.lora_r,
            lora_alpha=hyper.lora_alpha,
            lora_dropout=hyper.lora_dropout,
            use_dora=method == "dora",
            modules_to_save=modules_to_save,
        )
    if method == "ia3":
        return IA3Config(task_type=TaskType.SEQ_CLS, modules_to_save=modules_to_save)
    raise ValueError(f"not a PEFT method for encoders: {method}")


def setup(
    base_model: str, labels: list[str], method: str, hyper: Hyper, allow_pickle: bool = False
) -> Any:
    """Load the base encoder with a fresh classification head and wrap it with peft.

    Raises:
        SpecError: When the base has only pickle-based weights and ``allow_pickle`` is off.
    """
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, set_seed

    from adaptflow.catalogue import resolve_base_model
    from tasks.train.lm import pickle_refused, weights_arguments

    set_seed(hyper.seed)  # the new head's initialisation draws from the global RNG
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(base_model),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            output_loading_info=True,
            **weights_arguments(allow_pickle),
        )
    except OSError as exc:
        if allow_pickle or "safetensors" not in str(exc):
            raise
        raise SpecError(pickle_refused(base_model)) from None
    # Anything the checkpoint lacks is freshly initialised and must be trained and saved with
    # the adapter, or a reload would draw different random weights.
    fresh = sorted({key.split(".")[0] for key in info["missing_keys"]})
    return get_peft_model(model, peft_config(method, hyper, fresh))


def train(
    model: Any, tokenizer: Any, texts: list[str], label_ids: list[int], hyper: Hyper, out: Path
) -> tuple[int, float, list[tuple[int, float]], int]:
    """Fine-tune ``model`` in place; returns (tokens, seconds, loss history, steps)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from adaptflow.hardware import precision_arguments, resolve_precision

    encodings = tokenizer(texts, truncation=True, max_length=hyper.max_length)
    tokens = sum(len(ids) for ids in encodings["input_ids"])
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.learning_rate,
        per_device_train_batch_size=hyper.batch_size,
        weight_decay=hyper.weight_decay,
        seed=hyper.seed,
        data_seed=hyper.seed,
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=5,
        report_to="none",
        use_cpu=True,
        # this recipe trains on CPU (see adaptflow.hardware.CPU_RECIPE_TASKS): auto is fp32
        **precision_arguments(resolve_precision(hyper.precision, "cpu", False)),
        optim="adamw_torch",
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Examples(dict(encodings), label_ids),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    history = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    epochs = max(1, round(hyper.epochs))
    return tokens * epochs, seconds, history, int(output.global_step)


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
) -> TrainResult:
    """Fine-tune an encoder classifier with a PEFT method and save it as a package.

    Args:
        train_path: Curated training JSONL (``text``, ``label``).
        base_model: Catalogue alias, folder, or hub id (stored as given in the manifest).
        method: One of ``PEFT_METHODS``.
        hyper: Hyperparameters.
        out: Package folder to write.
        allow_pickle: The spec's ``allow_pickle`` (the base may load from pickle-based weights).

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
    tokens, seconds, history, steps = train(
        model, tokenizer, [row["text"] for row in rows], label_ids, hyper, out
    )
    trainable, total = save(model, tokenizer, out, method, base_model, labels, hyper, allow_pickle)
    return TrainResult(str(out), method, trainable, total, seconds, tokens, steps, history)


train_peft_classifier_task = task(name="train_peft", cache_policy=NO_CACHE, tags=["gpu"])(
    train_peft_classifier
)
