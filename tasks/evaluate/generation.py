"""Score generative candidates (instruction, qa, summarization) and their no-training baseline.

One ``Generator`` (a loaded package, or the bare base model) and one ``score_generator``
(both in ``runtime.generate``) serve the candidate, the baseline, the champion's re-scoring and
``predict``, so every number the gate compares comes from the same prompts, decoding and
metrics.

The gate scores what is served: a package answers with its own decoding settings (its spec's
``generation`` block, recorded in the manifest; ``runtime.generate.package_decoding``), greedy
unless they set a temperature; a sampling package's eval answers are sampled with the spec's
``seed``, so they are the same on every re-scoring. The no-training baseline decodes greedily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from runtime.generate import Generator, Sampling, score_generator
from runtime.manifest import PackageManifest
from runtime.reward_model import RewardModel
from runtime.rewards import reward_metrics
from tasks.cache import cached_baseline
from tasks.curate.records import read_jsonl
from tasks.evaluate.preference import answer_rows, is_preference, preference_metrics
from tasks.evaluate.win_rate import win_rate
from tasks.rewards import reward_scorers

#: The implicit-reward scale of packages that record none (align.beta's default).
DEFAULT_BETA = 0.1


def _write_examples(path: Path, rows: list[dict[str, Any]], predictions: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row, prediction in zip(rows, predictions, strict=True):
            record = {"id": row["id"], "text": row["text"], "target": row.get("target")}
            handle.write(json.dumps(record | {"prediction": prediction}) + "\n")
    return path


def score_generative(
    generator: Generator,
    rows: list[dict[str, Any]],
    manifest: PackageManifest | None = None,
    rewards: list[dict[str, Any]] | None = None,
    rewards_dir: Path | None = None,
    versus: tuple[RewardModel, list[str]] | None = None,
) -> dict[str, Any]:
    """Every metric of a generative model on curated eval ``rows``.

    The one scoring path of the candidate, its baseline and the champion.

    Answers are scored against the good answers (all of them; of preference rows the chosen
    ones, of KTO rows the desirable ones). Preference rows add ``preference_accuracy`` and
    ``reward_margin`` (the reference: the package's base with its adapter disabled, the base
    loaded again for a full-weight package, the model itself without a ``manifest``: margin 0).
    ``rewards`` add ``reward_mean`` of its answers; ``versus`` (a judge and the base's
    answers to the same rows) adds ``win_rate`` (``tasks.evaluate.win_rate``).

    Returns:
        ``metrics``, ``predictions`` and the ``rows`` they answer.
    """
    answered = answer_rows(rows) if is_preference(rows) else rows
    scored = score_generator(generator, answered)
    metrics = dict(scored["metrics"])
    if is_preference(rows):
        reference = None
        beta = DEFAULT_BETA
        if manifest is not None:
            beta = float(manifest.options.get("beta", DEFAULT_BETA))
            if not hasattr(generator.model, "disable_adapter"):  # full weights: load the base
                allow_pickle = bool(manifest.options.get("allow_pickle", False))
                reference = Generator.from_base(
                    manifest.base_model, generator.max_length, 1, allow_pickle
                )
        metrics |= preference_metrics(generator, rows, beta, reference)
    if rewards:
        prompts = [row["text"] for row in answered]
        references = [row.get("target") for row in answered]
        scorers = reward_scorers(rewards, rewards_dir)
        metrics |= reward_metrics(scorers, prompts, scored["predictions"], references)
    if versus is not None:
        judge, opponent = versus
        prompts = [row["text"] for row in answered]
        metrics["win_rate"] = win_rate(judge, prompts, scored["predictions"], opponent)
    return {"metrics": metrics, "predictions": scored["predictions"], "rows": answered}


def package_rewards(manifest: PackageManifest) -> tuple[list[dict[str, Any]] | None, Path | None]:
    """The rewards a grpo package was trained on (and the folder python rewards import from)."""
    rewards = manifest.options.get("rewards")
    folder = manifest.options.get("rewards_dir")
    return rewards, Path(folder) if folder else None


def evaluate_generator(package_dir: Path, eval_path: Path, out_dir: Path) -> dict[str, Any]:
    """Score a generative package on the curated eval split, decoding as it is served.

    The package's ``generation`` settings decide the decoding: greedy by default; with a
    temperature above 0 the answers are sampled with the seed they record (the spec's
    ``seed``), so a re-run gives the same answers and metrics.

    Returns:
        ``metrics``, ``artifacts`` (the per-example answers, JSONL) and ``eval_examples``.
    """
    rows = read_jsonl(eval_path)
    manifest = PackageManifest.read(package_dir)
    rewards, rewards_dir = package_rewards(manifest)
    scored = score_generative(
        Generator.from_package(package_dir), rows, manifest, rewards, rewards_dir
    )
    answers = _write_examples(out_dir / "eval_answers.jsonl", scored["rows"], scored["predictions"])
    return {"metrics": scored["metrics"], "artifacts": [str(answers)], "eval_examples": len(rows)}


def base_model_baseline(
    base_model: str,
    eval_path: Path,
    max_length: int,
    max_new_tokens: int,
    allow_pickle: bool = False,
    rewards: list[dict[str, Any]] | None = None,
    rewards_dir: Path | None = None,
    judged: bool = False,
    sampling: Sampling | None = None,
) -> dict[str, Any]:
    """The no-training baseline: the base model answering the same prompts, zero-shot.

    It decodes as the candidate does: ``sampling`` is the spec's ``generation`` settings
    (greedy, no penalty when None).

    With preference rows its ``reward_margin`` is 0 (it is its own reference); with
    ``rewards`` (grpo) its greedy answers are scored by them; ``judged`` (``align.judge`` is
    set) adds its ``win_rate``, 0.5: against its own answers every comparison is a tie.

    Returns:
        ``metrics``, ``method`` and ``predictions`` (the answers ``win_rate`` compares with).
    """
    generator = Generator.from_base(base_model, max_length, max_new_tokens, allow_pickle)
    if sampling is not None:
        generator.sampling = sampling
    scored = score_generative(generator, read_jsonl(eval_path), None, rewards, rewards_dir)
    metrics = scored["metrics"] | ({"win_rate": 0.5} if judged else {})
    return {
        "metrics": metrics,
        "method": f"base model '{base_model}', no training",
        "predictions": scored["predictions"],
    }


evaluate_generator_task = task(name="evaluate_generator", cache_policy=NO_CACHE)(evaluate_generator)
# scored once per (data, base model, settings) and home: tasks/cache.py
base_model_baseline_task = cached_baseline("base_model_baseline", ("eval_path",))(
    base_model_baseline
)
