"""Recipe: continued pre-training (``cpt``) of a decoder on a domain corpus, with replay.

setup -> mix -> train -> save. Domain documents (the curated ``text`` rows) and general text
from ``data.general`` (its replay part; the check part is never trained on) are cut into
windows of ``max_length`` tokens, and general windows are added until they are
``cpt.replay`` of all training tokens: replaying general text is the standard guard against
catastrophic forgetting. Windows are always bin-packed into rows (positions restart per window,
so documents never attend to each other). Every weight trains. Training, checkpoints and resume
are the SFT recipe's (``tasks.train.sft.train``), keyed the same way, and so are precision and
multi-process training (``train.devices``: the recipe runs as torchrun ranks, rank 0 saves).
With a validation part of the domain documents (``search.auto`` when ``train.epochs`` is
unset), the candidate's perplexity on it is scored after every epoch, exactly as the gate
scores the eval split, and training keeps the best epoch (early stopping).
"""

from __future__ import annotations

import hashlib
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import SpecError
from runtime.manifest import KINDS, PackageManifest
from runtime.prompts import Encoded, chunk_text
from tasks.curate.general import load_general
from tasks.curate.records import read_jsonl
from tasks.train import launch
from tasks.train.methods import trainable_parameters
from tasks.train.peft import Hyper, best_epoch
from tasks.train.sft import (
    GenerativeResult,
    Validation,
    epochs_trained,
    run_key,
    run_precision,
    setup,
    train,
)
from tasks.train.sft import save as save_weights


@dataclass
class CptResult(GenerativeResult):
    """A CPT run's result: the training mix next to the usual costs."""

    domain_tokens: int = 0
    replay_tokens: int = 0
    replay_share: float = 0.0
    replay_passes: float = 0.0  # how many times over the general replay text was used


def mix_replay(
    domain: list[Encoded], general: list[Encoded], replay: float, seed: int
) -> tuple[list[Encoded], int]:
    """General windows to add so they make ``replay`` of all tokens, and the tokens added.

    General windows are taken in a seeded order and cycled if there are too few, so small
    general sets still reach the ratio (the result reports how many passes that took).
    """
    if replay <= 0 or not general:
        return [], 0
    wanted = replay / (1 - replay) * sum(len(w.input_ids) for w in domain)
    order = list(range(len(general)))
    random.Random(seed).shuffle(order)
    chosen: list[Encoded] = []
    tokens = 0
    while tokens < wanted:
        window = general[order[len(chosen) % len(order)]]
        chosen.append(window)
        tokens += len(window.input_ids)
    return chosen, tokens


def train_cpt(
    train_path: Path,
    base_model: str,
    hyper: Hyper,
    out: Path,
    checkpoint_root: Path,
    general_path: Path | None,
    text_field: str = "text",
    replay: float = 0.2,
    check_fraction: float = 0.2,
    max_check: int = 200,
    allow_pickle: bool = False,
    validation_path: Path | None = None,
) -> CptResult:
    """Continue pre-training a decoder on curated domain text mixed with general replay.

    Args:
        train_path: Curated domain JSONL (``text`` rows).
        base_model: Catalogue alias, folder, or hub id (a decoder).
        hyper: Hyperparameters (``max_length`` is the window and row size).
        out: Package folder to write (full weights, kind ``causal-lm``, method ``cpt``).
        checkpoint_root: Where resumable checkpoints live (a sub-folder per run key).
        general_path: ``data.general``; its replay part is mixed in (None: no replay).
        text_field: The text field of a ``data.general`` file.
        replay: Share of training tokens drawn from general text.
        check_fraction: Share of ``data.general`` held out for the forgetting check.
        max_check: Most general texts in the check part.
        allow_pickle: The spec's ``allow_pickle`` (the base may load from pickle-based weights).
        validation_path: Curated domain documents held out of ``train_path`` (never the eval
            split): the candidate's perplexity on them is scored after every epoch, training
            stops after ``hyper.patience`` epochs without improvement and keeps the best epoch
            (``best_epoch`` and ``validation_history`` in the result).

    Raises:
        SpecError: When the base model is not a decoder.
    """
    if hyper.devices > 1 and not launch.in_worker():  # run this function as torchrun ranks
        arguments = {
            "train_path": train_path,
            "base_model": base_model,
            "hyper": hyper,
            "out": out,
            "checkpoint_root": checkpoint_root,
            "general_path": general_path,
            "text_field": text_field,
            "replay": replay,
            "check_fraction": check_fraction,
            "max_check": max_check,
            "allow_pickle": allow_pickle,
            "validation_path": validation_path,
        }
        launched: CptResult = launch.run_distributed(
            "tasks.train.cpt:train_cpt", arguments, hyper.devices, checkpoint_root
        )
        return launched
    model, tokenizer, family = setup(base_model, "full", hyper, allow_pickle)
    if family != "decoder":
        raise SpecError(
            f"method 'cpt' continues next-token pre-training, which needs a decoder; "
            f"base model '{base_model}' is an encoder-decoder"
        )
    domain = [
        w
        for row in read_jsonl(train_path)
        for w in chunk_text(tokenizer, row["text"], hyper.max_length)
    ]
    general: list[Encoded] = []
    texts: list[str] = []
    if general_path is not None and replay > 0:
        texts = load_general(general_path, text_field, check_fraction, max_check).replay
        general = [w for text in texts for w in chunk_text(tokenizer, text, hyper.max_length)]
    general_digest = hashlib.sha256("\x00".join(texts).encode("utf-8", "replace")).hexdigest()
    replayed, replay_tokens = mix_replay(domain, general, replay, hyper.seed)
    windows = domain + replayed
    key_hyper = replace(hyper, packing=True)
    checkpoints = checkpoint_root / run_key(
        train_path, base_model, f"cpt-replay-{replay}-{general_digest[:16]}", key_hyper, "cpt"
    )
    out.mkdir(parents=True, exist_ok=True)
    validation = None
    if validation_path is not None:
        rows = read_jsonl(validation_path)
        validation = Validation(rows, "perplexity", hyper.max_new_tokens, texts=True)
    seconds, history, steps, resumed, scores = train(
        model, tokenizer, windows, family, True, hyper, checkpoints, validation
    )
    if launch.is_main_process():
        trainable, total = save_weights(model, tokenizer, out, family, "full", base_model, hyper)
        tokenizer.save_pretrained(str(out / "weights"))  # weights/: the base of an SFT stage
        _write_manifest(out, base_model, hyper, trainable, total, replay)
        shutil.rmtree(checkpoints, ignore_errors=True)
    else:
        trainable, total = trainable_parameters(model)
    domain_tokens = sum(len(w.input_ids) for w in domain)
    general_tokens = sum(len(w.input_ids) for w in general)
    epochs = epochs_trained(scores, hyper)
    return CptResult(
        package_dir=str(out),
        method="cpt",
        trainable_params=trainable,
        total_params=total,
        train_seconds=seconds,
        train_tokens=(domain_tokens + replay_tokens) * epochs,
        steps=steps,
        loss_history=history,
        resumed_from=resumed,
        packed=True,
        domain_tokens=domain_tokens,
        replay_tokens=replay_tokens,
        replay_share=replay_tokens / (domain_tokens + replay_tokens) if windows else 0.0,
        replay_passes=replay_tokens / general_tokens if general_tokens else 0.0,
        precision=run_precision(hyper),
        devices=hyper.devices,
        validation_history=scores,
        best_epoch=best_epoch(scores, lower_is_better=True) if scores else None,
    )


def _write_manifest(
    out: Path, base_model: str, hyper: Hyper, trainable: int, total: int, replay: float
) -> None:
    """A CPT package continues text as it comes: no chat template, no answer format."""
    PackageManifest(
        kind=KINDS["decoder"],
        method="cpt",
        base_model=base_model,
        labels=[],
        max_length=hyper.max_length,
        trainable_params=trainable,
        total_params=total,
        options={"max_new_tokens": hyper.max_new_tokens, "prompt": "raw", "replay": replay},
    ).write(out)


train_cpt_task = task(name="train_cpt", cache_policy=NO_CACHE, tags=["gpu"])(train_cpt)
