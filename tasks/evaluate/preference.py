"""Preference metrics of a generative candidate (and of its baseline) on held-out preference data.

- ``preference_accuracy``: the share of held-out pairs where the model's own log-likelihood
  ranks the chosen answer above the rejected one (``log p(chosen|x) > log p(rejected|x)``,
  summed over the answer tokens training scores; a tie counts half). It compares any two
  models on the same pairs, so the gate can hold a tuned candidate against its starting model.
- ``reward_margin``: DPO's implicit reward margin against the reference policy (the starting
  model), ``beta * mean((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))``. The starting
  model's own margin is 0 by definition.

KTO rows (answers labelled desirable or undesirable) are paired within a prompt: every
desirable answer with every undesirable answer to the same prompt. When no prompt has both,
``preference_accuracy`` is the share of answers whose log-likelihood moved the way their label
says relative to the reference (a tie counts half), so the starting model scores 0.5.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from runtime.generate import Generator, answer_logps


def is_preference(rows: list[dict[str, Any]]) -> bool:
    """Whether curated rows are preference data (pairs, or KTO's labelled answers)."""
    return bool(rows) and ("rejected" in rows[0] or rows[0].get("label") in KTO_LABELS)


KTO_LABELS = ("desirable", "undesirable")


def answer_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose ``target`` is a good answer (all pairs; KTO's desirable answers only).

    The answer metrics (ROUGE, exact match, token F1) score generations against these.
    """
    return [row for row in rows if row.get("label") != "undesirable"]


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(good, bad) answer indices into ``_answers(rows)``."""
    if "rejected" in rows[0]:
        return [(2 * i, 2 * i + 1) for i in range(len(rows))]
    by_prompt: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, row in enumerate(rows):
        key = repr((row.get("context"), row["text"]))
        by_prompt[key][row["label"] == "undesirable"].append(i)
    return [(g, b) for good, bad in by_prompt.values() for g in good for b in bad]


def _answers(rows: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """Every answer to score: chosen then rejected per pair, or each KTO row's answer."""
    if "rejected" in rows[0]:
        return [
            (row["text"], answer, row.get("context"))
            for row in rows
            for answer in (row["target"], row["rejected"])
        ]
    return [(row["text"], row["target"], row.get("context")) for row in rows]


def _logps(generator: Generator, rows: list[dict[str, Any]], reference: bool) -> list[float]:
    model = generator.model
    # a PEFT candidate's reference is its own base with the adapter disabled
    context: AbstractContextManager[Any] = model.disable_adapter() if reference else nullcontext()
    with context:
        return answer_logps(
            model, generator.tokenizer, _answers(rows), generator.family, generator.max_length
        )


def _ties_half(difference: float) -> float:
    return 1.0 if difference > 0 else 0.5 if difference == 0 else 0.0


def preference_metrics(
    generator: Generator,
    rows: list[dict[str, Any]],
    beta: float,
    reference: Generator | None = None,
) -> dict[str, float]:
    """``preference_accuracy`` and ``reward_margin`` of ``generator`` on preference ``rows``.

    Args:
        generator: The model to judge.
        rows: Curated preference rows (pairs or KTO rows).
        beta: Scale of the implicit reward (the run's ``align.beta``).
        reference: The reference policy. None: ``generator``'s model with its adapter disabled
            when it has one, else ``generator`` itself (a baseline: margin 0).
    """
    policy = _logps(generator, rows, reference=False)
    if reference is not None:
        ref = _logps(reference, rows, reference=False)
    elif hasattr(generator.model, "disable_adapter"):
        ref = _logps(generator, rows, reference=True)
    else:
        ref = policy
    pairs = _pairs(rows)
    moved = [p - r for p, r in zip(policy, ref, strict=True)]
    if pairs:
        accuracy = sum(_ties_half(policy[g] - policy[b]) for g, b in pairs) / len(pairs)
        margin = beta * sum(moved[g] - moved[b] for g, b in pairs) / len(pairs)
    else:  # KTO without a prompt that has both kinds of answer
        signs = [1.0 if row["label"] == "desirable" else -1.0 for row in rows]
        accuracy = sum(_ties_half(s * m) for s, m in zip(signs, moved, strict=True)) / len(rows)
        margin = beta * sum(s * m for s, m in zip(signs, moved, strict=True)) / len(rows)
    return {"preference_accuracy": accuracy, "reward_margin": margin}


def score_metrics(scores: list[float], rows: list[dict[str, Any]]) -> dict[str, float]:
    """``preference_accuracy`` and ``reward_margin`` of a reward model's ``scores``.

    ``scores`` are one per answer of ``rows`` (chosen then rejected per pair; each KTO row's
    answer): the accuracy is the share of (good, bad) answer pairs the scores rank right (a tie
    counts half), the margin the mean score gap. KTO rows with no prompt holding both kinds
    of answer: the share of answers whose score has their label's sign, and the mean signed score.
    """
    pairs = _pairs(rows)
    if pairs:
        accuracy = sum(_ties_half(scores[g] - scores[b]) for g, b in pairs) / len(pairs)
        margin = sum(scores[g] - scores[b] for g, b in pairs) / len(pairs)
    else:
        signs = [1.0 if row["label"] == "desirable" else -1.0 for row in rows]
        accuracy = sum(_ties_half(s * v) for s, v in zip(signs, scores, strict=True)) / len(rows)
        margin = sum(s * v for s, v in zip(signs, scores, strict=True)) / len(rows)
    return {"preference_accuracy": accuracy, "reward_margin": margin}


def answers_of(rows: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """(prompt, answer, context) of every answer ``score_metrics`` expects a score for."""
    return _answers(rows)
