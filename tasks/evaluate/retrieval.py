"""Retrieval metrics on questions whose answer lives in one known source file.

Relevance is at the document level, as ``data.questions`` states it (``source`` = a file under
``data.knowledge``): a ranked list of chunks becomes a ranked list of distinct sources (in the
order each first appears), and the question's source has a rank r (or none). Then, averaged
over questions: ``recall@k`` = share with r <= k; ``mrr`` = mean of 1/r (0 when absent);
``ndcg@10`` = mean of 1/log2(r + 1) for r <= 10 (one relevant document, so the ideal DCG is 1).

When the package names a generator, its answers are scored too (``answer_metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from runtime.text_metrics import exact_match, groundedness, token_f1

KS = (1, 5, 10)


def source_rank(ranked_sources: Sequence[str], relevant: str) -> int | None:
    """1-based rank of ``relevant`` among the distinct sources, or None."""
    seen: list[str] = []
    for source in ranked_sources:
        if source not in seen:
            seen.append(source)
            if source == relevant:
                return len(seen)
    return None


def retrieval_metrics(
    rankings: Sequence[Sequence[str]], relevant: Sequence[str]
) -> dict[str, float]:
    """``recall@1/5/10``, ``mrr`` and ``ndcg@10`` of chunk-source rankings (see module doc)."""
    if not rankings:
        raise ValueError("no questions to evaluate")
    ranks = [source_rank(r, s) for r, s in zip(rankings, relevant, strict=True)]
    n = len(ranks)
    metrics = {f"recall@{k}": sum(1 for r in ranks if r and r <= k) / n for k in KS}
    metrics["mrr"] = sum(1 / r for r in ranks if r) / n
    metrics["ndcg@10"] = sum(1 / math.log2(r + 1) for r in ranks if r and r <= 10) / n
    return metrics


def answer_metrics(
    answers: Sequence[str], contexts: Sequence[str], references: Sequence[str | None]
) -> dict[str, float]:
    """Scores of generated answers: against the references, and against the retrieved text.

    Args:
        answers: One generated answer per question.
        contexts: The passages' text each answer was generated from.
        references: Each question's reference answer, or None where it has none.

    Returns:
        ``groundedness`` (mean share of answer tokens found in its context, every question)
        and, when at least one question has a reference, ``answer_exact_match`` and
        ``answer_token_f1`` (SQuAD-normalised, means over the questions with a reference).
    """
    if not answers:
        raise ValueError("no answers to score")
    pairs = list(zip(answers, contexts, strict=True))
    metrics = {"groundedness": sum(groundedness(a, c) for a, c in pairs) / len(pairs)}
    scored = [(a, r) for a, r in zip(answers, references, strict=True) if r is not None]
    if scored:
        metrics["answer_exact_match"] = sum(exact_match(a, r) for a, r in scored) / len(scored)
        metrics["answer_token_f1"] = sum(token_f1(a, r) for a, r in scored) / len(scored)
    return metrics
