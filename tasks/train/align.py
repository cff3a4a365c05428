"""Recipe: preference tuning of a decoder (dpo, orpo, simpo, kto) through TRL.

setup -> train -> save, like ``tasks.train.sft``, with TRL's trainers doing the optimisation:
DPO (``trl.DPOTrainer``), KTO (``trl.KTOTrainer``), ORPO (``trl.experimental.orpo``) and SimPO
(``trl.experimental.cpo``'s CPO trainer with ``loss_type="simpo"``). TRL moves its APIs between
releases (ORPO and CPO live in ``trl.experimental``): every import of ``trl`` is in
``_trainer`` below, so a move breaks this one function.

Prompts are rendered by ``runtime.prompts.render_prompt`` (the tokenizer's chat template, or
the plain format) and handed to TRL as text, with a tokenizer that adds no special token to
it (``as_rendered``), so a tuned model is trained on exactly the prompt ``predict``, the gate
and ``adaptflow serve`` give it. TRL appends EOS to every answer.

What trains is ``align.adapter``: a LoRA or DoRA adapter passed to TRL as a ``peft_config``, in
which case DPO's and KTO's reference policy is the same model with the adapter disabled (no
second copy in memory; ``tests/test_align.py`` checks the log-probs); or every weight
(``full``), where TRL keeps a frozen copy as the reference. ORPO and SimPO need no reference.
Checkpoints resume as in SFT (a folder keyed by every input, completeness markers).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.catalogue import base_family
from adaptflow.errors import SpecError
from adaptflow.hardware import precision_arguments
from runtime.loading import load_base, load_base_tokenizer
from runtime.manifest import KINDS, PackageManifest
from runtime.prompts import render_prompt
from runtime.rewards import Reward
from tasks.curate.records import read_jsonl
from tasks.rewards import reward_scorers
from tasks.train.methods import peft_config, trainable_parameters, uses_conv1d
from tasks.train.peft import Hyper
from tasks.train.sft import (
    GenerativeResult,
    _marker_callback,
    last_complete_checkpoint,
    options,
    run_key,
    run_precision,
)

#: Methods without a reference policy (their loss needs none).
REFERENCE_FREE = ("orpo", "simpo")


@dataclass(frozen=True)
class AlignOptions:
    """The spec's ``align`` block."""

    adapter: str = "lora"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    num_generations: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 64  # GRPO: the longest answer sampled (the spec's max_new_tokens)


def answer_ending(tokenizer: Any) -> str:
    """What SFT trains after an answer's text (``runtime.prompts.encode_sft``), as text.

    The template's end of turn, then EOS when that is another token: ``<|im_end|>`` (Qwen2),
    ``<|eot_id|>`` (Llama 3), ``</s>`` (the plain format), but ``<end_of_turn><eos>`` for Gemma,
    whose turns do not end with its EOS. TRL only appends EOS, so a Gemma answer was tuned to
    end ``<eos>`` where SFT taught, and ``answer_logps`` (the preference metrics) scores,
    ``<end_of_turn><eos>``. Read off ``encode_sft`` on a probe, so the two cannot drift; ""
    (TRL appends EOS) when the template rewrites the answer's text so that no ending is
    found after it.
    """
    from runtime.prompts import IGNORE, encode_sft

    answer = "adaptflow probe answer"
    labels = encode_sft(tokenizer, "probe", answer, 4096).labels
    trained = [label for label in labels if label != IGNORE]
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if trained[: len(ids)] != ids:
        return ""
    return str(tokenizer.decode(trained[len(ids) :], clean_up_tokenization_spaces=False))


def preference_rows(
    tokenizer: Any, rows: list[dict[str, Any]], method: str
) -> list[dict[str, Any]]:
    """Curated rows as TRL's text records, prompts rendered as every other path renders them.

    Pairs become ``prompt``, ``chosen``, ``rejected``; KTO rows ``prompt``, ``completion`` and
    a boolean ``label``. Answers end as SFT ends them (``answer_ending``), so preference tuning
    trains and the preference metrics score the same tokens.

    Raises:
        SpecError: When the rows are not the kind ``method`` trains on.
    """
    out = []
    ending = answer_ending(tokenizer) if method != "grpo" else ""
    for row in rows:
        prompt = render_prompt(tokenizer, row["text"], row.get("context"))
        if method == "grpo":  # prompts, the user's text and the reference answer
            out.append({"prompt": prompt, "question": row["text"], "reference": row.get("target")})
        elif method == "kto":
            if row.get("label") not in ("desirable", "undesirable"):
                raise SpecError(
                    f"method 'kto' trains on answers labelled good or bad (data.format kto); "
                    f"record {row.get('id')} has none"
                )
            out.append(
                {
                    "prompt": prompt,
                    "completion": row["target"] + ending,
                    "label": row["label"] == "desirable",
                }
            )
        else:
            if row.get("rejected") is None:
                raise SpecError(
                    f"method '{method}' trains on preference pairs (data.format preference); "
                    f"record {row.get('id')} has no rejected answer"
                )
            out.append(
                {
                    "prompt": prompt,
                    "chosen": row["target"] + ending,
                    "rejected": row["rejected"] + ending,
                }
            )
    return out


def trained_tokens(
    logged: list[dict[str, Any]], tokenizer: Any, records: list[dict[str, Any]], epochs: float
) -> int:
    """Tokens the policy ran through in training.

    TRL's own count where it logs one (DPO, KTO; GRPO: prompts and the sampled answers);
    for ORPO and CPO, which log none, prompt + answer (with its EOS) for each answer of a
    record, times the epochs (within 0.01% of DPO's logged count on the benchmark's pairs).
    """
    seen = [int(e["num_tokens"]) for e in logged if "num_tokens" in e]
    if seen or "reference" in (records[0] if records else {}):
        return seen[-1] if seen else 0  # TRL's count: tokenizing everything again costs time
    total = 0
    eos = tokenizer.eos_token_id
    for record in records:
        answers = [record[k] for k in ("chosen", "rejected", "completion") if k in record]
        text = [record["prompt"] + a for a in answers]  # as TRL reads them: nothing added
        for ids in tokenizer(text, add_special_tokens=False)["input_ids"]:
            total += len(ids) + (ids[-1:] != [eos])  # TRL appends EOS where it is missing
    return round(total * epochs)


def as_rendered(tokenizer: Any, keep_bos: bool = True) -> Any:
    """A copy of ``tokenizer`` for TRL that reads a rendered prompt as it is: nothing added.

    The prompts handed to TRL are rendered text that already holds every special token the
    template writes, and SFT, generation and evaluation tokenize them with
    ``add_special_tokens=False``. TRL's DPO, KTO and GRPO tokenize text with the tokenizer's
    defaults, so with a tokenizer that adds a BOS (Llama 3's, Gemma's, Mistral's) they trained
    on two BOS (the template's and the tokenizer's), or on one the plain format never has; ORPO
    and CPO (SimPO) prepend ``bos_token`` to every prompt that does not start with it (Phi-3's
    template, Mistral's plain format, GPT-2). The copy adds no special token and, with
    ``keep_bos=False``, has no BOS to prepend (ORPO and CPO read ``bos_token_id`` for nothing
    else). The package keeps the original tokenizer. A tokenizer without transformers'
    tokenizers backend is copied as it is.
    """
    import copy

    clone = copy.deepcopy(tokenizer)
    if hasattr(clone, "update_post_processor"):
        clone.add_bos_token = False  # each setter rebuilds the post-processor: "$A", no more
        clone.add_eos_token = False
    if not keep_bos:
        clone.bos_token = None
    return clone


def _reward_function(reward: Reward) -> Any:
    """``reward`` as a TRL reward function (named, for TRL's per-reward logs)."""

    def score(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        # the user's text, not the rendered prompt: what evaluation hands the rewards too
        return reward.score(list(columns["question"]), completions, list(columns["reference"]))

    score.__name__ = reward.name
    return score


def _trainer(
    method: str,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    arguments: dict[str, Any],
    align: AlignOptions,
    peft: Any,
    rewards: list[Reward] | None = None,
    teacher: Any = None,
) -> Any:
    """The TRL trainer of ``method`` (the one place that imports ``trl``).

    ``distill`` (``tasks.train.distill_logit``): TRL's on-policy ``DistillationTrainer``, the
    ``teacher`` model's token distributions over the student's own answers, by the generalized
    JSD ``align.beta`` at ``align.temperature``.
    """
    from datasets import Dataset

    dataset = Dataset.from_list(records)
    common = {
        "model": model,
        "train_dataset": dataset,
        "processing_class": as_rendered(tokenizer, keep_bos=method not in REFERENCE_FREE),
    }
    config: Any  # each trainer has its own config class
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**arguments, beta=align.beta, loss_type=["sigmoid"])
        return DPOTrainer(**common, args=config, peft_config=peft)
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(
            **arguments,
            beta=align.beta,
            desirable_weight=align.desirable_weight,
            undesirable_weight=align.undesirable_weight,
        )
        return KTOTrainer(**common, args=config, peft_config=peft)
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        arguments = {k: v for k, v in arguments.items() if k != "max_length"}  # GRPO has none
        config = GRPOConfig(
            **arguments,
            beta=align.beta,  # the KL pull towards the reference (0: no reference at all)
            num_generations=align.num_generations,
            temperature=align.temperature,
            max_completion_length=align.max_new_tokens,
            reward_weights=[r.weight for r in rewards or ()],
        )
        funcs = [_reward_function(r) for r in rewards or ()]
        return GRPOTrainer(**common, reward_funcs=funcs, args=config, peft_config=peft)
    if method == "distill":
        from trl import DistillationConfig, DistillationTrainer

        arguments = {k: v for k, v in arguments.items() if k != "max_length"}  # it has none
        config = DistillationConfig(
            **arguments,
            beta=align.beta,
            temperature=align.temperature,
            max_completion_length=align.max_new_tokens,
        )
        return DistillationTrainer(**common, teacher_model=teacher, args=config, peft_config=peft)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(
            **common, args=ORPOConfig(**arguments, beta=align.beta), peft_config=peft
        )
    if method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(
            **arguments,
            loss_type="simpo",
            cpo_alpha=0.0,  # SimPO proper: no SFT term
            beta=align.beta,
            simpo_gamma=align.simpo_gamma,
        )
        return CPOTrainer(**common, args=config, peft_config=peft)
    raise ValueError(f"not a preference method: {method}")


def setup(
    base_model: str, method: str, hyper: Hyper, align: AlignOptions, allow_pickle: bool = False
) -> tuple[Any, Any, Any]:
    """Load the decoder and its tokenizer; returns (model, tokenizer, peft config or None).

    Raises:
        SpecError: When the base is not a decoder.
    """
    from transformers import set_seed

    # base_family, not runtime.manifest.family_of: that one knows only decoders and
    # encoder-decoders, so an encoder (BERT, ModernBERT) passed as a "decoder" and failed
    # inside transformers ("Unrecognized configuration class ... AutoModelForCausalLM")
    family = base_family(base_model)
    if family != "decoder":
        raise SpecError(
            f"method '{method}' tunes a decoder (TRL's preference trainers); base model "
            f"'{base_model}' is an {family}"
        )
    tokenizer = load_base_tokenizer(base_model)
    set_seed(hyper.seed)
    model = load_base(base_model, family, allow_pickle)
    peft = None
    if align.adapter != "full":
        peft = peft_config(align.adapter, family, options(hyper), uses_conv1d(model), model=model)
    return model, tokenizer, peft


def train(
    method: str,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    hyper: Hyper,
    align: AlignOptions,
    peft: Any,
    checkpoints: Path,
    rewards: list[Reward] | None = None,
    teacher: Any = None,
) -> tuple[Any, float, list[dict[str, Any]], int, str | None]:
    """Tune in place, resuming from the last complete checkpoint if any.

    ``teacher``: the model ``distill`` imitates (TRL's distillation trainer), else None.

    Returns:
        (the trained model, seconds, the trainer's log history, optimizer steps, checkpoint
        resumed from or None).
    """
    import torch

    from tasks.train.progress import show_progress

    resume = last_complete_checkpoint(checkpoints)
    arguments: dict[str, Any] = {
        "output_dir": str(checkpoints),
        "num_train_epochs": hyper.epochs,
        "learning_rate": hyper.learning_rate,
        "per_device_train_batch_size": hyper.batch_size,
        "weight_decay": hyper.weight_decay,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "max_length": hyper.max_length,
        "save_strategy": "steps",
        "save_steps": hyper.checkpoint_steps,
        "save_total_limit": 2,
        "logging_strategy": "steps",
        "logging_steps": 5,
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "optim": "adamw_torch",
        "dataloader_num_workers": 0,
        # as the SFT recipe: no activation recomputation (TRL turns it on by default)
        "gradient_checkpointing": False,
        # explicit both ways: TRL's configs default to bf16 autocast, on a CPU too
        **precision_arguments(run_precision(hyper)),
    }
    trainer = _trainer(method, model, tokenizer, records, arguments, align, peft, rewards, teacher)
    trainer.add_callback(_marker_callback())
    show_progress(trainer, method)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    return (
        trainer.model,
        seconds,
        trainer.state.log_history,
        int(output.global_step),
        (str(resume) if resume else None),
    )


def save(
    model: Any,
    tokenizer: Any,
    out: Path,
    method: str,
    base_model: str,
    hyper: Hyper,
    align: AlignOptions,
    allow_pickle: bool = False,
    rewards: dict[str, Any] | None = None,
) -> tuple[int, int]:
    """Write the package (adapter or weights, tokenizer, manifest); returns (trainable, total).

    ``rewards`` (grpo: the spec's rewards and its folder) go into the manifest, so the package
    is scored on the same rewards wherever it is evaluated.
    """
    trainable, total = trainable_parameters(model)
    adapter = align.adapter != "full"
    if adapter:
        model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    else:
        model.config.use_cache = True
        model.save_pretrained(str(out / "weights"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    PackageManifest(
        kind=KINDS["decoder"],
        method=method,
        base_model=base_model,
        labels=[],
        max_length=hyper.max_length,
        trainable_params=trainable,
        total_params=total,
        options={
            "max_new_tokens": hyper.max_new_tokens,
            "adapter": align.adapter,
            "beta": align.beta,
        }
        | ({"allow_pickle": True} if allow_pickle and adapter else {})
        | (rewards or {}),
    ).write(out)
    return trainable, total


def train_aligned(
    train_path: Path,
    base_model: str,
    method: str,
    hyper: Hyper,
    align: AlignOptions,
    out: Path,
    checkpoint_root: Path,
    task: str = "instruction",
    allow_pickle: bool = False,
    rewards: list[dict[str, Any]] | None = None,
    spec_dir: Path | None = None,
) -> GenerativeResult:
    """Preference-tune a decoder (or run GRPO on it) and save it as a package.

    Args:
        train_path: Curated training JSONL (``text``, ``target`` = chosen, ``rejected``; KTO:
            ``target`` and ``label`` desirable / undesirable).
        base_model: Catalogue alias, folder, or hub id (a registered version arrives here as
            its materialized folder).
        method: One of ``adaptflow.methods.ALIGNMENT_METHODS``.
        hyper: Hyperparameters (the spec's ``train`` block).
        align: The spec's ``align`` block.
        out: Package folder to write.
        checkpoint_root: Where resumable checkpoints live (removed once the package is written).
        task: The spec's task (part of the checkpoint key).
        allow_pickle: The spec's ``allow_pickle``.
        rewards: grpo: the spec's ``rewards`` (dicts of ``RewardSpec``).
        spec_dir: The spec's folder (python rewards import from it).
    """
    rows = read_jsonl(train_path)
    scorers = reward_scorers(rewards or [], spec_dir) if method == "grpo" else None
    checkpoints = checkpoint_root / run_key(
        train_path, base_model, f"{method}:{align}", hyper, task
    )
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, peft = setup(base_model, method, hyper, align, allow_pickle)
    records = preference_rows(tokenizer, rows, method)
    model, seconds, logged, steps, resumed = train(
        method, model, tokenizer, records, hyper, align, peft, checkpoints, scorers
    )
    kept = {"rewards": rewards, "rewards_dir": str(spec_dir or "")} if scorers else None
    trainable, total = save(
        model, tokenizer, out, method, base_model, hyper, align, allow_pickle, kept
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    return GenerativeResult(
        package_dir=str(out),
        method=method,
        trainable_params=trainable,
        total_params=total,
        train_seconds=seconds,
        train_tokens=trained_tokens(logged, tokenizer, records, hyper.epochs),
        steps=steps,
        loss_history=[(int(e["step"]), float(e["loss"])) for e in logged if "loss" in e],
        resumed_from=resumed,
        precision=run_precision(hyper),
    )


train_aligned_task = task(name="train_aligned", cache_policy=NO_CACHE, tags=["gpu"])(train_aligned)
