"""Recipe: prune whole blocks of a trained generative decoder, recover by distillation, int8.

setup -> Block Influence -> prune -> distill -> save (fp32, or int8 with ``compress.quantize``),
as top-level functions: the generative sibling of ``tasks/train/compress.py`` (encoder
classifiers), sharing its options, its block count rule and its block surgery.

**Which blocks go.** ShortGPT's Block Influence (Men et al. 2024, arXiv:2403.03853),
``BI_i = 1 - mean over tokens of cos(x_i, y_i)`` with ``x_i`` the hidden state entering block
``i`` and ``y_i`` the one leaving it, measured on the teacher over the training examples
rendered exactly as training renders them (prompt and answer, ``encode_sft``; at most
``compress.CALIBRATION``), every non-padding token counted. The states are read by hooks on the
blocks themselves, not from ``output_hidden_states``, whose last entry has the final norm
applied (GPT-2's ``ln_f``, Llama's ``norm``), which would inflate the last block's influence.
The ``n`` blocks with the lowest BI go (``compress.choose_blocks``).

**The pruned model** is ``compress.prune_blocks``'s copy (the stack without those blocks, the
config's depth updated: ``num_hidden_layers``, GPT-2's ``n_layer`` through its attribute map)
rebuilt from its config and loaded with the kept weights, which is what ``from_pretrained``
will build: every per-layer attribute is numbered for the new depth (the ``layer_idx`` that
GPT-2 and Llama attention use to find their KV-cache slot, GPT-2's inverse-layer-index
scaling) and a config's per-layer lists (``layer_types``) keep the kept blocks' entries. Left
as copied, a block would keep its old index and generation with a cache would write to the
wrong slot (or past the end of the cache).

**Recovery.** Token-level knowledge distillation (Hinton et al. 2015) from the unpruned model,
teacher-forced on the training sequences, as Minitron recovers depth-pruned models
(Muralidharan et al. 2024, arXiv:2407.14679): on every answer token (the tokens SFT puts loss
on), ``loss = alpha * CE(student, next token) + (1 - alpha) * T^2 * KL(p_teacher^T ||
p_student^T)``, the KL over the whole vocabulary of the temperature-softened next-token
distributions, averaged over answer tokens. Every weight of the student trains. The teacher
runs alongside, frozen, on each batch: its logits cannot be computed once beforehand as the
classifier recipe does (a vocabulary-wide distribution per token is too big to keep).

Written as a ``Trainer.compute_loss`` override, not TRL's ``DistillationTrainer``/GKD: in
TRL 1.16 that trainer is on-policy (the student generates answers at every step and learns
the teacher's distributions on them), which on CPU costs a generation per step and is not the
teacher-forced recovery Minitron does; the fixed training sequences here also make each step
as cheap as SFT's plus one teacher forward.

**int8** (``compress.quantize: int8``): the distilled student (or, with ``prune.blocks: 0``, the
teacher itself, nothing trained) is saved in ``runtime.int8``'s format, as ``adaptflow export
--int8`` writes generative packages: linear layers int8 per output channel, a head tied to the
embeddings and the embeddings fp32. ``runtime.loading.load_generator`` reads it.

Decoders only in this version: an encoder-decoder teacher (``seq2seq-lm``) has two stacks and
cross-attention, and is refused.

The package is a full-weights generator package of the teacher's kind (``weights/``,
tokenizer with its chat template, ``generation_config.json``), its manifest recording the
teacher, every block's BI, the removed and kept blocks and the distillation settings.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.manifest import PackageManifest
from runtime.prompts import IGNORE, Encoded, collator
from tasks.curate.records import read_jsonl
from tasks.train.compress import (
    CALIBRATION,
    PruneOptions,
    choose_blocks,
    one_stack,
    prune_blocks,
    pruned_options,
)
from tasks.train.peft import Hyper, TrainResult

#: Config fields that hold one entry per block (kept for the kept blocks when pruning).
PER_LAYER_CONFIG = ("layer_types",)


def _batches(tokenizer: Any, examples: list[Encoded], size: int) -> Any:
    """``examples`` padded ``size`` at a time (right padding, labels padded with IGNORE)."""
    collate = collator(tokenizer, "decoder", packing=False)
    for start in range(0, len(examples), size):
        yield collate(
            [{"input_ids": e.input_ids, "labels": e.labels} for e in examples[start : start + size]]
        )


def decoder_block_influence(
    model: Any, tokenizer: Any, examples: list[Encoded], batch_size: int = 16
) -> list[float]:
    """ShortGPT's Block Influence of each block of a decoder on ``examples`` (see above)."""
    import torch

    blocks = list(one_stack(model))
    totals = [0.0] * len(blocks)
    inputs: dict[int, Any] = {}
    mask: Any = None

    def entering(index: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def leaving(index: int) -> Any:
        def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            cosine = torch.nn.functional.cosine_similarity(
                inputs.pop(index).float(), out.float(), dim=-1
            )
            totals[index] += float((1 - cosine)[mask].sum())

        return hook

    handles = [
        handle
        for i, block in enumerate(blocks)
        for handle in (
            block.register_forward_pre_hook(entering(i), with_kwargs=True),
            block.register_forward_hook(leaving(i), with_kwargs=True),
        )
    ]
    model.eval()
    count = 0.0
    try:
        with torch.inference_mode():
            for batch in _batches(tokenizer, examples, batch_size):
                mask = batch["attention_mask"].bool()
                count += float(mask.sum())
                model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                )
    finally:
        for handle in handles:
            handle.remove()
    return [total / max(count, 1.0) for total in totals]


def prune_decoder(model: Any, remove: list[int]) -> Any:
    """A new model without the blocks at ``remove``, built as ``from_pretrained`` would build it.

    ``compress.prune_blocks`` removes them from a copy; the copy is then rebuilt from its
    config and loaded with its weights, so every per-layer index is the new one (see the
    module docstring). ``model`` is untouched.
    """
    depth = len(one_stack(model))
    kept = [i for i in range(depth) if i not in set(remove)]
    pruned = prune_blocks(model, remove)
    config = pruned.config
    for name in PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == depth:
            setattr(config, name, [values[i] for i in kept])
    rebuilt = type(pruned)(config)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.generation_config = copy.deepcopy(model.generation_config)
    return rebuilt.to(next(model.parameters()).dtype)


def token_distillation_loss(
    student: Any, teacher: Any, labels: Any, alpha: float, temperature: float
) -> Any:
    """``alpha`` x CE + (1 - alpha) x T^2 x KL(teacher^T || student^T), over answer tokens.

    ``student`` and ``teacher`` are (batch, length, vocab) logits of the same sequences and
    ``labels`` their SFT labels (IGNORE where no loss goes); position ``t`` predicts token
    ``t + 1``. The KL is summed over the vocabulary and averaged over the answer tokens.
    """
    import torch.nn.functional as F

    targets = labels[:, 1:]
    scored = targets != IGNORE
    ours = student[:, :-1][scored].float()
    theirs = teacher[:, :-1][scored].float()
    hard = F.cross_entropy(ours, targets[scored])
    soft = F.kl_div(
        F.log_softmax(ours / temperature, dim=-1),
        F.log_softmax(theirs / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * hard + (1 - alpha) * temperature**2 * soft


def distill(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    examples: list[Encoded],
    hyper: Hyper,
    options: PruneOptions,
    out: Path,
) -> tuple[list[tuple[int, float]], int, float]:
    """Train every weight of ``student`` on the token distillation loss from ``teacher``.

    Returns:
        The loss history, the optimizer steps and the seconds.
    """
    import shutil

    import torch
    from transformers import Trainer, TrainingArguments

    from adaptflow.hardware import precision_arguments
    from tasks.train.progress import show_progress
    from tasks.train.sft import run_precision

    class DistillingTrainer(Trainer):  # type: ignore[misc]
        def compute_loss(  # type: ignore[override]
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
        ) -> Any:
            labels = inputs.pop("labels")
            outputs = model(**inputs, use_cache=False)
            with torch.no_grad():  # the teacher is frozen; its logits are targets
                soft = teacher(**inputs, use_cache=False).logits
            loss = token_distillation_loss(
                outputs.logits, soft, labels, options.alpha, options.temperature
            )
            return (loss, outputs) if return_outputs else loss

    for parameter in student.parameters():
        parameter.requires_grad = True
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    student.config.use_cache = False
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
            use_cpu=not torch.cuda.is_available(),
            **precision_arguments(run_precision(hyper)),
            optim="adamw_torch",
            dataloader_num_workers=0,
            remove_unused_columns=False,
        ),
        train_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in examples],
        data_collator=collator(tokenizer, "decoder", packing=False),
    )
    teacher.to(trainer.args.device)
    show_progress(trainer, "distill")
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(out / "trainer", ignore_errors=True)
    student.to("cpu")
    teacher.to("cpu")
    history = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    return history, int(output.global_step), seconds


def save_generator(model: Any, tokenizer: Any, manifest: PackageManifest, out: Path) -> None:
    """Write a full-weights generator package: ``weights/`` (fp32 or int8), tokenizer, config.

    With ``quantize: int8`` in the manifest's options, ``model`` is quantized in place
    (``runtime.int8.quantize_int8``, as ``adaptflow export --int8`` does) and what became int8
    is added to the manifest's options as ``quantization``. The tokenizer keeps its chat
    template; ``generation_config.json`` (how answers stop) sits beside the manifest, as
    ``tasks.train.sft.save`` writes it.
    """
    from runtime.int8 import quantize_int8, save_int8
    from tasks.train.sft import GENERATION_CONFIG

    model.eval()
    model.config.use_cache = True  # generation wants its cache back
    options = dict(manifest.options)
    out.mkdir(parents=True, exist_ok=True)
    if options.get("quantize") == "int8":
        options["quantization"] = quantize_int8(model)
        save_int8(model, out / "weights")
    else:
        model.save_pretrained(str(out / "weights"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.to_json_file(str(out / GENERATION_CONFIG))
    replace(manifest, options=options).write(out)


def load_teacher(teacher_dir: Path) -> tuple[Any, Any, PackageManifest]:
    """The teacher package as a plain decoder (an adapter merged), its tokenizer and manifest.

    Raises:
        SpecError: An encoder-decoder teacher, or an adapter that adds virtual tokens (there is
            no weight to merge, so no block to prune).
    """
    from adaptflow.errors import AdaptflowError, SpecError
    from runtime.loading import load_generator
    from runtime.manifest import read_raw
    from tasks.train.export import check_mergeable

    kind = read_raw(teacher_dir)["kind"]
    if kind != "causal-lm":
        raise SpecError(
            f"compress.teacher: {teacher_dir} is a '{kind}' package; method 'prune' for "
            "generative tasks prunes decoders (causal-lm packages) only in this version"
        )
    if (teacher_dir / "adapter").is_dir():
        try:
            check_mergeable(teacher_dir, PackageManifest.read(teacher_dir))
        except AdaptflowError as error:
            raise SpecError(f"compress.teacher: {error}") from None
    model, tokenizer, manifest = load_generator(teacher_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # a plain model: blocks can be removed and saved
    model.float()  # distillation trains fp32 master weights; the teacher's logits match them
    return model.eval(), tokenizer, manifest


def prune_and_distill_lm(
    train_path: Path, teacher_dir: Path, hyper: Hyper, options: PruneOptions, out: Path
) -> TrainResult:
    """Prune a decoder package's lowest-influence blocks, distill from it, save a package.

    With ``options.quantize`` the package is int8; with no block to remove (``blocks: 0``,
    quantizing) nothing trains and the package is the teacher, quantized.

    Args:
        train_path: Curated training JSONL (``text``, ``target``; a conversation's
            ``context``, ``tools``, ``steps``).
        teacher_dir: The teacher's generator package (``causal-lm``; adapter or weights).
        hyper: The distillation's training settings (epochs, learning rate, batch, length,
            the package's ``max_new_tokens``).
        options: The spec's ``compress`` block.
        out: Package folder to write.

    Returns:
        What training cost; with ``quantize``, ``train_seconds`` includes quantizing and
        saving, and a quantize-only candidate reports no trainable parameters, steps or tokens.

    Raises:
        SpecError: A teacher that is not a mergeable decoder (``load_teacher``).
        ValueError: A block count that removes all blocks, or none without quantizing.
    """
    from transformers import set_seed

    from runtime.int8 import parameter_count
    from tasks.train.sft import encode_rows

    teacher, tokenizer, manifest = load_teacher(teacher_dir)
    examples = encode_rows(tokenizer, read_jsonl(train_path), "decoder", hyper.max_length)
    importance = decoder_block_influence(teacher, tokenizer, examples[:CALIBRATION])
    report = choose_blocks(importance, options)
    removed = report.removed
    history: list[tuple[int, float]] = []
    steps, seconds, tokens = 0, 0.0, 0
    student = teacher  # quantize-only (no block removed): the teacher's weights, nothing trains
    if removed:
        set_seed(hyper.seed)
        student = prune_decoder(teacher, removed)
        history, steps, seconds = distill(
            student, teacher, tokenizer, examples, hyper, options, out
        )
        tokens = sum(len(e.input_ids) for e in examples) * max(1, round(hyper.epochs))
    total = parameter_count(student)
    trained = total if removed else 0  # distillation trains every weight of the student
    started = time.perf_counter()
    save_generator(
        student,
        tokenizer,
        PackageManifest(
            kind=manifest.kind,
            method="prune",
            base_model=manifest.base_model,
            labels=[],
            max_length=hyper.max_length,
            trainable_params=int(trained),
            total_params=int(total),
            options={"max_new_tokens": hyper.max_new_tokens} | pruned_options(options, report),
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
        train_tokens=tokens,
        loss_history=history,
        steps=steps,
    )


@task(name="prune_and_distill_lm", cache_policy=NO_CACHE, tags=["gpu"])
def prune_and_distill_lm_task(
    train_path: Path, teacher_dir: Path, hyper: Hyper, options: PruneOptions, out: Path
) -> TrainResult:
    """``prune_and_distill_lm`` as a Prefect task."""
    return prune_and_distill_lm(train_path, teacher_dir, hyper, options, out)
