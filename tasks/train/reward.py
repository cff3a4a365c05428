"""Recipe: a reward model (method ``reward``): a scalar head trained on preference pairs.

setup -> train -> save, with TRL's ``RewardTrainer`` doing the optimisation (the pairwise
Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``). Every ``trl`` import is in
``train`` below, so a TRL API move breaks one function.

The base is a decoder or an encoder loaded as a sequence classifier with one output. What
trains is ``align.adapter``: a LoRA or DoRA adapter (the new head trains and is saved with it,
peft's ``modules_to_save``), or every weight (``full``). Inputs are built by
``runtime.reward_model.reward_ids`` and handed to TRL already tokenized, so training, the
gate, ``predict`` and GRPO's ``kind: model`` reward read the same tokens.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.catalogue import base_family, resolve_base_model
from adaptflow.errors import SpecError
from adaptflow.hardware import precision_arguments
from runtime.loading import load_base_tokenizer, weights_arguments
from runtime.manifest import PackageManifest
from runtime.reward_model import KIND, reward_ids
from tasks.curate.records import read_jsonl
from tasks.train.align import AlignOptions
from tasks.train.methods import trainable_parameters
from tasks.train.peft import Hyper, fresh_modules, peft_config
from tasks.train.sft import GenerativeResult, run_precision


def setup(
    base_model: str, hyper: Hyper, align: AlignOptions, allow_pickle: bool = False
) -> tuple[Any, Any, Any, bool]:
    """(model with a fresh scalar head, tokenizer, peft config or None, is a decoder).

    Raises:
        SpecError: When the base is an encoder-decoder.
    """
    from transformers import AutoModelForSequenceClassification, set_seed

    from runtime.loading import refusing_pickle

    family = base_family(base_model)
    if family not in ("decoder", "encoder"):
        raise SpecError(
            f"method 'reward' puts a scalar head on a decoder or an encoder; base model "
            f"'{base_model}' is an {family}"
        )
    tokenizer = load_base_tokenizer(base_model)
    set_seed(hyper.seed)  # the new head's initialisation draws from the global RNG
    with refusing_pickle(base_model, allow_pickle):
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(base_model),
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            output_loading_info=True,
            **weights_arguments(allow_pickle),
        )
    peft = None
    if align.adapter != "full":
        # the head is new: it trains and is saved with the adapter
        # the outermost fully missing modules: ``bert.pooler``, not all of ``bert``, when a
        # masked-LM checkpoint lacks only the pooler (see tasks.train.peft.fresh_modules)
        fresh = fresh_modules(model, info["missing_keys"])
        peft = peft_config(align.adapter, hyper, fresh, model=model)
    else:
        for parameter in model.parameters():
            parameter.requires_grad = True
    return model, tokenizer, peft, family == "decoder"


def pair_ids(
    tokenizer: Any, rows: list[dict[str, Any]], max_length: int, decoder: bool
) -> list[dict[str, list[int]]]:
    """Curated pairs as TRL's tokenized records (``chosen_ids``, ``rejected_ids``).

    Raises:
        SpecError: When a row is not a preference pair.
    """
    out = []
    for row in rows:
        if row.get("rejected") is None:
            raise SpecError(
                "method 'reward' trains on preference pairs (data.format preference); "
                f"record {row.get('id')} has no rejected answer"
            )
        prompt, context = row["text"], row.get("context")
        out.append(
            {
                "chosen_ids": reward_ids(
                    tokenizer, prompt, row["target"], max_length, decoder, context
                ),
                "rejected_ids": reward_ids(
                    tokenizer, prompt, row["rejected"], max_length, decoder, context
                ),
            }
        )
    return out


def train(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, list[int]]],
    hyper: Hyper,
    peft: Any,
    out: Path,
) -> tuple[Any, float, list[dict[str, Any]], int]:
    """Train in place; returns (the trained model, seconds, log history, optimizer steps)."""
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from tasks.train.progress import show_progress

    config = RewardConfig(
        output_dir=str(out / "trainer"),
        num_train_epochs=hyper.epochs,
        learning_rate=hyper.learning_rate,
        per_device_train_batch_size=hyper.batch_size,
        weight_decay=hyper.weight_decay,
        seed=hyper.seed,
        data_seed=hyper.seed,
        max_length=None,  # inputs arrive truncated by reward_ids (TRL would drop long pairs)
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=5,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        optim="adamw_torch",
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # as the other recipes; TRL turns it on by default
        **precision_arguments(run_precision(hyper)),  # explicit: TRL defaults to bf16
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=peft,
    )
    show_progress(trainer, "reward")
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return trainer.model, seconds, trainer.state.log_history, int(output.global_step)


def save(
    model: Any,
    tokenizer: Any,
    out: Path,
    base_model: str,
    hyper: Hyper,
    align: AlignOptions,
    decoder: bool,
    allow_pickle: bool = False,
) -> tuple[int, int]:
    """Write the package (adapter or weights, tokenizer, manifest); returns (trainable, total)."""
    trainable, total = trainable_parameters(model)
    adapter = align.adapter != "full"
    model.save_pretrained(str(out / ("adapter" if adapter else "weights")), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    PackageManifest(
        kind=KIND,
        method="reward",
        base_model=base_model,
        labels=["score"],
        max_length=hyper.max_length,
        trainable_params=trainable,
        total_params=total,
        options={"adapter": align.adapter, "decoder": decoder}
        | ({"allow_pickle": True} if allow_pickle and adapter else {}),
    ).write(out)
    return trainable, total


def train_reward_model(
    train_path: Path,
    base_model: str,
    hyper: Hyper,
    align: AlignOptions,
    out: Path,
    allow_pickle: bool = False,
) -> GenerativeResult:
    """Train a reward model on curated preference pairs and save it as a package.

    Args:
        train_path: Curated training JSONL (``text``, ``target`` = chosen, ``rejected``).
        base_model: Catalogue alias, folder, or hub id (decoder or encoder).
        hyper: Hyperparameters (the spec's ``train`` block).
        align: The spec's ``align`` block (``adapter``).
        out: Package folder to write.
        allow_pickle: The spec's ``allow_pickle``.
    """
    rows = read_jsonl(train_path)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, peft, decoder = setup(base_model, hyper, align, allow_pickle)
    records = pair_ids(tokenizer, rows, hyper.max_length, decoder)
    model, seconds, logged, steps = train(model, tokenizer, records, hyper, peft, out)
    trainable, total = save(model, tokenizer, out, base_model, hyper, align, decoder, allow_pickle)
    tokens = [int(e["num_tokens"]) for e in logged if "num_tokens" in e]
    return GenerativeResult(
        package_dir=str(out),
        method="reward",
        trainable_params=trainable,
        total_params=total,
        train_seconds=seconds,
        train_tokens=tokens[-1] if tokens else 0,
        steps=steps,
        loss_history=[(int(e["step"]), float(e["loss"])) for e in logged if "loss" in e],
        precision=run_precision(hyper),
    )


train_reward_model_task = task(name="train_reward_model", cache_policy=NO_CACHE, tags=["gpu"])(
    train_reward_model
)
