"""What a compressed candidate costs to serve, next to its teacher, and the trade it makes.

Measured in the run, on this machine's CPU, the same way for the candidate and the teacher:

- ``params``: weights of the model as served (a LoRA teacher: base + adapter, merged; an int8
  candidate: its quantized weights too, which ``parameters()`` leaves out, so it counts as
  many as its fp32 source: ``runtime.int8.parameter_count``).
- ``size_mb``: bytes on disk of what serving loads (a ``weights/`` package: its weights folder,
  the int8 file for an int8 package; an adapter package: the base model's weights plus the
  adapter), in MB (10^6 bytes).
- ``latency_p50_ms`` / ``latency_p95_ms``: one example at a time over the first ``LATENCY_TEXTS``
  eval texts, after ``WARMUP`` untimed calls.
- throughput: examples per second over ``THROUGHPUT_ROUNDS`` passes of one fixed batch of
  ``BATCH`` eval texts (after one untimed pass); ``speedup`` = the candidate's ÷ the teacher's.
- ``retained``: the candidate's target metric ÷ the teacher's on the same eval set (for a
  lower-is-better metric, the teacher's ÷ the candidate's), so 1.0 means nothing was lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from adaptflow.spec import LOWER_IS_BETTER

WARMUP = 5
LATENCY_TEXTS = 64
BATCH = 32
THROUGHPUT_ROUNDS = 5


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def served_bytes(package_dir: Path) -> int:
    """Bytes of the weights serving loads for a classifier package (see the docstring)."""
    from adaptflow.catalogue import resolve_base_model
    from runtime.manifest import PackageManifest

    if (package_dir / "weights").is_dir():
        return _bytes(package_dir / "weights")
    base = Path(resolve_base_model(PackageManifest.read(package_dir).base_model))
    weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    return weights + _bytes(package_dir / "adapter")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def serving_cost(package_dir: Path, texts: list[str]) -> dict[str, float]:
    """``params``, ``size_mb``, latency percentiles and throughput of a classifier package."""
    import torch

    from runtime.classifier import predict_proba
    from runtime.int8 import parameter_count
    from runtime.loading import load_classifier

    model, tokenizer, manifest = load_classifier(package_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # served merged: no adapter overhead per call
    model.eval()
    sample = (texts or ["a"])[:LATENCY_TEXTS]
    batch = (sample * (BATCH // len(sample) + 1))[:BATCH]
    run = lambda items: predict_proba(model, tokenizer, items, manifest.max_length, BATCH)  # noqa: E731
    with torch.inference_mode():
        for text in sample[:WARMUP]:
            run([text])
        latencies = []
        for text in sample:
            started = time.perf_counter()
            run([text])
            latencies.append((time.perf_counter() - started) * 1000)
        run(batch)
        started = time.perf_counter()
        for _ in range(THROUGHPUT_ROUNDS):
            run(batch)
        seconds = time.perf_counter() - started
    return {
        "params": float(parameter_count(model)),
        "size_mb": served_bytes(package_dir) / 1e6,
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p95_ms": _percentile(latencies, 0.95),
        "throughput": BATCH * THROUGHPUT_ROUNDS / seconds,
    }


def compression_metrics(
    metric: str,
    candidate: dict[str, float],
    teacher: dict[str, float],
    candidate_cost: dict[str, float],
    teacher_cost: dict[str, float],
) -> dict[str, float]:
    """The candidate's cost metrics with ``retained`` and ``speedup`` against the teacher."""
    ours, theirs = candidate[metric], teacher[metric]
    if metric in LOWER_IS_BETTER:
        retained = theirs / ours if ours else 0.0
    else:
        retained = ours / theirs if theirs else 0.0
    costs = {k: v for k, v in candidate_cost.items() if k != "throughput"}
    speedup = candidate_cost["throughput"] / teacher_cost["throughput"]
    return costs | {"retained": retained, "speedup": speedup}


def teacher_comparison(
    metric: str,
    package_dir: Path,
    teacher_dir: Path,
    eval_path: Path,
    out_dir: Path,
    candidate_metrics: dict[str, float],
) -> dict[str, Any]:
    """Score the teacher on the eval set and measure both models' serving costs.

    Returns:
        ``metrics`` (the candidate's compression metrics), ``teacher`` (its metrics and
        costs) and ``candidate_cost``.
    """
    from tasks.curate.records import read_jsonl
    from tasks.evaluate.classification import evaluate_classifier

    texts = [str(row["text"]) for row in read_jsonl(eval_path)]
    teacher = evaluate_classifier(teacher_dir, eval_path, out_dir / "teacher")
    teacher_metrics: dict[str, float] = dict(teacher["metrics"])  # type: ignore[call-overload]
    teacher_cost = serving_cost(teacher_dir, texts)
    candidate_cost = serving_cost(package_dir, texts)
    return {
        "metrics": compression_metrics(
            metric, candidate_metrics, teacher_metrics, candidate_cost, teacher_cost
        ),
        "teacher": teacher_metrics | teacher_cost,
        "candidate_cost": candidate_cost,
    }
