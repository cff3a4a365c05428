"""Preference-tuning benchmark: DPO through adaptflow vs a bare TRL ``DPOTrainer`` script.

    ADAPTFLOW_MODELS_DIR=... .venv/bin/python benchmarks/bench_align.py [--pairs 80] [--repeat 2]
        [--results PATH] [--home DIR]

Side by side in this one script, each run in its own fresh Python process (this file run as
``--worker``), on the same data, model, steps and seed:

- **ours**: ``tasks.train.align.train_aligned(..., method="dpo")``, the recipe ``adaptflow run``
  calls: load, render prompts, TRL's ``DPOTrainer`` with a LoRA ``peft_config``, save the
  package (adapter, tokenizer, manifest), remove the checkpoints.
- **bare TRL**: the script a user would write: ``AutoTokenizer`` and
  ``AutoModelForCausalLM.from_pretrained``, prompts rendered by the tokenizer's chat template
  (``add_generation_prompt=True``), ``Dataset.from_list``, ``DPOTrainer(model, args=DPOConfig,
  train_dataset, processing_class, peft_config=LoraConfig)``, ``.train()``,
  ``save_pretrained``.

Both get the same ``DPOConfig`` (the recipe's arguments: one epoch, learning rate, batch size,
weight decay, seed and data seed, ``max_length`` 192, logging every 5 steps, ``bf16=False``,
``gradient_checkpointing=False``, sigmoid loss, beta 0.1) and the same LoRA (r 8, alpha 16,
dropout 0.1, GPT-2's ``fan_in_fan_out``, default target modules). The recipe checkpoints every
``train.checkpoint_steps``; here that is 10,000, more than a run's steps, so neither contender
saves mid-run (both use ``save_strategy="steps"`` with that interval). Same seed, same data
order: the two runs' losses agree to the last digit (a warning says when they do not).

The data: deterministic preference pairs, prompts ``Explain MODULE.NAME`` and answers from
standard-library docstrings (the text tiny-gpt's tokenizer was trained on), cut at a word
boundary to a length drawn (seeded) from 40 to 120 tokens: the chosen answer is the member's
own docstring, the rejected one another member's. ``max_length`` truncates nothing.

1. **DPO throughput and wall time**, tiny-gpt, ``--pairs`` pairs (targets: tokens/s ours ÷
   bare ≥ 0.95, wall ours ÷ bare ≤ 1.15). Wall time is the whole call, after imports: load +
   tokenize + train + save (ours: ``train_aligned``; bare: ``from_pretrained`` to
   ``save_pretrained``); import and process-start times are reported beside it. Tokens/s
   divides the same count for both (prompt + chosen + EOS and prompt + rejected + EOS tokens,
   times epochs, as the recipe counts them) by the seconds inside ``trainer.train()``.
   The order alternates ours, bare, ours, bare; medians of ``--repeat`` runs each.
2. **Reference-policy memory.** The recipe's reference is the base with the adapter disabled
   (``ref_model=None`` under a ``peft_config``: no second copy). tiny-gpt's 5 MiB of weights
   vanish in the activations, so this runs on a wider GPT-2-style decoder built here from a
   ``GPT2Config`` (``--memory-width`` 512, 8 blocks, 27.7M parameters, random weights, tiny-gpt's
   tokenizer) for a few steps: ours, bare TRL the same way, and bare TRL with an explicit
   second copy (``ref_model=AutoModelForCausalLM.from_pretrained(path)``, same LoRA). Reported:
   peak resident memory growth over the call (``ru_maxrss`` at the end minus the resident
   memory before the call, in the worker process), with the weights' bytes for scale.
3. **GRPO samples/s** (no target). ``train_aligned(..., method="grpo")`` with its
   ``exact_match`` reward against the bare script's ``GRPOTrainer`` with the same arguments, the
   same LoRA and an exact-match reward of its own (SQuAD-normalised, as the recipe's): prompts
   ``Repeat the word: W`` for ``--grpo-steps`` steps of 2 prompts x 4 samples of at most 16
   tokens, beta 0.1 (the recipe's default: a KL pull towards the adapter-disabled base),
   alternating, medians of ``--repeat`` runs each. Samples/s: completions generated and scored
   per second of ``trainer.train()``.

4. **The advisor's estimate, checked** (no target): ``adaptflow recommend``'s DPO estimate for
   the same pairs (its D in tokens, and its hours on ``budget.hardware: cpu``) next to the
   recipe's run (TRL's token count, the seconds inside ``trainer.train()``).

A table, then one JSON line with every number (also written to ``--results``). Exits 1 when a
DPO ratio misses its target. Numbers move when other work shares the machine's cores: the
load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS_FILE = REPO / "benchmarks" / "results" / "align.json"

TPS_RATIO_TARGET = 0.95  # ours tokens/s / bare tokens/s must be at least this
WALL_RATIO_TARGET = 1.15  # ours wall / bare wall must be at most this
CHECKPOINT_STEPS = 10_000  # more than any run's steps: no checkpoint is written mid-run
MAX_LENGTH = 192
ANSWER_TOKENS = (40, 120)
LORA_R, LORA_ALPHA = 8, 16  # the recipe's defaults (dropout 0.1)
BETA = 0.1  # the recipe's default (align.beta): DPO's temperature, GRPO's KL weight
GENERATIONS, COMPLETION_TOKENS = 4, 16  # GRPO: answers sampled per prompt, their longest
GRPO_WORDS = ("apple", "river", "stone", "cloud", "maple", "tiger", "violin", "copper")


# --------------------------------------------------------------------------------------------
# Workers: each runs in its own process (``--worker NAME``).
# --------------------------------------------------------------------------------------------


def _resident_mib() -> float:
    """This process's resident memory now (Linux ``/proc``; else its peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_mib()


def _peak_mib() -> float:
    """This process's peak resident memory (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _libraries() -> float:
    """Import what both contenders use (TRL's trainers included); returns the seconds."""
    started = time.perf_counter()
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer  # noqa: F401

    return time.perf_counter() - started


def _lora() -> Any:
    """The recipe's LoRA for GPT-2: r 8, alpha 16, dropout 0.1, Conv1D weights transposed."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.1,
        fan_in_fan_out=True,
    )


def _prompt(tokenizer: Any, text: str) -> str:
    """A user turn rendered by the tokenizer's chat template, ready for the answer."""
    turns = [{"role": "user", "content": text}]
    return str(tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False))


def _rows(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _recipe_arguments(hyper: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The bare script's trainer arguments: what the recipe passes, written out by hand."""
    import torch

    return {
        "output_dir": str(output_dir),
        "num_train_epochs": hyper["epochs"],
        "learning_rate": hyper["learning_rate"],
        "per_device_train_batch_size": hyper["batch_size"],
        "weight_decay": hyper["weight_decay"],
        "seed": hyper["seed"],
        "data_seed": hyper["seed"],
        "save_strategy": "steps",
        "save_steps": hyper["checkpoint_steps"],
        "save_total_limit": 2,
        "logging_strategy": "steps",
        "logging_steps": 5,
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "optim": "adamw_torch",
        "dataloader_num_workers": 0,
        "gradient_checkpointing": False,
        "bf16": False,
        "fp16": False,
    }


def _count_tokens(tokenizer: Any, records: list[dict[str, Any]]) -> int:
    """Prompt + answer + EOS tokens of each answer of each record (the recipe's count)."""
    return sum(
        len(tokenizer(r["prompt"] + r[k])["input_ids"]) + 1
        for r in records
        for k in ("chosen", "rejected")
    )


def _final_loss(log_history: list[dict[str, Any]]) -> float | None:
    losses = [float(e["loss"]) for e in log_history if "loss" in e]
    return losses[-1] if losses else None


def _ours(cfg: dict[str, Any], method: str, align: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``train_aligned`` timed from the call to the written package."""
    libraries = _libraries()
    started = time.perf_counter()
    from tasks.train.align import AlignOptions, train_aligned
    from tasks.train.peft import Hyper

    own_imports = time.perf_counter() - started
    out = Path(cfg["out_dir"])
    hyper = Hyper(**cfg["hyper"])
    resident = _resident_mib()
    started = time.perf_counter()
    result = train_aligned(
        Path(cfg["train_file"]),
        cfg["base"],
        method,
        hyper,
        AlignOptions(**align),
        out / "pkg",
        out / "ck",
        **extra,
    )
    wall = time.perf_counter() - started
    return {
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "train_tokens": result.train_tokens,
        "steps": result.steps,
        "final_loss": result.loss_history[-1][1] if result.loss_history else None,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "import_seconds": libraries + own_imports,
        "resident_before_mib": resident,
        "peak_mib": _peak_mib(),
    }


def ours_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """DPO through the recipe (LoRA, so the reference is the adapter-disabled base)."""
    return _ours(cfg, "dpo", {"beta": BETA})


def bare_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """DPO as a hand-written TRL script; ``ref_copy`` adds a second full model as reference."""
    libraries = _libraries()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    hyper, path, out = cfg["hyper"], cfg["base"], Path(cfg["out_dir"])
    resident = _resident_mib()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(hyper["seed"])
    model = AutoModelForCausalLM.from_pretrained(path)
    ref_model = AutoModelForCausalLM.from_pretrained(path) if cfg["ref_copy"] else None
    records = [
        {"prompt": _prompt(tokenizer, r["text"]), "chosen": r["target"], "rejected": r["rejected"]}
        for r in _rows(cfg["train_file"])
    ]
    args = DPOConfig(
        **_recipe_arguments(hyper, out / "trainer"),
        max_length=hyper["max_length"],
        beta=BETA,
        loss_type=["sigmoid"],
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=_lora(),
    )
    began = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - began
    trainer.model.save_pretrained(str(out / "adapter"))
    wall = time.perf_counter() - started
    trainable, total = trainer.model.get_nb_trainable_parameters()
    return {
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "train_tokens": round(_count_tokens(tokenizer, records) * hyper["epochs"]),
        "steps": int(output.global_step),
        "final_loss": _final_loss(trainer.state.log_history),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "reference": "second copy" if trainer.ref_model is not None else "adapter disabled",
        "import_seconds": libraries,
        "resident_before_mib": resident,
        "peak_mib": _peak_mib(),
    }


def grpo_ours_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """GRPO through the recipe, with its ``exact_match`` reward."""
    align = {"beta": BETA, "num_generations": GENERATIONS, "max_new_tokens": COMPLETION_TOKENS}
    result = _ours(cfg, "grpo", align, rewards=[{"kind": "exact_match", "weight": 1.0}])
    result["completions"] = result["steps"] * cfg["hyper"]["batch_size"]
    return result


def _squad_normal(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    import re
    import string

    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def grpo_bare_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """GRPO as a hand-written TRL script: the same arguments and an exact-match reward."""
    libraries = _libraries()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    hyper, path, out = cfg["hyper"], cfg["base"], Path(cfg["out_dir"])
    resident = _resident_mib()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(hyper["seed"])
    model = AutoModelForCausalLM.from_pretrained(path)
    records = [
        {"prompt": _prompt(tokenizer, r["text"]), "reference": r["target"]}
        for r in _rows(cfg["train_file"])
    ]
    scored = 0

    def exact_match(completions: list[str], reference: list[str], **_: Any) -> list[float]:
        nonlocal scored
        scored += len(completions)
        pairs = zip(completions, reference, strict=True)
        return [float(_squad_normal(c) == _squad_normal(r)) for c, r in pairs]

    args = GRPOConfig(
        **_recipe_arguments(hyper, out / "trainer"),
        beta=BETA,
        num_generations=GENERATIONS,
        temperature=1.0,
        max_completion_length=COMPLETION_TOKENS,
        reward_weights=[1.0],
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[exact_match],
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=_lora(),
    )
    began = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - began
    trainer.model.save_pretrained(str(out / "adapter"))
    wall = time.perf_counter() - started
    logged = trainer.state.log_history
    seen = [int(e["num_tokens"]) for e in logged if "num_tokens" in e]
    return {
        "wall_seconds": wall,
        "train_seconds": train_seconds,
        "train_tokens": seen[-1] if seen else 0,
        "steps": int(output.global_step),
        "final_loss": _final_loss(logged),
        "completions": int(output.global_step) * hyper["batch_size"],
        "scored": scored,
        "trainable_params": int(trainer.model.get_nb_trainable_parameters()[0]),
        "import_seconds": libraries,
        "resident_before_mib": resident,
        "peak_mib": _peak_mib(),
    }


WORKERS = {
    "ours": ours_worker,
    "bare": bare_worker,
    "grpo-ours": grpo_ours_worker,
    "grpo-bare": grpo_bare_worker,
}


# --------------------------------------------------------------------------------------------
# Driver: data, the wider model, the runs, the report.
# --------------------------------------------------------------------------------------------


def _cut(tokenizer: Any, text: str, most: int) -> str:
    """``text`` cut at a word boundary to at most ``most`` tokens."""
    encoded = tokenizer(text, return_offsets_mapping=True)
    if len(encoded["input_ids"]) <= most:
        return text
    end = encoded["offset_mapping"][most - 1][1]
    head = text[:end]
    return head[: head.rfind(" ")] if " " in head else head


def preference_pairs(tokenizer: Any, count: int) -> list[dict[str, Any]]:
    """``count`` curated rows: ``Explain M.N``, its docstring chosen over another member's."""
    import importlib
    import inspect

    from adaptflow.tiny import MODULES

    least, most = ANSWER_TOKENS
    lengths = random.Random(0)  # each answer's cap, so lengths spread over the range
    docs: list[tuple[str, str]] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for member in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, member, None))
            if member.startswith("_") or not doc:
                continue
            answer = _cut(tokenizer, doc, lengths.randint(least, most))
            if len(tokenizer(answer)["input_ids"]) >= least:
                docs.append((f"{name}.{member}", answer))
        if len(docs) >= count:
            break
    if len(docs) < count:
        raise SystemExit(f"only {len(docs)} docstrings of {least}+ tokens; ask for fewer pairs")
    docs = docs[:count]
    shift = count // 2 + 1  # another member's answer, far from this one in the list
    rows = []
    for i, (name, answer) in enumerate(docs):
        rejected = docs[(i + shift) % count][1]
        rows.append(
            {"id": f"pair-{i}", "text": f"Explain {name}", "target": answer, "rejected": rejected}
        )
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def advisor_check(
    base: str,
    rows: list[dict[str, Any]],
    hyper: dict[str, Any],
    measured: dict[str, Any],
    scratch: Path,
) -> dict[str, Any]:
    """The advisor's DPO estimate for this very data (``adaptflow recommend``) vs the run.

    The same pairs as a spec's ``data.train`` (TRL's preference shape), so the advisor measures
    them as it would for a user; its D (tokens) is set beside TRL's logged count, its hours on
    ``budget.hardware: cpu`` beside the seconds inside ``trainer.train()``.
    """
    from adaptflow.advisor import HARDWARE, estimate
    from adaptflow.spec import Spec
    from tasks.advise import spec_facts

    path = scratch / "pairs-trl.jsonl"
    trl_rows = [
        {"prompt": r["text"], "chosen": r["target"], "rejected": r["rejected"]} for r in rows
    ]
    write_rows(path, trl_rows)
    train = {k: hyper[k] for k in ("epochs", "learning_rate", "batch_size", "max_length")}
    spec = Spec.model_validate(
        {
            "name": "bench-dpo",
            "task": "instruction",
            "base_model": base,
            "method": "dpo",
            "data": {"train": str(path), "format": "preference"},
            "budget": {"hardware": "cpu"},
            "train": train | {"lora_r": hyper["lora_r"]},
        }
    )
    facts = spec_facts(spec)
    guess = estimate("dpo", facts)
    tokens = facts.labelled_tokens * facts.epochs
    seconds = (guess.train_hours or 0.0) * 3600
    achieved = (guess.train_flops or 0.0) / measured["train_seconds"]
    return {
        "formula": guess.formula,
        "estimated_tokens": tokens,
        "measured_tokens": measured["train_tokens"],
        "tokens_estimated_over_measured": tokens / measured["train_tokens"],
        "estimated_train_seconds": seconds,
        "measured_train_seconds": measured["train_seconds"],
        "seconds_estimated_over_measured": seconds / measured["train_seconds"],
        "achieved_flops_per_second": achieved,
        "assumed_flops_per_second": HARDWARE["cpu"].peak_flops * HARDWARE["cpu"].utilisation,
    }


def answer_lengths(tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    lengths = sorted(
        len(tokenizer(r[k])["input_ids"]) for r in rows for k in ("target", "rejected")
    )
    return {"min": lengths[0], "median": statistics.median(lengths), "max": lengths[-1]}


def build_wide(tiny: str, folder: Path, width: int, layers: int) -> tuple[str, int]:
    """A randomly initialised GPT-2-style decoder with tiny-gpt's tokenizer; (folder, params)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    small = AutoConfig.from_pretrained(tiny)
    config = GPT2Config(
        vocab_size=small.vocab_size,
        n_positions=small.n_positions,
        n_embd=width,
        n_layer=layers,
        n_head=width // 64,
        bos_token_id=small.bos_token_id,
        eos_token_id=small.eos_token_id,
        pad_token_id=small.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(str(folder))
    return str(folder), sum(p.numel() for p in model.parameters())


def run_worker(kind: str, cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """This file as ``--worker kind`` in a fresh process; its result, with the process's wall."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file, result_file = folder / "config.json", folder / "result.json"
    config_file.write_text(json.dumps(cfg | {"out_dir": str(folder)}), encoding="utf-8")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    command += ["--config", str(config_file), "--result", str(result_file)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    process = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    result["process_seconds"] = process
    result["peak_growth_mib"] = max(
        0.0, result.get("peak_mib", 0) - result.get("resident_before_mib", 0)
    )
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_seconds", "train_seconds", "process_seconds", "import_seconds")
    keys += ("peak_growth_mib", "peak_mib")
    row: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    row["tokens_per_second"] = statistics.median(
        r["train_tokens"] / r["train_seconds"] for r in runs
    )
    for key in ("train_tokens", "steps", "final_loss", "trainable_params", "total_params"):
        row[key] = runs[0][key]
    return row


def compare(label: str, cfg: dict[str, Any], repeat: int, scratch: Path) -> dict[str, Any]:
    """Ours and bare TRL alternately (ours, bare, ours, bare…), ``repeat`` runs each."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
    for index in range(repeat):
        for kind in ("ours", "bare"):
            print(f"[{label}] {kind} {index + 1}/{repeat} ...", file=sys.stderr, flush=True)
            run = run_worker(kind, cfg, scratch / label / f"{kind}-{index}")
            print(
                f"  wall {run['wall_seconds']:.1f}s, train {run['train_seconds']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            runs[kind].append(run)
    ours, bare = median_of(runs["ours"]), median_of(runs["bare"])
    tps = ours["tokens_per_second"] / bare["tokens_per_second"]
    wall = ours["wall_seconds"] / bare["wall_seconds"]
    return {
        "model": label,
        "base": cfg["base"],
        "hyper": cfg["hyper"],
        "ours": ours,
        "bare": bare,
        "runs": runs,
        "ratios": {
            "tokens_per_second_ours_over_bare": tps,
            "tokens_per_second_pass": tps >= TPS_RATIO_TARGET,
            "wall_ours_over_bare": wall,
            "wall_pass": wall <= WALL_RATIO_TARGET,
        },
        "warnings": consistency(ours, bare),
    }


def consistency(ours: dict[str, Any], bare: dict[str, Any]) -> list[str]:
    """What would make the two runs different work (they should agree on all of it)."""
    warnings = []
    for key in ("train_tokens", "steps", "trainable_params", "final_loss"):
        if ours[key] != bare[key]:
            warnings.append(f"{key} differs: ours {ours[key]}, bare {bare[key]}")
    return warnings


def reference_memory(label: str, cfg: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """One run each: ours and bare with the adapter-disabled reference, bare with a 2nd copy."""
    runs = {}
    for name, kind, copy in (
        ("ours", "ours", False),
        ("bare", "bare", False),
        ("copy", "bare", True),
    ):
        print(f"[{label} memory] {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_worker(kind, cfg | {"ref_copy": copy}, scratch / label / f"mem-{name}")
    ours, bare, copy = runs["ours"], runs["bare"], runs["copy"]
    return {
        "model": label,
        "base": cfg["base"],
        "hyper": cfg["hyper"],
        "params": ours["total_params"],
        "param_mib": ours["total_params"] * 4 / 2**20,
        "ours_adapter_disabled_growth_mib": ours["peak_growth_mib"],
        "bare_adapter_disabled_growth_mib": bare["peak_growth_mib"],
        "bare_second_copy_growth_mib": copy["peak_growth_mib"],
        "second_copy_minus_ours_mib": copy["peak_growth_mib"] - ours["peak_growth_mib"],
        "second_copy_minus_bare_mib": copy["peak_growth_mib"] - bare["peak_growth_mib"],
        "tokens_per_second_ours_over_bare_one_run": (
            ours["train_tokens"]
            / ours["train_seconds"]
            / (bare["train_tokens"] / bare["train_seconds"])
        ),
        "runs": runs,
        "warnings": consistency(ours, bare),
    }


def grpo_rows(steps: int, batch_size: int) -> list[dict[str, Any]]:
    """Prompts for ``steps`` GRPO steps in one epoch: ``Repeat the word: W``, reference ``W``."""
    count = steps * batch_size // GENERATIONS
    words = [GRPO_WORDS[i % len(GRPO_WORDS)] for i in range(count)]
    return [
        {"id": f"word-{i}", "text": f"Repeat the word: {w}", "target": w}
        for i, w in enumerate(words)
    ]


def grpo(cfg: dict[str, Any], repeat: int, scratch: Path) -> dict[str, Any]:
    """GRPO through the recipe and the bare script, alternately; completions per second."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
    for index in range(repeat):
        for name in ("ours", "bare"):
            print(f"[grpo] {name} {index + 1}/{repeat} ...", file=sys.stderr, flush=True)
            run = run_worker(f"grpo-{name}", cfg, scratch / f"grpo-{name}-{index}")
            run["samples_per_second"] = run["completions"] / run["train_seconds"]
            runs[name].append(run)
    medians = {}
    for name, mine in runs.items():
        medians[name] = {
            key: statistics.median(run[key] for run in mine)
            for key in ("wall_seconds", "train_seconds", "samples_per_second")
        } | {key: mine[0][key] for key in ("steps", "completions", "train_tokens", "final_loss")}
    ours, bare = medians["ours"], medians["bare"]
    warnings = [
        f"{key} differs: ours {ours[key]}, bare {bare[key]}"
        for key in ("steps", "completions", "train_tokens", "final_loss")
        if ours[key] != bare[key]
    ]
    return {
        "hyper": cfg["hyper"],
        "prompts": len(_rows(cfg["train_file"])),
        "num_generations": GENERATIONS,
        "max_completion_length": COMPLETION_TOKENS,
        "beta": BETA,
        "ours": ours,
        "bare": bare,
        "runs": runs,
        "samples_per_second_ours_over_bare": ours["samples_per_second"]
        / bare["samples_per_second"],
        "warnings": warnings,
    }


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_report(result: dict[str, Any]) -> None:
    """The tables: DPO ours vs bare, reference memory, GRPO, the machine."""
    c, h = result["dpo"], result["dpo"]["hyper"]
    lengths = c["answer_tokens"]
    print(
        f"\nDPO, LoRA r=8, {c['model']} ({c['ours']['total_params'] / 1e6:.2f}M params): "
        f"{c['pairs']} pairs (answers {lengths['min']}-{lengths['max']} tokens, median "
        f"{lengths['median']:g}), batch {h['batch_size']}, {h['epochs']:g} epoch = "
        f"{c['ours']['steps']} steps, max_length {h['max_length']}, seed {h['seed']}; medians "
        f"of {result['config']['repeat']} runs each"
    )
    header = (
        f"{'contender':<10}{'wall s':>8}{'train s':>9}{'tokens/s':>10}{'steps':>7}"
        f"{'final loss':>12}{'import s':>10}{'process s':>11}{'peak +MiB':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, row in (("ours", c["ours"]), ("bare TRL", c["bare"])):
        print(
            f"{name:<10}{row['wall_seconds']:>8.1f}{row['train_seconds']:>9.1f}"
            f"{row['tokens_per_second']:>10.0f}{row['steps']:>7}{_loss(row['final_loss']):>12}"
            f"{row['import_seconds']:>10.1f}{row['process_seconds']:>11.1f}"
            f"{row['peak_growth_mib']:>11.0f}"
        )
    r = c["ratios"]
    print(
        f"tokens/s ours / bare = {r['tokens_per_second_ours_over_bare']:.3f} "
        f"(target >= {TPS_RATIO_TARGET}: {'PASS' if r['tokens_per_second_pass'] else 'MISS'})"
    )
    print(
        f"wall     ours / bare = {r['wall_ours_over_bare']:.3f} "
        f"(target <= {WALL_RATIO_TARGET}: {'PASS' if r['wall_pass'] else 'MISS'})"
    )
    for warning in c["warnings"]:
        print(f"warning: {warning}")
    e = c["estimate"]
    print(
        f"\nAdvisor's DPO estimate for these pairs ({e['formula']}, budget.hardware cpu) vs the "
        f"run: tokens {e['estimated_tokens']:,.0f} estimated / {e['measured_tokens']:,} "
        f"measured = {e['tokens_estimated_over_measured']:.3f}; train time "
        f"{e['estimated_train_seconds']:.1f} s estimated / {e['measured_train_seconds']:.1f} s "
        f"measured = {e['seconds_estimated_over_measured']:.2f} (FLOP/s achieved "
        f"{e['achieved_flops_per_second']:.3g}, assumed {e['assumed_flops_per_second']:.3g})"
    )
    m = result.get("memory")
    if m:
        mh = m["hyper"]
        print(
            f"\nReference policy memory, {m['model']} ({m['params'] / 1e6:.1f}M params, "
            f"{m['param_mib']:.0f} MiB of fp32 weights; {mh['batch_size']} pairs per step, "
            f"{m['runs']['ours']['steps']} steps): peak resident growth over the call, one run each"
        )
        for label, key in (
            ("ours, adapter-disabled reference", "ours_adapter_disabled_growth_mib"),
            ("bare TRL, adapter-disabled reference", "bare_adapter_disabled_growth_mib"),
            ("bare TRL, second model copy as reference", "bare_second_copy_growth_mib"),
        ):
            print(f"  {label:<42}{m[key]:>7.0f} MiB")
        print(
            f"  second copy - ours: {m['second_copy_minus_ours_mib']:+.0f} MiB; second copy - bare "
            f"adapter-disabled: {m['second_copy_minus_bare_mib']:+.0f} MiB"
        )
        for warning in m["warnings"]:
            print(f"warning: {warning}")
    g = result["grpo"]
    print(
        f"\nGRPO, tiny-gpt, LoRA r=8, exact-match reward, beta {g['beta']}: {g['prompts']} "
        f"prompts x {g['num_generations']} samples of <= {g['max_completion_length']} tokens, "
        f"batch {g['hyper']['batch_size']}, medians of {result['config']['repeat']} runs each "
        "(no target)"
    )
    header = (
        f"{'contender':<10}{'wall s':>8}{'train s':>9}{'steps':>7}{'samples':>9}{'samples/s':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, row in (("ours", g["ours"]), ("bare TRL", g["bare"])):
        print(
            f"{name:<10}{row['wall_seconds']:>8.1f}{row['train_seconds']:>9.1f}{row['steps']:>7}"
            f"{row['completions']:>9}{row['samples_per_second']:>11.2f}"
        )
    print(f"samples/s ours / bare = {g['samples_per_second_ours_over_bare']:.3f}")
    for warning in g["warnings"]:
        print(f"warning: {warning}")
    machine = result["machine"]
    print(
        f"\nmachine: {machine['cpus']} cores, load average {machine['load_average_before']} "
        f"before the runs and {machine['load_average_after']} after (other work on these "
        f"cores moves every number), torch {machine['torch']} ({machine['torch_threads']} "
        f"threads), TRL {machine['trl']}, Python {machine['python']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one worker with ``--worker``); 1 when a DPO ratio misses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=80, help="preference pairs for DPO")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="runs per contender; medians")
    parser.add_argument("--memory-width", type=int, default=512, help="0: skip the memory runs")
    parser.add_argument("--memory-layers", type=int, default=8)
    parser.add_argument("--memory-pairs", type=int, default=8)
    parser.add_argument("--memory-batch-size", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=8)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    parser.add_argument("--home", type=Path, default=None, help="reuse an ADAPTFLOW_HOME")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        cfg = json.loads(args.config.read_text(encoding="utf-8"))
        args.result.write_text(json.dumps(WORKERS[args.worker](cfg)), encoding="utf-8")
        return 0
    home = args.home or Path(tempfile.mkdtemp(prefix="adaptflow-bench-align-"))
    os.environ["ADAPTFLOW_HOME"] = str(home)
    for variable in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        os.environ.pop(variable, None)
    from adaptflow.settings import apply_settings

    apply_settings()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    import torch
    import trl
    from transformers import AutoTokenizer

    from adaptflow.catalogue import resolve_base_model

    tiny = resolve_base_model("tiny-gpt")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=home))
    try:
        rows = preference_pairs(tokenizer, max(args.pairs, args.memory_pairs))
        hyper = {
            "epochs": 1.0,
            "learning_rate": 5e-4,
            "batch_size": args.batch_size,
            "max_length": MAX_LENGTH,
            "weight_decay": 0.0,
            "lora_r": LORA_R,
            "lora_alpha": LORA_ALPHA,
            "lora_dropout": 0.1,
            "checkpoint_steps": CHECKPOINT_STEPS,
            "seed": 0,
        }
        train_file = write_rows(scratch / "pairs.jsonl", rows[: args.pairs])
        cfg = {"base": tiny, "train_file": str(train_file), "hyper": hyper, "ref_copy": False}
        dpo = compare("tiny-gpt", cfg, args.repeat, scratch)
        dpo["pairs"] = args.pairs
        dpo["answer_tokens"] = answer_lengths(tokenizer, rows[: args.pairs])
        dpo["estimate"] = advisor_check(tiny, rows[: args.pairs], hyper, dpo["ours"], scratch)
        result: dict[str, Any] = {
            "config": {"repeat": args.repeat, "checkpoint_steps": CHECKPOINT_STEPS},
            "dpo": dpo,
        }
        if args.memory_width:
            wide, _ = build_wide(tiny, scratch / "wide-gpt", args.memory_width, args.memory_layers)
            memory_file = write_rows(scratch / "memory-pairs.jsonl", rows[: args.memory_pairs])
            memory_cfg = cfg | {
                "base": wide,
                "train_file": str(memory_file),
                "hyper": hyper | {"batch_size": args.memory_batch_size},
            }
            label = f"gpt2-{args.memory_width}x{args.memory_layers}"
            result["memory"] = reference_memory(label, memory_cfg, scratch)
        grpo_file = write_rows(scratch / "grpo.jsonl", grpo_rows(args.grpo_steps, args.batch_size))
        grpo_cfg = cfg | {"train_file": str(grpo_file)}
        result["grpo"] = grpo(grpo_cfg, args.repeat, scratch)
    finally:  # runs, packages, the wide model; the home (a built tiny-gpt) stays
        shutil.rmtree(scratch, ignore_errors=True)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "trl": trl.__version__,
        "python": platform.python_version(),
    }
    print_report(result)
    ratios = result["dpo"]["ratios"]
    result["met"] = ratios["tokens_per_second_pass"] and ratios["wall_pass"]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
