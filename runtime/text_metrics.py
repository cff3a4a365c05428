"""Answer-quality metrics for generated text.

These functions score generated answers and summaries for the ``instruction``, ``qa`` and
``summarization`` tasks: exact match and token F1 follow the SQuAD conventions (lowercase, strip
punctuation and the English articles, collapse whitespace), ROUGE-1/2/L come from Google's
``rouge-score`` package, and a lexical groundedness share and a perplexity helper round them out.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def normalize_answer(text: str) -> str:
    """Normalize text the SQuAD way.

    Lowercases, removes ASCII punctuation, removes the English articles ``a``, ``an`` and
    ``the``, and collapses runs of whitespace to single spaces.

    Args:
        text: Raw answer text.

    Returns:
        The normalized text, with no leading or trailing whitespace.
    """
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def _tokens(text: str) -> list[str]:
    """Split the normalized form of ``text`` on whitespace."""
    return normalize_answer(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """Whether prediction and reference are equal after SQuAD normalization.

    Args:
        prediction: Generated answer.
        reference: Gold answer.

    Returns:
        ``1.0`` if the normalized strings are equal, else ``0.0``.
    """
    return 1.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-level F1 between a prediction and a reference.

    Tokens are the whitespace-separated words of the normalized strings; overlap is counted
    as a multiset intersection.

    Args:
        prediction: Generated answer.
        reference: Gold answer.

    Returns:
        F1 in [0, 1]: ``1.0`` when both normalize to no tokens, ``0.0`` when only one does.
    """
    pred_tokens = _tokens(prediction)
    ref_tokens = _tokens(reference)
    if not pred_tokens or not ref_tokens:
        return 1.0 if pred_tokens == ref_tokens else 0.0
    common = Counter(pred_tokens) & Counter(ref_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over prediction/reference pairs.

    Uses ``rouge_score.rouge_scorer.RougeScorer`` without stemming. Its default tokenizer
    lowercases and replaces every character outside ``[a-z0-9]`` with a space, so non-ASCII
    text (accented letters, other scripts) is largely dropped before scoring.

    Args:
        predictions: Generated texts.
        references: Reference texts, paired with ``predictions`` by position (extra items of
            the longer list are ignored; :func:`generation_metrics` checks the lengths).

    Returns:
        ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``, each a mean F-measure in [0, 1];
        all ``0.0`` for empty input.
    """
    pairs = list(zip(predictions, references, strict=False))
    if not pairs:
        return dict.fromkeys(_ROUGE_TYPES, 0.0)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=False)
    totals = dict.fromkeys(_ROUGE_TYPES, 0.0)
    for prediction, reference in pairs:
        # RougeScorer.score takes (target, prediction).
        scores = scorer.score(reference, prediction)
        for key in _ROUGE_TYPES:
            totals[key] += float(scores[key].fmeasure)
    return {key: total / len(pairs) for key, total in totals.items()}


def groundedness(answer: str, context: str) -> float:
    """Share of the answer's normalized tokens that also occur in the context.

    Each answer token counts (with repetition) if the same token appears anywhere in the
    normalized context; this is a cheap lexical proxy for support, not entailment.

    Args:
        answer: Generated answer.
        context: Source text the answer should be grounded in.

    Returns:
        A share in [0, 1]; ``0.0`` when the answer has no tokens.
    """
    answer_tokens = _tokens(answer)
    if not answer_tokens:
        return 0.0
    context_tokens = set(_tokens(context))
    supported = sum(1 for token in answer_tokens if token in context_tokens)
    return supported / len(answer_tokens)


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus-level exact match, token F1 and ROUGE for generated answers.

    Args:
        predictions: Generated texts.
        references: Reference texts, same length and order as ``predictions``.

    Returns:
        ``exact_match`` and ``token_f1`` (means over pairs) plus ``rouge1``, ``rouge2`` and
        ``rougeL`` (mean F-measures); all ``0.0`` for empty lists.

    Raises:
        ValueError: If the two lists have different lengths.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} != {len(references)}"
        )
    n = len(predictions)
    if n == 0:
        return {"exact_match": 0.0, "token_f1": 0.0, **dict.fromkeys(_ROUGE_TYPES, 0.0)}
    pairs = list(zip(predictions, references, strict=True))
    em = sum(exact_match(p, r) for p, r in pairs) / n
    f1 = sum(token_f1(p, r) for p, r in pairs) / n
    return {"exact_match": em, "token_f1": f1, **rouge_scores(predictions, references)}


def perplexity(total_nll: float, tokens: int) -> float:
    """Perplexity from a summed negative log-likelihood.

    Args:
        total_nll: Sum of per-token negative log-likelihoods, in nats.
        tokens: Number of tokens the sum covers.

    Returns:
        ``exp(total_nll / tokens)``: the exponentiated mean NLL per token.

    Raises:
        ValueError: If ``tokens`` is not positive.
    """
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    return math.exp(total_nll / tokens)
