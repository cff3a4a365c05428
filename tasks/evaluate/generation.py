"""Score generative candidates (instruction, qa, summarization) and their no-training baseline.

One ``Generator`` (a loaded package, or the bare base model) and one ``score_generator``
(both in ``runtime.generate``) serve the candidate, the baseline, the champion's re-scoring and
``predict``, so every number the gate compares comes from the same prompts, decoding and
metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.generate import Generator, score_generator
from tasks.curate.records import read_jsonl


def _write_examples(path: Path, rows: list[dict[str, Any]], predictions: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row, prediction in zip(rows, predictions, strict=True):
            record = {"id": row["id"], "text": row["text"], "target": row["target"]}
            handle.write(json.dumps(record | {"prediction": prediction}) + "\n")
    return path


def evaluate_generator(package_dir: Path, eval_path: Path, out_dir: Path) -> dict[str, Any]:
    """Score a generative package on the curated eval split.

    Returns:
        ``metrics``, ``artifacts`` (the per-example answers, JSONL) and ``eval_examples``.
    """
    rows = read_jsonl(eval_path)
    scored = score_generator(Generator.from_package(package_dir), rows)
    answers = _write_examples(out_dir / "eval_answers.jsonl", rows, scored["predictions"])
    return {"metrics": scored["metrics"], "artifacts": [str(answers)], "eval_examples": len(rows)}


def base_model_baseline(
    base_model: str,
    eval_path: Path,
    max_length: int,
    max_new_tokens: int,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """The no-training baseline: the base model answering the same prompts, zero-shot."""
    generator = Generator.from_base(base_model, max_length, max_new_tokens, allow_pickle)
    scored = score_generator(generator, read_jsonl(eval_path))
    return {"metrics": scored["metrics"], "method": f"base model '{base_model}', no training"}


evaluate_generator_task = task(name="evaluate_generator", cache_policy=NO_CACHE)(evaluate_generator)
base_model_baseline_task = task(name="base_model_baseline", cache_policy=NO_CACHE)(
    base_model_baseline
)
