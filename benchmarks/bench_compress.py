"""Compression benchmark: a MiniLM LoRA teacher vs its half-depth pruned student, and int8.

    ADAPTFLOW_MODELS_DIR=... .venv/bin/python benchmarks/bench_compress.py [--repeats 3]
        [--threads 2] [--lrs 1e-4,2e-4,3e-4] [--epochs 2,4] [--alpha 0.5] [--temperature 2]

The goal of issue 22: a student with half the teacher's blocks, by pruning and distillation,
keeps >= 0.95 of the teacher's macro-F1 at >= 1.8x its CPU throughput.

**Data.** ``examples/unicode-categories`` (780 Unicode character names, 6 labels, 130 each),
split as the pipeline splits it: ``tasks.curate.split.held_out`` with the spec's seed (42) and
``eval_fraction`` 0.2, stratified by label (624 train / 156 eval; the curation blocks before the
split are not run, the file has no duplicates). Distillation settings are chosen on a
validation part of the *train* part, carved as ``search.auto`` carves it
(``tasks.evaluate.search.split_validation``: ``held_out`` again, 0.2, seed 42: 499 fit / 125
validation); the eval part is only used for the final table.

**Models** (every one scored on the eval part with ``evaluate_classifier``):

- *teacher*: ``train_peft_classifier`` on the 624 train rows with the spec's recipe (LoRA r16,
  alpha 32, lr 0.003, 10 epochs, batch 16, max_length 64, seed 42): the example's champion.
- *pruned + distilled*: ``tasks.train.compress.prune_and_distill`` removes the ``--blocks``
  blocks (3 of 6) of lowest Block Influence and distills every weight of the rest from the
  teacher (``--alpha`` x CE + (1 - alpha) x T^2 x KL). The grid ``--lrs`` x ``--epochs`` is
  trained on the fit part and scored on the validation part; the best (ties: fewer epochs, then
  the lower lr) is retrained on the whole train part and that student goes in the table.
- *pruned, labels only*: the same pruning and training with alpha 1 (no teacher term), at the
  chosen lr and epochs: what the labels alone recover, next to what distillation does.
- *pruned only*: the same blocks removed (``prune_blocks``), no training at all, saved as a
  ``weights/`` package the way ``compress.py`` saves one: what distillation starts from.
- *int8*: the merged teacher dynamically quantized by ``runtime.int8.quantize_int8`` as the
  pipeline's int8 candidate is (``compress.quantize: int8``, ``save_student``): ``nn.Linear``
  layers int8 per output channel, the embedding tables 8-bit per row, saved by ``save_int8``;
  ``runtime.loading.load_classifier`` reads it (its manifest says ``quantize: int8``).

**Cost** is ``tasks.evaluate.compression.serving_cost`` on the eval texts, for all packages:
``params`` (of the model as served; the teacher merged), ``size_mb`` (what serving loads: for
the LoRA teacher the base model's safetensors plus the adapter), latency p50/p95 of one example
at a time over 64 texts after 5 warm-up calls, and throughput over 5 passes of one batch of 32
texts (tokenization included). The packages are measured in turn, ``--repeats`` rounds; each
number in the table is the median over the rounds, and ``speedup`` the median over rounds of
(candidate throughput / teacher throughput in the same round). serving_cost counts an int8
model's packed weights too (``runtime.int8.parameter_count``; the measured JSON's
``params_counted_by_serving_cost`` is from before it did). ``train_s`` is the trainer's
own time (``TrainResult.train_seconds``: the teacher's LoRA training; the student's
distillation, without computing Block Influence and the teacher's logits) or, for int8, the
quantization and saving. torch runs on ``--threads`` threads for everything. With ``--teacher``
an existing teacher package (one this benchmark trained and kept) is reused and its recorded
training seconds reported, which saves the teacher's training (~10 min on 2 busy cores).

Results go to ``benchmarks/measured/bench_compress.json`` (``--out``).

**Decoder** (``--decoder``; ``--decoder-epochs``, ``--decoder-lrs``, ``--alpha``,
``--temperature``, ``--repeats``, ``--threads``): issue 22's decoder benchmark. Data:
``examples/unicode-lowercase`` (600 pairs), eval held out as curation holds it out
(``held_out``, 0.2, seed 42: 480 train / 120 eval; validation carved from train as above:
384 fit / 96 validation). *teacher*: tiny-gpt fully fine-tuned on the 480 train pairs with the
example spec's recipe (``TEACHER_LM``). *pruned + distilled*:
``tasks.train.compress_lm.prune_and_distill_lm``, a quarter of the blocks (1 of 4, lowest Block
Influence) removed, then token-level distillation from the teacher (``--alpha`` x CE +
(1 - alpha) x T^2 x KL over answer tokens); the learning rate is chosen from ``--decoder-lrs``
by validation ROUGE-L (trained on the fit part; ties: the lower lr), then the student is
retrained on all 480 train pairs. *pruned + labels*: the same at the chosen lr with alpha 1
(the pairs' answers alone). *pruned only*: the block removed, nothing trained. *int8*:
the teacher with no block removed, quantized (``prune.blocks: 0``, ``quantize: int8``). Every
package is scored on the eval part by ``evaluate_generator`` (the gate's scoring: ROUGE-L of
greedy answers, ``max_new_tokens`` 24; perplexity of the reference answers), and ``retained``
is ROUGE-L ÷ the teacher's and the teacher's perplexity ÷ the package's. Cost:
``tasks.evaluate.compression.generator_costs`` over all five in turn (each prompt and each
batch round goes to every model before the next): latency p50/p95 of one prompt at a time
(16 eval prompts after 5 warm-up calls), examples and tokens per second over 5 rounds of a batch
of 32 prompts; every answer is exactly 16 greedy tokens, so the models do the same work.
``--repeats`` such measurements; each number is the median, ``speedup`` the median of the
per-measurement ratios to the teacher. Size: ``generator_bytes`` (the ``weights/`` folder).
Results go to ``benchmarks/measured/bench_compress_decoder.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"
RESULTS_FILE = REPO / "benchmarks" / "measured" / "bench_compress.json"
#: The example spec's recipe (examples/unicode-categories/spec.yaml).
SEED = 42
TEACHER = {
    "epochs": 10,
    "learning_rate": 0.003,
    "batch_size": 16,
    "max_length": 64,
    "lora_r": 16,
    "lora_alpha": 32,
    "seed": SEED,
}
GOAL = {"retained": 0.95, "speedup": 1.8}
#: Written next to a teacher this benchmark trained: its training seconds, for a rerun.
TEACHER_TIME = "bench_compress_teacher.json"
#: The decoder benchmark: examples/unicode-lowercase and its spec's recipe (spec.yaml).
LM_DATA = REPO / "examples" / "unicode-lowercase" / "data" / "pairs.jsonl"
LM_RESULTS_FILE = REPO / "benchmarks" / "measured" / "bench_compress_decoder.json"
TEACHER_LM: dict[str, Any] = {
    "epochs": 12,
    "learning_rate": 0.003,
    "batch_size": 16,
    "max_length": 64,
    "max_new_tokens": 24,
    "seed": SEED,
}


def split(folder: Path) -> dict[str, Path]:
    """The pipeline's train/eval split and search's validation part of train, as JSONL files."""
    from adaptflow.jsonl import read_jsonl, write_jsonl
    from tasks.curate.split import held_out
    from tasks.evaluate.search import split_validation

    rows = read_jsonl(DATA)
    out = held_out([row["label"] for row in rows], 0.2, SEED)
    paths = {"train": folder / "train.jsonl", "eval": folder / "eval.jsonl"}
    write_jsonl(paths["train"], [row for i, row in enumerate(rows) if i not in out])
    write_jsonl(paths["eval"], [row for i, row in enumerate(rows) if i in out])
    paths["fit"], paths["validation"] = split_validation(paths["train"], 0.2, SEED, folder)
    return paths


def f1(package: Path, eval_path: Path, scratch: Path) -> float:
    """Macro-F1 of ``package`` on ``eval_path`` (the library's classifier evaluation)."""
    from tasks.evaluate.classification import evaluate_classifier

    report = evaluate_classifier(package, eval_path, scratch / package.name)
    return float(report["metrics"]["f1_macro"])  # type: ignore[index]


def pruned_only(teacher: Path, removed: list[int], out: Path) -> Path:
    """The teacher without the ``removed`` blocks and no training, as a weights package."""
    from runtime.loading import load_classifier
    from runtime.manifest import PackageManifest
    from tasks.train.compress import prune_blocks

    model, tokenizer, manifest = load_classifier(teacher)
    pruned = prune_blocks(model.merge_and_unload(), removed).eval()
    pruned.save_pretrained(str(out / "weights"), safe_serialization=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    total = sum(p.numel() for p in pruned.parameters())
    PackageManifest(
        "encoder-classifier",
        "prune",
        manifest.base_model,
        manifest.labels,
        manifest.max_length,
        total,
        total,
        {"teacher": str(teacher), "removed_blocks": removed, "distilled": False},
    ).write(out)
    return out


def int8_package(teacher: Path, out: Path) -> tuple[Path, dict[str, Any], float]:
    """The merged teacher, dynamically quantized to int8 and saved; (package, report, s)."""
    from runtime.int8 import quantize_int8, save_int8
    from runtime.loading import load_classifier
    from runtime.manifest import PackageManifest

    model, tokenizer, manifest = load_classifier(teacher)
    started = time.perf_counter()
    model = model.merge_and_unload().eval()
    report = quantize_int8(model, embeddings=True)  # as the pipeline's int8 candidate
    save_int8(model, out / "weights")
    seconds = time.perf_counter() - started
    tokenizer.save_pretrained(str(out / "tokenizer"))
    total = report["params_int8"] + report["params_fp32"]
    PackageManifest(
        "encoder-classifier",
        manifest.method,
        manifest.base_model,
        manifest.labels,
        manifest.max_length,
        total,
        total,
        {"teacher": str(teacher), "quantize": "int8"},
    ).write(out)
    return out, report, seconds


def distill(
    train: Path, teacher: Path, lr: float, epochs: int, alpha: float, args: Any, out: Path
) -> Any:
    """``prune_and_distill`` with these settings (the teacher's batch, length and seed)."""
    from tasks.train.compress import PruneOptions, prune_and_distill
    from tasks.train.peft import Hyper

    hyper = Hyper(
        epochs=epochs,
        learning_rate=lr,
        batch_size=TEACHER["batch_size"],
        max_length=TEACHER["max_length"],
        seed=SEED,
    )
    options = PruneOptions(
        str(teacher), blocks=args.blocks, alpha=alpha, temperature=args.temperature
    )
    return prune_and_distill(train, teacher, hyper, options, out)


def measure(packages: dict[str, Path], eval_path: Path, repeats: int) -> dict[str, dict]:
    """``serving_cost`` of every package, ``repeats`` rounds in turn; medians and speedups."""
    from adaptflow.jsonl import read_jsonl
    from tasks.evaluate.compression import serving_cost

    texts = [str(row["text"]) for row in read_jsonl(eval_path)]
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(repeats):
        rounds.append({name: serving_cost(folder, texts) for name, folder in packages.items()})
        print(
            f"cost round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {c['throughput']:.0f}/s" for n, c in rounds[-1].items())
        )
    result = {}
    for name in packages:
        costs = {k: statistics.median(one[name][k] for one in rounds) for k in rounds[0][name]}
        speedups = [one[name]["throughput"] / one["teacher"]["throughput"] for one in rounds]
        result[name] = costs | {
            "speedup": statistics.median(speedups),
            "rounds": [one[name] | {"speedup": s} for one, s in zip(rounds, speedups, strict=True)],
        }
    return result


def lm_split(folder: Path) -> dict[str, Path]:
    """The pairs split as curation splits a generative task (one stratum), as JSONL files."""
    from adaptflow.jsonl import read_jsonl, write_jsonl
    from tasks.curate.split import held_out
    from tasks.evaluate.search import split_validation

    rows = read_jsonl(LM_DATA)
    out = held_out([None] * len(rows), 0.2, SEED)
    paths = {"train": folder / "train.jsonl", "eval": folder / "eval.jsonl"}
    write_jsonl(paths["train"], [row for i, row in enumerate(rows) if i not in out])
    write_jsonl(paths["eval"], [row for i, row in enumerate(rows) if i in out])
    paths["fit"], paths["validation"] = split_validation(paths["train"], 0.2, SEED, folder)
    return paths


def lm_pruned_only(teacher: Path, removed: list[int], out: Path) -> Path:
    """The teacher without the ``removed`` blocks and no training, as a weights package."""
    from runtime.manifest import PackageManifest
    from tasks.train.compress_lm import load_teacher, prune_decoder, save_generator

    model, tokenizer, manifest = load_teacher(teacher)
    pruned = prune_decoder(model, removed)
    total = sum(p.numel() for p in pruned.parameters())
    options = {"max_new_tokens": TEACHER_LM["max_new_tokens"], "removed_blocks": removed}
    save_generator(
        pruned,
        tokenizer,
        PackageManifest(
            "causal-lm",
            "prune",
            manifest.base_model,
            [],
            manifest.max_length,
            total,
            total,
            options | {"distilled": False},
        ),  # fmt: skip
        out,
    )
    return out


def lm_measure(packages: dict[str, Path], texts: list[str], repeats: int) -> dict[str, dict]:
    """``generator_costs`` of every package (in turns), ``repeats`` times; medians, speedups."""
    from runtime.generate import Generator
    from tasks.evaluate.compression import generator_bytes, generator_costs

    generators = {name: Generator.from_package(folder) for name, folder in packages.items()}
    rounds = []
    for r in range(repeats):
        rounds.append(generator_costs(generators, texts))
        print(
            f"cost round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {c['throughput']:.1f}/s" for n, c in rounds[-1].items())
        )
    result = {}
    for name, folder in packages.items():
        costs = {k: statistics.median(one[name][k] for one in rounds) for k in rounds[0][name]}
        speedups = [one[name]["throughput"] / one["teacher"]["throughput"] for one in rounds]
        result[name] = costs | {
            "size_mb": generator_bytes(folder, generators[name].model) / 1e6,
            "speedup": statistics.median(speedups),
            "rounds": [one[name] | {"speedup": s} for one, s in zip(rounds, speedups, strict=True)],
        }
    return result


def decoder(args: Any) -> None:
    """The decoder benchmark (see the module docstring): train, prune, score, measure, write."""
    import torch

    from tasks.evaluate.generation import evaluate_generator
    from tasks.train.compress import PruneOptions
    from tasks.train.compress_lm import prune_and_distill_lm
    from tasks.train.peft import Hyper
    from tasks.train.sft import train_generator

    started_all = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-compress-lm-"))
    try:
        paths = lm_split(root)
        sizes = {k: sum(1 for _ in v.open()) for k, v in paths.items()}
        print(f"split: {sizes}")
        teacher = root / "teacher"
        taught = train_generator(
            paths["train"], "tiny-gpt", "full", Hyper(**TEACHER_LM), teacher, root / "ck"
        )
        print(f"teacher trained in {taught.train_seconds:.1f}s")

        def prune(alpha: float, lr: float, out: Path, train: str = "train", **extra: Any) -> Any:
            hyper = Hyper(**TEACHER_LM | {"epochs": args.decoder_epochs, "learning_rate": lr})
            options = PruneOptions(
                str(teacher), ratio=0.25, alpha=alpha, temperature=args.temperature, **extra
            )
            return prune_and_distill_lm(paths[train], teacher, hyper, options, out)

        grid = []
        for lr in sorted(float(v) for v in args.decoder_lrs.split(",")):
            trained = prune(args.alpha, lr, root / "trial", "fit")
            score = evaluate_generator(root / "trial", paths["validation"], root / "trials")
            grid.append({"learning_rate": lr, "validation": score["metrics"],
                         "train_seconds": trained.train_seconds})  # fmt: skip
            print(f"trial lr {lr:g}: validation rougeL {score['metrics']['rougeL']:.4f}")
            shutil.rmtree(root / "trial")
        lr = max(grid, key=lambda t: (t["validation"]["rougeL"], -t["learning_rate"]))[
            "learning_rate"
        ]
        print(f"chosen: lr {lr:g}")
        student = prune(args.alpha, lr, root / "student")
        options = json.loads((root / "student" / "adaptflow_model.json").read_text())["options"]
        labels_only = prune(1.0, lr, root / "labels-only")
        int8 = prune(args.alpha, lr, root / "int8", blocks=0, quantize="int8")
        packages = {
            "teacher": teacher,
            "pruned+distilled": root / "student",
            "pruned+labels": root / "labels-only",
            "pruned only": lm_pruned_only(teacher, options["removed_blocks"], root / "pruned"),
            "int8": root / "int8",
        }
        scores = {
            name: evaluate_generator(folder, paths["eval"], root / "scores" / name)["metrics"]
            for name, folder in packages.items()
        }
        for name, metrics in scores.items():
            print(f"{name}: rougeL {metrics['rougeL']:.4f}, perplexity {metrics['perplexity']:.3f}")
        from adaptflow.jsonl import read_jsonl

        texts = [str(row["text"]) for row in read_jsonl(paths["eval"])]
        costs = lm_measure(packages, texts, args.repeats)
        train_s = {
            "teacher": taught.train_seconds,
            "pruned+distilled": student.train_seconds,
            "pruned+labels": labels_only.train_seconds,
            "pruned only": 0.0,
            "int8": int8.train_seconds,
        }
        best = scores["teacher"]
        rows = {
            name: {k: scores[name][k] for k in ("rougeL", "perplexity", "exact_match")}
            | {
                "retained_rougeL": scores[name]["rougeL"] / best["rougeL"] if best["rougeL"] else 0,
                "retained_perplexity": best["perplexity"] / scores[name]["perplexity"],
            }
            | {k: v for k, v in costs[name].items() if k != "rounds"}
            | {"train_seconds": train_s[name], "rounds": costs[name]["rounds"]}
            for name in packages
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} cost measurements"
    )
    print(
        f"{'model':<18}{'ROUGE-L':>8}{'ret':>7}{'ppl':>8}{'ret':>7}{'params':>11}{'MB':>6}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'ex/s':>7}{'tok/s':>7}{'speedup':>8}{'train s':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:<18}{r['rougeL']:>8.4f}{r['retained_rougeL']:>7.3f}{r['perplexity']:>8.3f}"
            f"{r['retained_perplexity']:>7.3f}{r['params']:>11,.0f}{r['size_mb']:>6.2f}"
            f"{r['latency_p50_ms']:>8.1f}{r['latency_p95_ms']:>8.1f}{r['throughput']:>7.1f}"
            f"{r['token_throughput']:>7.0f}{r['speedup']:>7.2f}x{r['train_seconds']:>8.1f}"
        )

    import transformers

    from tasks.evaluate import compression

    results = {
        "command": "ADAPTFLOW_MODELS_DIR=... .venv/bin/python benchmarks/bench_compress.py "
        + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": __import__("os").cpu_count(),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {
            "file": str(LM_DATA.relative_to(REPO)),
            "split": sizes,
            "how": "held_out(one stratum, 0.2, seed 42) for eval; split_validation(train, 0.2, "
            "seed 42) for the validation part",
        },
        "teacher_recipe": TEACHER_LM | {"method": "full", "base_model": "tiny-gpt"},
        "distillation_grid": grid,
        "student_recipe": {
            "ratio": 0.25,
            "epochs": args.decoder_epochs,
            "learning_rate": lr,
            "alpha": args.alpha,
            "temperature": args.temperature,
        },
        "removed_blocks": options["removed_blocks"],
        "kept_blocks": options["kept_blocks"],
        "block_influence": options["block_influence"],
        "measured": {
            "generated_tokens": compression.GENERATED_TOKENS,
            "latency_texts": compression.GENERATOR_LATENCY_TEXTS,
            "warmup": compression.WARMUP,
            "batch": compression.BATCH,
            "rounds": compression.THROUGHPUT_ROUNDS,
            "repeats": args.repeats,
        },
        "results": rows,
        "wall_seconds": time.perf_counter() - started_all,
    }
    out = args.out or LM_RESULTS_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")


def main() -> None:
    """Train, compress, score and measure; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cost measurement rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--blocks", type=int, default=3, help="blocks to remove (of 6)")
    parser.add_argument("--lrs", default="1e-4,2e-4,3e-4", help="distillation lr grid")
    parser.add_argument("--epochs", default="2,4", help="distillation epochs grid")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the label loss")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument(
        "--teacher",
        type=Path,
        help="the teacher package: used if it exists, else trained there and kept (with its "
        "training seconds, reported on a rerun)",
    )
    parser.add_argument("--out", type=Path, help=f"default {RESULTS_FILE.name} (decoder: "
                        f"{LM_RESULTS_FILE.name})")  # fmt: skip
    parser.add_argument("--decoder", action="store_true", help="the tiny-gpt decoder benchmark")
    parser.add_argument("--decoder-epochs", type=float, default=3.0, help="distillation epochs")
    parser.add_argument("--decoder-lrs", default="3e-4,1e-3", help="distillation lr grid")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.decoder:
        decoder(args)
        return
    args.out = args.out or RESULTS_FILE
    from tasks.train.peft import Hyper, train_peft_classifier

    started_all = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    try:
        paths = split(root)
        sizes = {k: sum(1 for _ in v.open()) for k, v in paths.items()}
        print(f"split: {sizes}")
        teacher = args.teacher or root / "teacher"
        timing = teacher / TEACHER_TIME  # the training time, kept with a kept teacher
        if not (teacher / "adaptflow_model.json").is_file():
            result = train_peft_classifier(
                paths["train"], "minilm", "lora", Hyper(**TEACHER), teacher
            )
            timing.write_text(json.dumps({"train_seconds": result.train_seconds}) + "\n")
        teacher_seconds = (
            json.loads(timing.read_text())["train_seconds"] if timing.is_file() else None
        )
        teacher_f1 = f1(teacher, paths["eval"], root / "scores")
        print(f"teacher: eval macro-F1 {teacher_f1:.4f}, trained in {teacher_seconds}s")

        grid = []
        lrs = [float(v) for v in args.lrs.split(",")]
        epochs_grid = [int(v) for v in args.epochs.split(",")]
        for epochs in epochs_grid:
            for lr in lrs:
                out = root / f"trial-e{epochs}-lr{lr:g}"
                trained = distill(paths["fit"], teacher, lr, epochs, args.alpha, args, out)
                score = f1(out, paths["validation"], root / "scores")
                removed = json.loads((out / "adaptflow_model.json").read_text())["options"][
                    "removed_blocks"
                ]
                grid.append(
                    {
                        "epochs": epochs,
                        "learning_rate": lr,
                        "alpha": args.alpha,
                        "validation_f1_macro": score,
                        "removed_blocks": removed,
                        "train_seconds": trained.train_seconds,
                    }
                )
                print(f"trial epochs {epochs} lr {lr:g}: validation macro-F1 {score:.4f}")
                shutil.rmtree(out)
        best = max(
            grid, key=lambda t: (t["validation_f1_macro"], -t["epochs"], -t["learning_rate"])
        )
        lr, epochs = best["learning_rate"], best["epochs"]
        print(f"chosen: epochs {epochs}, lr {lr:g}")

        student_dir = root / "student"
        student = distill(paths["train"], teacher, lr, epochs, args.alpha, args, student_dir)
        options = json.loads((student_dir / "adaptflow_model.json").read_text())["options"]
        labels_dir = root / "labels-only"
        labels_only = distill(paths["train"], teacher, lr, epochs, 1.0, args, labels_dir)
        pruned_dir = pruned_only(teacher, options["removed_blocks"], root / "pruned")
        int8_dir, quantization, int8_seconds = int8_package(teacher, root / "int8")

        packages = {
            "teacher": teacher,
            "pruned+distilled": student_dir,
            "pruned+labels": labels_dir,
            "pruned only": pruned_dir,
            "int8": int8_dir,
        }
        scores = {
            name: f1(folder, paths["eval"], root / "scores") for name, folder in packages.items()
        }
        costs = measure(packages, paths["eval"], args.repeats)
        train_s = {
            "teacher": teacher_seconds,
            "pruned+distilled": student.train_seconds,
            "pruned+labels": labels_only.train_seconds,
            "pruned only": 0.0,
            "int8": int8_seconds,
        }
        rows = {
            name: {"f1_macro": scores[name], "retained": scores[name] / teacher_f1}
            | {k: v for k, v in costs[name].items() if k != "rounds"}
            | {"train_seconds": train_s[name], "rounds": costs[name]["rounds"]}
            for name in packages
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    head = (
        f"{'model':<18}{'F1':>7}{'retained':>9}{'params':>12}{'MB':>7}{'p50 ms':>8}"
        f"{'p95 ms':>8}{'ex/s':>7}{'speedup':>8}{'train s':>8}"
    )
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} cost rounds"
    )
    print(head)
    for name, r in rows.items():
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        print(
            f"{name:<18}{r['f1_macro']:>7.4f}{r['retained']:>9.3f}{r['params']:>12,.0f}"
            f"{r['size_mb']:>7.1f}{r['latency_p50_ms']:>8.2f}{r['latency_p95_ms']:>8.2f}"
            f"{r['throughput']:>7.0f}{r['speedup']:>7.2f}x{seconds:>8}"
        )
    student_row = rows["pruned+distilled"]
    met = student_row["retained"] >= GOAL["retained"] and student_row["speedup"] >= GOAL["speedup"]
    print(
        f"goal (retained >= {GOAL['retained']} at speedup >= {GOAL['speedup']}x): "
        f"{'met' if met else 'missed'}"
    )

    import transformers

    results = {
        "command": "ADAPTFLOW_MODELS_DIR=... .venv/bin/python benchmarks/bench_compress.py "
        + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": __import__("os").cpu_count(),
            "quantized_engine": torch.backends.quantized.engine,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {
            "file": str(DATA.relative_to(REPO)),
            "split": sizes,
            "how": "held_out(labels, 0.2, seed 42) for eval; split_validation(train, 0.2, "
            "seed 42) for the validation part",
        },
        "teacher_recipe": TEACHER | {"method": "lora", "base_model": "minilm"},
        "removed_blocks": options["removed_blocks"],
        "kept_blocks": options["kept_blocks"],
        "block_influence": options["block_influence"],
        "distillation_grid": grid,
        "chosen": {
            "epochs": epochs,
            "learning_rate": lr,
            "alpha": args.alpha,
            "temperature": args.temperature,
        },
        "int8_quantization": quantization,
        "goal": GOAL | {"met": met},
        "results": rows,
        "wall_seconds": time.perf_counter() - started_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
