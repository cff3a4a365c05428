"""Tests for runtime.text_metrics on tiny cases computed by hand."""

from __future__ import annotations

import math

import pytest

from runtime.text_metrics import (
    exact_match,
    generation_metrics,
    groundedness,
    normalize_answer,
    perplexity,
    rouge_scores,
    token_f1,
)

TOL = 1e-4


def test_normalize_answer_squad_rules() -> None:
    # lowercase -> "  the  quick, brown fox! an apple "; punctuation gone; articles
    # "the"/"an" gone; whitespace collapsed -> "quick brown fox apple".
    assert normalize_answer("  The  Quick, brown fox! An apple ") == "quick brown fox apple"
    # Articles are removed only as whole words: "theory" and "anyway" stay.
    assert normalize_answer("theory anyway") == "theory anyway"
    assert normalize_answer("") == ""


def test_exact_match_ignores_case_punctuation_articles() -> None:
    # "The Cat!" -> "cat"; "a cat" -> "cat" -> equal.
    assert exact_match("The Cat!", "a cat") == 1.0
    # "cat" vs "dog" -> different.
    assert exact_match("cat", "dog") == 0.0
    # "cat sat" vs "cat" -> different strings.
    assert exact_match("cat sat", "cat") == 0.0


def test_token_f1_partial_overlap() -> None:
    # pred "the cat sat on the mat" -> [cat, sat, on, mat]; ref "a cat sat" -> [cat, sat].
    # overlap 2 -> precision 2/4, recall 2/2 -> F1 = 2*0.5*1/1.5 = 0.6667.
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3, abs=TOL)


def test_token_f1_counts_overlap_as_multiset() -> None:
    # pred [cat, cat], ref [cat] -> overlap min(2, 1) = 1 -> P = 1/2, R = 1 -> F1 = 0.6667.
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3, abs=TOL)


def test_token_f1_edge_cases() -> None:
    # Both normalize to no tokens ("the" is an article) -> 1.0.
    assert token_f1("", "the") == 1.0
    # Only one empty -> 0.0.
    assert token_f1("cat", "") == 0.0
    assert token_f1("", "cat") == 0.0
    # No shared token -> 0.0.
    assert token_f1("cat", "dog") == 0.0
    # Identical after normalization -> 1.0.
    assert token_f1("The mat.", "mat") == 1.0


def test_rouge_single_pair_by_hand() -> None:
    # rouge_score keeps "the" (no article removal). Tokens:
    # pred [the, cat, sat, on, the, mat], ref [the, cat, lay, on, the, mat].
    # rouge1: shared unigrams the x2, cat, on, mat = 5 of 6 each -> P = R = F = 5/6.
    # rouge2: bigrams pred {the cat, cat sat, sat on, on the, the mat},
    #         ref {the cat, cat lay, lay on, on the, the mat}; shared 3 of 5 -> 0.6.
    # rougeL: LCS "the cat on the mat" = 5 of 6 -> P = R = F = 5/6.
    scores = rouge_scores(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert set(scores) == {"rouge1", "rouge2", "rougeL"}
    assert scores["rouge1"] == pytest.approx(5 / 6, abs=TOL)
    assert scores["rouge2"] == pytest.approx(0.6, abs=TOL)
    assert scores["rougeL"] == pytest.approx(5 / 6, abs=TOL)


def test_rouge_mean_over_two_pairs() -> None:
    # Pair 1 as above (5/6, 0.6, 5/6); pair 2 identical -> (1, 1, 1).
    # Means: rouge1 = (5/6 + 1)/2 = 11/12 = 0.9167; rouge2 = (0.6 + 1)/2 = 0.8;
    # rougeL = 11/12 = 0.9167.
    scores = rouge_scores(
        ["the cat sat on the mat", "hello world"],
        ["the cat lay on the mat", "hello world"],
    )
    assert scores["rouge1"] == pytest.approx(11 / 12, abs=TOL)
    assert scores["rouge2"] == pytest.approx(0.8, abs=TOL)
    assert scores["rougeL"] == pytest.approx(11 / 12, abs=TOL)


def test_rouge_tokenizer_drops_non_ascii() -> None:
    # The default tokenizer replaces characters outside [a-z0-9] with spaces:
    # "naïve" -> [na, ve], the same tokens as "na ve" -> all three scores 1.0.
    scores = rouge_scores(["naïve"], ["na ve"])
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}, abs=TOL)


def test_rouge_empty_input() -> None:
    assert rouge_scores([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_groundedness_share_of_supported_tokens() -> None:
    # answer "the cat sat quietly" -> [cat, sat, quietly];
    # context "A cat sat on the mat." -> {cat, sat, on, mat}; supported 2 of 3 -> 0.6667.
    assert groundedness("the cat sat quietly", "A cat sat on the mat.") == pytest.approx(
        2 / 3, abs=TOL
    )
    # Every token present -> 1.0; none present -> 0.0.
    assert groundedness("Cat, mat!", "the cat on the mat") == 1.0
    assert groundedness("dog", "the cat on the mat") == 0.0


def test_groundedness_empty_answer() -> None:
    # "" and "the" both normalize to no tokens -> 0.0.
    assert groundedness("", "the cat") == 0.0
    assert groundedness("the", "the cat") == 0.0


def test_generation_metrics_by_hand() -> None:
    # Pair 1: "The cat sat on the mat." vs "the cat sat on the mat"
    #   EM: both -> "cat sat on mat" -> 1; F1 = 1.
    #   ROUGE: tokenizer drops "." -> identical token lists -> rouge1 = rouge2 = rougeL = 1.
    # Pair 2: "Paris" vs "Paris, France"
    #   EM: "paris" vs "paris france" -> 0; F1: P = 1/1, R = 1/2 -> 2*0.5/1.5 = 0.6667.
    #   rouge1: P = 1, R = 1/2 -> 0.6667; rouge2: pred has no bigram -> 0;
    #   rougeL: LCS 1 -> P = 1, R = 1/2 -> 0.6667.
    # Means: EM 0.5; F1 (1 + 2/3)/2 = 0.8333; rouge1 0.8333; rouge2 0.5; rougeL 0.8333.
    metrics = generation_metrics(
        ["The cat sat on the mat.", "Paris"],
        ["the cat sat on the mat", "Paris, France"],
    )
    assert metrics == pytest.approx(
        {
            "exact_match": 0.5,
            "token_f1": 5 / 6,
            "rouge1": 5 / 6,
            "rouge2": 0.5,
            "rougeL": 5 / 6,
        },
        abs=TOL,
    )


def test_generation_metrics_empty_lists() -> None:
    assert generation_metrics([], []) == {
        "exact_match": 0.0,
        "token_f1": 0.0,
        "rouge1": 0.0,
        "rouge2": 0.0,
        "rougeL": 0.0,
    }


def test_generation_metrics_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        generation_metrics(["a", "b"], ["a"])


def test_perplexity() -> None:
    # Mean NLL ln(4)*10/10 = ln 4 -> exp(ln 4) = 4.
    assert perplexity(math.log(4) * 10, 10) == pytest.approx(4.0, abs=TOL)
    # Zero NLL -> exp(0) = 1.
    assert perplexity(0.0, 5) == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("tokens", [0, -1])
def test_perplexity_rejects_non_positive_tokens(tokens: int) -> None:
    with pytest.raises(ValueError, match="tokens must be positive"):
        perplexity(1.0, tokens)
