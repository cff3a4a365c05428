"""The promotion gate: a candidate must beat the no-training baseline and the champion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptflow.spec import LOWER_IS_BETTER


@dataclass
class GateDecision:
    """Whether to promote, and why (one reason per comparison)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def _beats(candidate: float, other: float, metric: str) -> bool:
    return candidate < other if metric in LOWER_IS_BETTER else candidate > other


def decide_promotion(
    metric: str,
    candidate: dict[str, float],
    baseline: dict[str, float] | None,
    champion: dict[str, float] | None,
    baseline_name: str = "",
    forgetting: dict[str, Any] | None = None,
) -> GateDecision:
    """Apply the gate on ``metric``; every number compared comes from the same eval set.

    Args:
        metric: The spec's target metric.
        candidate: The candidate's metrics.
        baseline: The no-training baseline's metrics (None: no baseline for this task).
        champion: The current champion re-scored on the same eval set (None: no champion).
        baseline_name: What the baseline is, for the reasons (e.g. "majority class").
        forgetting: The forgetting report (``tasks.evaluate.forgetting``), when one was
            measured: a candidate whose general-text perplexity rose more than the spec allows
            is not promoted, however well it scores.

    Returns:
        The decision; strictly better is required (a tie does not promote).
    """
    value = candidate[metric]
    decision = GateDecision(promote=True)
    named = f"baseline ({baseline_name})" if baseline_name else "baseline"
    for who, other in ((named, baseline), ("champion", champion)):
        if other is None:
            decision.reasons.append(f"no {who} to compare")
            continue
        if _beats(value, other[metric], metric):
            decision.reasons.append(f"{metric} {value:.4f} beats {who} {other[metric]:.4f}")
        else:
            decision.promote = False
            decision.reasons.append(f"{metric} {value:.4f} does not beat {who} {other[metric]:.4f}")
    if forgetting and forgetting.get("measured"):
        rise = forgetting["perplexity_increase"]
        limit = forgetting["max_increase"]
        verdict = "within" if forgetting["passed"] else "exceeds"
        decision.reasons.append(
            f"forgetting: general-text perplexity {forgetting['general_perplexity_before']:.2f}"
            f" -> {forgetting['general_perplexity_after']:.2f} ({rise:+.1%}) {verdict} the "
            f"allowed {limit:+.1%}"
        )
        decision.promote = decision.promote and bool(forgetting["passed"])
    return decision


#: The trade a compressed candidate must make when the spec states none (``compress``).
DEFAULT_MIN_RETAINED = 0.95
DEFAULT_MIN_SPEEDUP = 1.0


def compression_decision(
    gate: GateDecision, metrics: dict[str, float], compress: Any
) -> GateDecision:
    """``gate`` with the compression bounds applied: retained and speedup against the teacher.

    Unset bounds default to keeping 95% of the teacher's metric and being no slower than it.
    """
    retained = compress.min_retained if compress.min_retained is not None else DEFAULT_MIN_RETAINED
    speedup = compress.min_speedup if compress.min_speedup is not None else DEFAULT_MIN_SPEEDUP
    reasons = [r for r in gate.reasons if r != "no champion to compare"]
    promote = gate.promote
    for name, bound in (("retained", retained), ("speedup", speedup)):
        ok = metrics[name] >= bound
        promote = promote and ok
        verdict = "meets" if ok else "misses"
        reasons.append(f"{name} {metrics[name]:.3f} {verdict} compress.min_{name} {bound:g}")
    return GateDecision(promote=promote, reasons=reasons)
