"""Export benchmark: fp32 vs dynamic int8 size on disk, latency and answer drift.

    ADAPTFLOW_MODELS_DIR=... .venv/bin/python benchmarks/bench_export.py [--repeats 5]

Two models go through ``tasks.train.export.export_package`` with ``int8=True``, as full-weight
packages (so no merge step):

1. **tiny-gpt fine-tuned on ``examples/unicode-lowercase``** with that example's settings (full
   fine-tuning, 12 epochs, lr 0.003; ~1-2 min on 2 cores) on 4 of every 5 pairs, and scored on
   ``--rows`` of the fifth for the metric change (1.38M parameters, width 128, 4 blocks).
2. **A random GPT-2** of 6 blocks, width 512 (~21M parameters, same tokenizer), where the
   linear layers are a larger share of the work and int8 matters more. Random weights, so only
   size, latency and agreement with fp32 mean anything (no metrics).

Latency is the median time of one greedy answer of exactly ``--new-tokens`` tokens to one
prompt, over 5 prompts x ``--repeats``, fp32 and int8 taking turns on each prompt, on however
many threads torch uses here (printed). On a machine shared with other work the numbers move.
Results go to ``benchmarks/results/export.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS_FILE = REPO / "benchmarks" / "results" / "export.json"


def weights_package(model: Any, tokenizer_dir: str, folder: Path, base: str) -> Path:
    """A full-weights ``causal-lm`` package of ``model`` (as a ``full`` training run writes)."""
    from runtime.loading import load_base_tokenizer
    from runtime.manifest import PackageManifest

    model.save_pretrained(str(folder / "weights"), safe_serialization=True)
    load_base_tokenizer(tokenizer_dir).save_pretrained(str(folder / "tokenizer"))
    total = sum(p.numel() for p in model.parameters())
    PackageManifest("causal-lm", "full", base, [], 128, total, total, {"max_new_tokens": 32}).write(
        folder
    )
    return folder


def bench(package: Path, rows: list[dict[str, Any]] | None, args: argparse.Namespace) -> dict:
    """Export ``package`` as int8 and keep the numbers that compare it with fp32."""
    from tasks.train.export import export_package

    with tempfile.TemporaryDirectory() as scratch:
        report = export_package(
            package,
            Path(scratch) / "int8",
            int8=True,
            eval_rows=rows,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
        )
    sizes, latency, quant = report["size_bytes"], report["latency_ms"], report["quantization"]
    metrics = report["metrics"]
    return {
        "params": quant["params_int8"] + quant["params_fp32"],
        "params_int8": quant["params_int8"],
        "size_fp32_bytes": sizes["fp32"],
        "size_int8_bytes": sizes["int8"],
        "size_ratio": sizes["int8"] / sizes["fp32"],
        "latency_fp32_ms": latency["fp32"],
        "latency_int8_ms": latency["int8"],
        "speedup": latency["fp32"] / latency["int8"],
        "greedy_agree": f"{quant['greedy_agree']}/{quant['prompts']}",
        "max_abs_logit_diff": quant["max_abs_logit_diff"],
        "metric_change": metrics["change"] if metrics else None,
        "metrics_fp32": metrics["fp32"] if metrics else None,
    }


def main() -> None:
    """Run both models, print a table and write ``benchmarks/results/export.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument(
        "--package",
        type=Path,
        help="the fine-tuned tiny-gpt package: used if it exists, else trained there and kept",
    )
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from adaptflow.catalogue import resolve_base_model
    from tasks.curate.records import read_jsonl
    from tasks.train.peft import Hyper
    from tasks.train.sft import train_generator

    tiny = resolve_base_model("tiny-gpt")
    pairs = read_jsonl(REPO / "examples" / "unicode-lowercase" / "data" / "pairs.jsonl")
    rows = [row for i, row in enumerate(pairs) if i % 5 == 0][: args.rows]
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "quantized_engine": torch.backends.quantized.engine,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        tuned = args.package or root / "tiny"
        if not (tuned / "adaptflow_model.json").is_file():
            train = root / "train.jsonl"
            train.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(pairs) if i % 5))
            hyper = Hyper(epochs=12, learning_rate=0.003, batch_size=16, max_length=64)
            started = time.perf_counter()
            train_generator(train, "tiny-gpt", "full", hyper, tuned, root / "checkpoints")
            results["train_seconds"] = time.perf_counter() - started
        results["tiny-gpt-lowercase"] = bench(tuned, rows, args)
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=6,
            n_embd=512,
            n_head=8,
            vocab_size=4096,
            n_positions=512,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        package = weights_package(GPT2LMHeadModel(config), tiny, root / "wide", "random")
        results["gpt2-6x512-random"] = bench(package, None, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"threads {results['machine']['threads']}, {args.new_tokens} new tokens per answer")
    print(
        f"{'model':<20}{'params':>12}{'fp32 MB':>9}{'int8 MB':>9}{'size':>7}"
        f"{'fp32 ms':>9}{'int8 ms':>9}{'speedup':>9}{'agree':>7}{'max |dlogit|':>14}"
    )
    for name in ("tiny-gpt-lowercase", "gpt2-6x512-random"):
        r = results[name]
        print(
            f"{name:<20}{r['params']:>12,}{r['size_fp32_bytes'] / 1e6:>9.2f}"
            f"{r['size_int8_bytes'] / 1e6:>9.2f}{r['size_ratio']:>7.2f}"
            f"{r['latency_fp32_ms']:>9.1f}{r['latency_int8_ms']:>9.1f}{r['speedup']:>8.2f}x"
            f"{r['greedy_agree']:>7}{r['max_abs_logit_diff']:>14.3f}"
        )
    tiny_result = results["tiny-gpt-lowercase"]
    for label in ("metrics_fp32", "metric_change"):
        values = ", ".join(f"{k} {v:+.4f}" for k, v in tiny_result[label].items())
        print(f"tiny-gpt-lowercase {label} ({len(rows)} held-out rows): {values}")
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS_FILE}")


if __name__ == "__main__":
    main()
