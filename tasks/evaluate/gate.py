"""The promotion gate: a candidate must beat the no-training baseline and the champion."""

from __future__ import annotations

from dataclasses import dataclass, field

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
) -> GateDecision:
    """Apply the gate on ``metric``; every number compared comes from the same eval set.

    Args:
        metric: The spec's target metric.
        candidate: The candidate's metrics.
        baseline: The no-training baseline's metrics (None: no baseline for this task).
        champion: The current champion re-scored on the same eval set (None: no champion).
        baseline_name: What the baseline is, for the reasons (e.g. "majority class").

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
    return decision
