"""What a compressed candidate costs to serve, next to its teacher, and the trade it makes.

Measured in the run, on this machine's CPU, the same way for the candidate and the teacher:

- ``params``: weights of the model as served (a LoRA teacher: base + adapter, merged; an int8
  candidate: its quantized weights too, which ``parameters()`` leaves out, so it counts as
  many as its fp32 source: ``runtime.int8.parameter_count``).
- ``size_mb``: bytes on disk of what serving loads (a ``weights/`` package: its weights folder,
  the int8 file for an int8 package; an adapter package: the base model's weights (bundled
  ``base/`` or referenced) plus the adapter; a base-model teacher: its safetensors files, or
  its in-memory weights when it is no local folder), in MB (10^6 bytes).
- ``latency_p50_ms`` / ``latency_p95_ms``: one example at a time over the first
  ``LATENCY_TEXTS`` eval texts (``GENERATOR_LATENCY_TEXTS`` for generators), after ``WARMUP``
  untimed calls.
- throughput: examples per second over ``THROUGHPUT_ROUNDS`` passes of one fixed batch of
  ``BATCH`` eval texts (after one untimed pass); ``speedup`` = the candidate's ÷ the teacher's.
- generators (``causal-lm``, ``seq2seq-lm``): each timed call renders the prompts as serving
  does and generates greedily exactly ``GENERATED_TOKENS`` new tokens (end of text suppressed
  until then), so both models do the same work whatever they would answer; the two take turns
  on each prompt and each round, so a machine that gets busier meanwhile slows both alike.
  ``token_throughput`` is the batch's new tokens per second.
- ``retained``: the candidate's target metric ÷ the teacher's on the same eval set (for a
  lower-is-better metric, the teacher's ÷ the candidate's), so 1.0 means nothing was lost. A
  generative teacher answers the eval rows through the gate's own scoring
  (``tasks.evaluate.generation.score_generative``) decoding as the candidate does (its
  ``max_length``, ``max_new_tokens`` and sampling settings); a classifier teacher through
  ``evaluate_classifier``.
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
#: Generators: new tokens of every timed answer, and how many prompts latency is timed on.
GENERATED_TOKENS = 16
GENERATOR_LATENCY_TEXTS = 16


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
    teacher: Path | str,
    eval_path: Path,
    out_dir: Path,
    candidate_metrics: dict[str, float],
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Score the teacher on the eval set and measure both models' serving costs.

    A generative candidate goes to ``generative_comparison``; a classifier's teacher is its
    package folder.

    Returns:
        ``metrics`` (the candidate's compression metrics), ``teacher`` (its metrics and
        costs) and ``candidate_cost``.
    """
    from runtime.manifest import KINDS, PackageManifest
    from tasks.curate.records import read_jsonl
    from tasks.evaluate.classification import evaluate_classifier

    if PackageManifest.read(package_dir).kind in KINDS.values():  # a generator
        return generative_comparison(
            metric, package_dir, teacher, eval_path, candidate_metrics, allow_pickle
        )
    teacher_dir = Path(teacher)
    texts = [str(row["text"]) for row in read_jsonl(eval_path)]
    report = evaluate_classifier(teacher_dir, eval_path, out_dir / "teacher")
    teacher_metrics: dict[str, float] = dict(report["metrics"])  # type: ignore[call-overload]
    teacher_cost = serving_cost(teacher_dir, texts)
    candidate_cost = serving_cost(package_dir, texts)
    return {
        "metrics": compression_metrics(
            metric, candidate_metrics, teacher_metrics, candidate_cost, teacher_cost
        ),
        "teacher": teacher_metrics | teacher_cost,
        "candidate_cost": candidate_cost,
    }


def served_generator(teacher: Path | str, like: Any, allow_pickle: bool = False) -> Any:
    """The teacher as a ``Generator`` that decodes as ``like`` does (lengths, new tokens, sampling).

    A package folder is loaded as serving loads it, a weight-changing adapter merged (as
    ``serving_cost`` merges a classifier's); anything else is a base model reference.
    """
    import copy

    from runtime.generate import Generator

    if isinstance(teacher, Path):
        loaded = Generator.from_package(teacher)
    else:
        loaded = Generator.from_base(teacher, like.max_length, like.max_new_tokens, allow_pickle)
    model = loaded.model
    if hasattr(model, "merge_and_unload") and not model.active_peft_config.is_prompt_learning:
        model = model.merge_and_unload()  # served merged: no adapter overhead per call
    served = copy.copy(like)  # every decoding setting of the candidate, the teacher's model
    served.model, served.tokenizer = model, loaded.tokenizer
    served.family, served.raw = loaded.family, loaded.raw
    return served


def generator_bytes(source: Path | str, model: Any) -> int:
    """Bytes of the weights serving loads for a generator (see the module docstring)."""
    from adaptflow.catalogue import resolve_base_model
    from adaptflow.errors import AdaptflowError
    from runtime.manifest import PackageManifest
    from tasks.train.export_checks import base_bytes

    if isinstance(source, Path):
        if (source / "weights").is_dir():
            return _bytes(source / "weights")
        base = base_bytes(source, PackageManifest.read(source).base_model)
        if base is not None:
            return base + _bytes(source / "adapter")
    else:
        try:
            folder = Path(resolve_base_model(source))
        except AdaptflowError:
            folder = Path()
        files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
        if files:
            return sum(p.stat().st_size for p in files)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _answer(generator: Any, texts: list[str], tokens: int) -> None:
    """Greedy answers of exactly ``tokens`` new tokens to ``texts``, rendered as served."""
    from runtime.generate import model_inputs

    tokenizer = generator.tokenizer
    tokenizer.padding_side = "left"  # decoders continue from the right edge of the prompt
    tokenizer.truncation_side = "left"
    batch = tokenizer(
        model_inputs(tokenizer, texts, generator.family, raw=generator.raw),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=generator.max_length,
        add_special_tokens=generator.family != "decoder",
    )
    generator.model.generate(
        **batch,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )


def generator_costs(generators: dict[str, Any], texts: list[str]) -> dict[str, dict[str, float]]:
    """``params``, latency percentiles and throughputs of each generator, taking turns.

    Every call generates exactly ``GENERATED_TOKENS`` tokens; the models take turns on each
    prompt and each batch round (see the module docstring).
    """
    import torch

    from runtime.int8 import parameter_count

    sample = (texts or ["a"])[:GENERATOR_LATENCY_TEXTS]
    batch = (sample * (BATCH // len(sample) + 1))[:BATCH]
    latencies: dict[str, list[float]] = {name: [] for name in generators}
    seconds = dict.fromkeys(generators, 0.0)
    with torch.inference_mode():
        for generator in generators.values():
            generator.model.eval()
            for text in sample[:WARMUP]:
                _answer(generator, [text], GENERATED_TOKENS)
        for text in sample:
            for name, generator in generators.items():
                started = time.perf_counter()
                _answer(generator, [text], GENERATED_TOKENS)
                latencies[name].append((time.perf_counter() - started) * 1000)
        for generator in generators.values():
            _answer(generator, batch, GENERATED_TOKENS)
        for _ in range(THROUGHPUT_ROUNDS):
            for name, generator in generators.items():
                started = time.perf_counter()
                _answer(generator, batch, GENERATED_TOKENS)
                seconds[name] += time.perf_counter() - started
    return {
        name: {
            "params": float(parameter_count(generator.model)),
            "latency_p50_ms": _percentile(latencies[name], 0.5),
            "latency_p95_ms": _percentile(latencies[name], 0.95),
            "throughput": BATCH * THROUGHPUT_ROUNDS / seconds[name],
            "token_throughput": BATCH * THROUGHPUT_ROUNDS * GENERATED_TOKENS / seconds[name],
        }
        for name, generator in generators.items()
    }


def generative_comparison(
    metric: str,
    package_dir: Path,
    teacher: Path | str,
    eval_path: Path,
    candidate_metrics: dict[str, float],
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """A generative candidate next to its teacher (a package folder or a base model).

    The teacher answers the eval rows through the gate's scoring, decoding as the candidate
    does; both models' costs come from ``generator_costs``, measured in turns.

    Returns:
        As ``teacher_comparison``, and ``measured`` (how the costs were measured).
    """
    import torch

    from runtime.generate import Generator
    from tasks.curate.records import read_jsonl
    from tasks.evaluate.generation import score_generative

    rows = read_jsonl(eval_path)
    candidate = Generator.from_package(package_dir)
    served = served_generator(teacher, candidate, allow_pickle)
    teacher_metrics = {k: float(v) for k, v in score_generative(served, rows)["metrics"].items()}
    costs = generator_costs(
        {"teacher": served, "candidate": candidate}, [str(row["text"]) for row in rows]
    )
    teacher_cost = costs["teacher"] | {"size_mb": generator_bytes(teacher, served.model) / 1e6}
    candidate_cost = costs["candidate"] | {
        "size_mb": generator_bytes(package_dir, candidate.model) / 1e6
    }
    return {
        "metrics": compression_metrics(
            metric, candidate_metrics, teacher_metrics, candidate_cost, teacher_cost
        ),
        "teacher": teacher_metrics | teacher_cost,
        "candidate_cost": candidate_cost,
        "measured": {
            "generated_tokens": GENERATED_TOKENS,
            "latency_texts": min(len(rows), GENERATOR_LATENCY_TEXTS) or 1,
            "warmup": WARMUP,
            "batch": BATCH,
            "rounds": THROUGHPUT_ROUNDS,
            "max_new_tokens": candidate.max_new_tokens,
            "threads": torch.get_num_threads(),
        },
    }
