"""Language-model scores: domain perplexity (``language-modeling``) and the forgetting check.

Every source on continued pre-training and full fine-tuning warns about catastrophic
forgetting; this measures it. The check part of ``data.general`` (held out from replay by
``tasks.curate.general``) is scored by the base model and by the candidate on the same
windows; the relative rise of its perplexity is compared with ``forgetting.max_increase``, and
the promotion gate blocks a candidate that forgot more than that. Next-token accuracy on the
same text is reported next to it (the "task metric on a general check").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.cache import cached_baseline
from tasks.curate.general import load_general
from tasks.curate.records import read_jsonl


def lm_metrics(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, float]:
    """``perplexity`` and ``next_token_accuracy`` of a decoder on ``texts``."""
    from runtime.generate import score_texts

    score = score_texts(model, tokenizer, texts, max_length)
    return {"perplexity": score.perplexity, "next_token_accuracy": score.accuracy}


def evaluate_lm(package_dir: Path, eval_path: Path) -> dict[str, Any]:
    """Score a CPT package on the curated domain holdout (the eval split's ``text``)."""
    from runtime.loading import load_generator

    model, tokenizer, manifest = load_generator(package_dir)
    rows = read_jsonl(eval_path)
    metrics = lm_metrics(model, tokenizer, [r["text"] for r in rows], manifest.max_length)
    return {"metrics": metrics, "artifacts": [], "eval_examples": len(rows)}


def base_lm_baseline(
    base_model: str, eval_path: Path, max_length: int, allow_pickle: bool = False
) -> dict[str, Any]:
    """The no-training baseline of ``language-modeling``: the base model on the same holdout."""
    from runtime.loading import load_base, load_base_tokenizer

    model = load_base(base_model, "decoder", allow_pickle)
    model.eval()
    texts = [r["text"] for r in read_jsonl(eval_path)]
    metrics = lm_metrics(model, load_base_tokenizer(base_model), texts, max_length)
    return {"metrics": metrics, "method": f"base model '{base_model}', no training"}


def forgetting_check(
    package_dir: Path,
    base_model: str,
    general_path: Path,
    text_field: str,
    max_increase: float,
    check_fraction: float,
    max_check: int,
    out_dir: Path,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Measure forgetting on the check part of ``data.general``: base model vs candidate.

    Returns:
        The report: ``measured`` (False for encoder-decoders, with ``reason``), general
        perplexity and next-token accuracy before and after, ``perplexity_increase`` (relative),
        ``max_increase``, ``passed``, the check size, and ``artifact`` (the report as JSON).
    """
    from runtime.loading import load_base, load_base_tokenizer, load_generator
    from runtime.manifest import PackageManifest

    if PackageManifest.read(package_dir).kind != "causal-lm":
        return {
            "measured": False,
            "passed": True,
            "reason": "general-text perplexity applies to decoders; not measured",
        }
    general = load_general(general_path, text_field, check_fraction, max_check)
    model, tokenizer, manifest = load_generator(package_dir)
    after = lm_metrics(model, tokenizer, general.check, manifest.max_length)
    del model
    base = load_base(base_model, "decoder", allow_pickle)
    base.eval()
    before = lm_metrics(base, load_base_tokenizer(base_model), general.check, manifest.max_length)
    increase = after["perplexity"] / before["perplexity"] - 1
    report = {
        "measured": True,
        "general_perplexity_before": before["perplexity"],
        "general_perplexity_after": after["perplexity"],
        "perplexity_increase": increase,
        "general_accuracy_before": before["next_token_accuracy"],
        "general_accuracy_after": after["next_token_accuracy"],
        "accuracy_change": after["next_token_accuracy"] - before["next_token_accuracy"],
        "max_increase": max_increase,
        "passed": increase <= max_increase,
        "check_texts": len(general.check),
        "replay_texts": len(general.replay),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "forgetting.json"
    artifact.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report | {"artifact": str(artifact)}


def forgetting_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metrics (``forgetting.`` prefixed by the caller)."""
    keys = (
        "general_perplexity_before",
        "general_perplexity_after",
        "perplexity_increase",
        "general_accuracy_before",
        "general_accuracy_after",
        "accuracy_change",
    )
    metrics = {k: float(report[k]) for k in keys if k in report}
    return metrics | {"passed": float(report["passed"])} if metrics else {}


evaluate_lm_task = task(name="evaluate_lm", cache_policy=NO_CACHE)(evaluate_lm)
# scored once per (data, base model, settings) and home: tasks/cache.py
base_lm_baseline_task = cached_baseline("base_lm_baseline", ("eval_path",))(base_lm_baseline)
forgetting_check_task = task(name="forgetting_check", cache_policy=NO_CACHE)(forgetting_check)
