"""Recipe: supervised fine-tuning of generative models (instruction, qa, summarization).

setup -> train -> save, as top-level functions, for decoders (answer tokens carry the loss,
examples packed) and encoder-decoders (source in, target out), with any method of
``tasks.train.methods``. Training runs on the transformers ``Trainer``; on top of it this recipe
adds what it lacks for a pipeline that gets killed: checkpoints are written every
``checkpoint_steps`` under a folder keyed by everything that determines the result, each gets a
completeness marker once fully written, and a re-run with the same inputs resumes from the last
complete one (the Trainer restores weights, optimizer, scheduler, RNG and data position). A
resumed run ends with the same weights as an uninterrupted one (tested to 1e-6 on CPU).

``train.precision`` picks mixed precision (bf16 or fp16 autocast over fp32 master weights;
``auto`` is bf16 on a CUDA GPU that has it). ``qlora`` loads the base in 4 bits (bitsandbytes
NF4) first. With ``train.devices`` > 1 the whole recipe runs as that many torchrun ranks
(``tasks.train.launch``): ``batch_size`` stays the global batch, split evenly across them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.catalogue import resolve_base_model
from adaptflow.hardware import precision_arguments, qlora_error, qlora_missing, resolve_precision
from adaptflow.spec import LOWER_IS_BETTER
from runtime.loading import load_base, load_base_tokenizer
from runtime.manifest import KINDS, PackageManifest, family_of
from runtime.prompts import Encoded, collator, encode_seq2seq, encode_sft
from tasks.curate.records import read_jsonl
from tasks.train import launch
from tasks.train.lm import qlora_loading, training_set
from tasks.train.methods import (
    PEFT_METHODS,
    QUANTIZED_METHODS,
    VIRTUAL_TOKEN_METHODS,
    MethodOptions,
    apply_method,
    trainable_parameters,
)
from tasks.train.peft import Hyper, TrainResult, best_epoch, epoch_scores

COMPLETE = "adaptflow_complete"  # written into a checkpoint folder once it is fully saved


@dataclass
class GenerativeResult(TrainResult):
    """A generative run's result, with where it resumed from (None: from the start)."""

    resumed_from: str | None = None
    truncated: int = 0
    packed: bool = False
    precision: str = "fp32"  # what training ran in (train.precision resolved on this machine)
    devices: int = 1


def run_key(train_path: Path, base_model: str, method: str, hyper: Hyper, task: str) -> str:
    """A key for everything that determines the trained weights (data bytes included)."""
    digest = hashlib.sha256(train_path.read_bytes()).hexdigest()
    inputs = {"base": base_model, "method": method, "hyper": asdict(hyper), "task": task}
    identity = json.dumps(inputs | {"data": digest}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint under ``folder`` with its completeness marker.

    Checkpoints without the marker were cut off while being written; they are removed so the
    Trainer's own rotation never counts them.
    """
    if not folder.is_dir():
        return None
    complete = []
    for checkpoint in folder.glob("checkpoint-*"):
        if (checkpoint / COMPLETE).is_file():
            complete.append(checkpoint)
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def _marker_callback() -> Any:
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):  # type: ignore[misc]
        """Mark a checkpoint complete after the Trainer has written all of it.

        With several ranks every one writes its own RNG state into the checkpoint and the
        Trainer does not wait for them after saving, so rank 0 marks it only after a barrier.
        """

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            launch.barrier()
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                (folder / COMPLETE).write_text(json.dumps({"step": state.global_step}) + "\n")

    return MarkComplete()


def options(hyper: Hyper) -> MethodOptions:
    """The method knobs of ``hyper``."""
    return MethodOptions(
        lora_r=hyper.lora_r,
        lora_alpha=hyper.lora_alpha,
        lora_dropout=hyper.lora_dropout,
        virtual_tokens=hyper.virtual_tokens,
        unfrozen_layers=hyper.unfrozen_layers,
        target_modules=hyper.target_modules,
    )


def run_precision(hyper: Hyper) -> str:
    """``hyper.precision`` resolved for this machine (generative recipes train on CUDA if any).

    Raises:
        CapabilityError: fp16 without CUDA, bf16 on a GPU without bfloat16.
    """
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return resolve_precision(hyper.precision, "cuda" if cuda else "cpu", bf16)


def quantized_loading(method: str, hyper: Hyper) -> dict[str, Any] | None:
    """``from_pretrained`` arguments of a method that loads its base quantized (else None).

    Raises:
        CapabilityError: ``qlora`` without a CUDA GPU or without bitsandbytes.
    """
    if method not in QUANTIZED_METHODS:
        return None
    from adaptflow.hardware import this_machine

    missing = qlora_missing(this_machine())
    if missing:
        raise qlora_error(missing)
    return qlora_loading(run_precision(hyper), int(os.environ.get("LOCAL_RANK", "0")))


def setup(
    base_model: str, method: str, hyper: Hyper, allow_pickle: bool = False
) -> tuple[Any, Any, str]:
    """Load tokenizer and base model and make it train what ``method`` trains.

    Returns:
        (model to train, tokenizer, family).
    """
    from transformers import AutoConfig, set_seed

    from adaptflow.catalogue import resolve_base_model

    path = resolve_base_model(base_model)
    family = family_of(AutoConfig.from_pretrained(path, trust_remote_code=False))
    extra = quantized_loading(method, hyper)  # before any loading: fail fast
    tokenizer = load_base_tokenizer(base_model)
    set_seed(hyper.seed)  # peft's new weights draw from the global RNG
    model = load_base(base_model, family, allow_pickle, extra)
    model.config.use_cache = False  # a cache disables the packed-sequence mask (see lm.collator)
    return apply_method(model, method, family, options(hyper)), tokenizer, family


def encode_rows(
    tokenizer: Any, rows: list[dict[str, Any]], family: str, max_length: int
) -> list[Encoded]:
    """Encode curated rows (``text``, ``target``, a conversation's ``context``) for ``family``.

    A tool-calling conversation also has ``tools`` (the schemas) and ``steps`` (the calls and
    results before the answer); the assistant's calls carry loss like its answer.
    """
    encode = encode_sft if family == "decoder" else encode_seq2seq
    return [
        encode(
            tokenizer,
            row["text"],
            row["target"],
            max_length,
            row.get("context"),
            tools=row.get("tools"),
            steps=row.get("steps"),
        )
        for row in rows
    ]


def uses_packing(hyper: Hyper, family: str, method: str) -> bool:
    """Packing applies to decoders, and not to methods that prepend virtual tokens."""
    return hyper.packing and family == "decoder" and method not in VIRTUAL_TOKEN_METHODS


@dataclass(frozen=True)
class Validation:
    """A validation part to stop on: its curated rows, the metric, and how to answer them.

    With ``texts`` the rows are documents (``text``) scored as a language model scores them
    (perplexity and next-token accuracy, ``tasks.evaluate.forgetting.lm_metrics``): continued
    pre-training. Otherwise the candidate answers the rows and its answers are scored.
    """

    rows: list[dict[str, Any]]
    metric: str
    max_new_tokens: int
    texts: bool = False


def _scoring_trainer(validation: Validation, tokenizer: Any, family: str, max_length: int) -> Any:
    """A ``Trainer`` whose evaluation answers the validation rows and scores the answers.

    The Trainer's own evaluation computes the loss of teacher-forced targets; a generative
    candidate is judged on what it generates (ROUGE-L, exact match, token F1), so ``evaluate``
    is overridden to score greedy answers with ``runtime.generate.score_generator``,
    the gate's own scoring. The rest (early stopping, keeping the best epoch's checkpoint) is
    the Trainer's: ``EarlyStoppingCallback`` and ``load_best_model_at_end``.
    """
    from transformers import Trainer

    from runtime.generate import Generator, score_generator
    from tasks.evaluate.forgetting import lm_metrics

    class ScoredTrainer(Trainer):  # type: ignore[misc]
        def evaluate(
            self,
            eval_dataset: Any = None,
            ignore_keys: list[str] | None = None,
            metric_key_prefix: str = "eval",
        ) -> dict[str, float]:
            model: Any = self.model
            config = model.config
            model.eval()
            cached, config.use_cache = config.use_cache, True  # off for packed training
            try:
                if validation.texts:  # the gate's domain perplexity, on the validation part
                    texts = [row["text"] for row in validation.rows]
                    scored = lm_metrics(model, tokenizer, texts, max_length)
                else:
                    generator = Generator(
                        model, tokenizer, family, max_length, validation.max_new_tokens
                    )
                    scored = score_generator(generator, validation.rows)["metrics"]
            finally:
                config.use_cache = cached
                model.train()
            metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in scored.items()}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(
                self.args, self.state, self.control, metrics
            )
            return metrics

    return ScoredTrainer


def train(
    model: Any,
    tokenizer: Any,
    examples: list[Encoded],
    family: str,
    packed: bool,
    hyper: Hyper,
    checkpoints: Path,
    validation: Validation | None = None,
) -> tuple[float, list[tuple[int, float]], int, str | None, list[tuple[float, float]]]:
    """Fine-tune ``model`` in place, resuming from the last complete checkpoint if any.

    With ``packed``, examples are bin-packed into rows of ``hyper.max_length`` tokens and
    ``hyper.batch_size`` counts rows. ``hyper.batch_size`` is the global batch: under torchrun
    each of the ``hyper.devices`` ranks takes an equal share of it.

    With ``validation``, the model answers the validation rows after every epoch and is scored
    by ``validation.metric``; training stops after ``hyper.patience`` epochs without
    improvement and the best epoch's weights are kept. Checkpoints are then written once per
    epoch (a killed run resumes from the last finished epoch).

    Returns:
        (seconds, loss history, optimizer steps, checkpoint resumed from or None, the
        validation metric after every epoch).
    """
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    from tasks.train.progress import show_progress

    resume = last_complete_checkpoint(checkpoints)
    saving: dict[str, Any] = {"save_strategy": "steps", "save_steps": hyper.checkpoint_steps}
    trainer_class: Any = Trainer
    callbacks = [_marker_callback()]
    if validation is not None:
        saving = {
            "save_strategy": "epoch",
            "eval_strategy": "epoch",
            "load_best_model_at_end": True,
            "metric_for_best_model": validation.metric,
            "greater_is_better": validation.metric not in LOWER_IS_BETTER,
        }
        trainer_class = _scoring_trainer(validation, tokenizer, family, hyper.max_length)
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=hyper.patience))
    cuda = torch.cuda.is_available()
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if hyper.batch_size % ranks:
        raise ValueError(f"batch size {hyper.batch_size} does not split over {ranks} ranks")
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.learning_rate,
        per_device_train_batch_size=hyper.batch_size // ranks,
        weight_decay=hyper.weight_decay,
        seed=hyper.seed,
        data_seed=hyper.seed,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=5,
        report_to="none",
        use_cpu=not cuda,
        **precision_arguments(run_precision(hyper)),
        # several CPU ranks talk over gloo (accelerate would pick MPI when torch has it)
        ddp_backend="gloo" if ranks > 1 and not cuda else None,
        optim="adamw_torch",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **saving,
    )
    train_set = training_set(examples, packed, hyper.max_length)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        # the Trainer wants an eval set with an eval strategy; ScoredTrainer reads the rows
        eval_dataset=train_set if validation is not None else None,
        data_collator=collator(tokenizer, family, packed),
        callbacks=callbacks,
    )
    show_progress(trainer, "train" if validation is None else "train (scored per epoch)")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    launch.barrier()  # every rank is done with the checkpoints before rank 0 moves on
    seconds = time.perf_counter() - started
    logged = trainer.state.log_history
    history = [(int(e["step"]), float(e["loss"])) for e in logged if "loss" in e]
    scores = epoch_scores(logged, validation.metric) if validation is not None else []
    return seconds, history, int(output.global_step), str(resume) if resume else None, scores


def epochs_trained(scores: list[tuple[float, float]], hyper: Hyper) -> int:
    """Epochs a run went through: the last validated epoch when it stopped early, else all."""
    return max(1, round(max((e for e, _ in scores), default=hyper.epochs)))


#: The package's generation settings (``transformers.GenerationConfig``), beside the manifest.
GENERATION_CONFIG = "generation_config.json"


def save(
    model: Any,
    tokenizer: Any,
    out: Path,
    family: str,
    method: str,
    base_model: str,
    hyper: Hyper,
    allow_pickle: bool = False,
) -> tuple[int, int]:
    """Write the package (adapter or weights, tokenizer, manifest); returns (trainable, total).

    An adapter package over a base loaded with ``allow_pickle`` records it, so loading the
    package for serving may load that base the same way.
    """
    trainable, total = trainable_parameters(model)
    if method in PEFT_METHODS:
        model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    else:
        model.config.use_cache = True  # generation wants its cache back
        model.save_pretrained(str(out / "weights"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    # how the model stops and decodes (eos ids, e.g. Llama 3's several): a full-weights package
    # has it in weights/, an adapter package would otherwise fall back to the base's defaults
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.to_json_file(str(out / GENERATION_CONFIG))
    PackageManifest(
        kind=KINDS[family],
        method=method,
        base_model=base_model,
        labels=[],
        max_length=hyper.max_length,
        trainable_params=trainable,
        total_params=total,
        options={"max_new_tokens": hyper.max_new_tokens}
        | ({"allow_pickle": True} if allow_pickle and method in PEFT_METHODS else {}),
    ).write(out)
    return trainable, total


def train_generator(
    train_path: Path,
    base_model: str,
    method: str,
    hyper: Hyper,
    out: Path,
    checkpoint_root: Path,
    task: str = "instruction",
    bundle_base: bool = False,
    allow_pickle: bool = False,
    validation_path: Path | None = None,
    metric: str = "rougeL",
) -> GenerativeResult:
    """Fine-tune a decoder or encoder-decoder on (text, target) rows and save it as a package.

    Args:
        train_path: Curated training JSONL (``text``, ``target``).
        base_model: Catalogue alias, folder, or hub id.
        method: One of ``tasks.train.methods.GENERATIVE_METHODS``.
        hyper: Hyperparameters.
        out: Package folder to write.
        checkpoint_root: Where resumable checkpoints live (a sub-folder per ``run_key``); the
            run's folder is removed once the package is written.
        task: The spec's task (part of the checkpoint key).
        bundle_base: Copy the base model into the package (``base/``) when an adapter is
            saved: for a base that exists only on this machine, such as a CPT stage's output.
        allow_pickle: The spec's ``allow_pickle`` (the base may load from pickle-based weights).
        validation_path: A validation part of the training data (never the eval split): the
            candidate answers it after every epoch, stops when ``metric`` stops improving
            (``hyper.patience`` epochs) and keeps its best epoch (``best_epoch`` in the result).
        metric: The generation metric validation is judged by (the spec's ``target.metric``).

    Returns:
        Where the package is, what training cost, and whether it resumed.
    """
    if hyper.devices > 1 and not launch.in_worker():  # run this function as torchrun ranks
        arguments = {
            "train_path": train_path,
            "base_model": base_model,
            "method": method,
            "hyper": hyper,
            "out": out,
            "checkpoint_root": checkpoint_root,
            "task": task,
            "bundle_base": bundle_base,
            "allow_pickle": allow_pickle,
            "validation_path": validation_path,
            "metric": metric,
        }
        launched: GenerativeResult = launch.run_distributed(
            "tasks.train.sft:train_generator", arguments, hyper.devices, checkpoint_root
        )
        return launched
    rows = read_jsonl(train_path)
    checkpoints = checkpoint_root / run_key(train_path, base_model, method, hyper, task)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, family = setup(base_model, method, hyper, allow_pickle)
    examples = encode_rows(tokenizer, rows, family, hyper.max_length)
    packed = uses_packing(hyper, family, method)
    validation = None
    if validation_path is not None:
        validation = Validation(read_jsonl(validation_path), metric, hyper.max_new_tokens)
    seconds, history, steps, resumed, scores = train(
        model, tokenizer, examples, family, packed, hyper, checkpoints, validation
    )
    if launch.is_main_process():
        trainable, total = save(
            model, tokenizer, out, family, method, base_model, hyper, allow_pickle
        )
        if bundle_base and method in PEFT_METHODS:
            shutil.copytree(resolve_base_model(base_model), out / "base", dirs_exist_ok=True)
        shutil.rmtree(checkpoints, ignore_errors=True)
    else:
        trainable, total = trainable_parameters(model)
    tokens = sum(len(e.input_ids) for e in examples) * epochs_trained(scores, hyper)
    return GenerativeResult(
        package_dir=str(out),
        method=method,
        trainable_params=trainable,
        total_params=total,
        train_seconds=seconds,
        train_tokens=tokens,
        steps=steps,
        loss_history=history,
        resumed_from=resumed,
        truncated=sum(e.truncated for e in examples),
        packed=packed,
        precision=run_precision(hyper),
        devices=hyper.devices,
        validation_history=scores,
        best_epoch=best_epoch(scores, metric in LOWER_IS_BETTER) if scores else None,
    )


train_generator_task = task(name="train_generator", cache_policy=NO_CACHE, tags=["gpu"])(
    train_generator
)
