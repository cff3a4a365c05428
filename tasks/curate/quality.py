"""Quality heuristics in the spirit of the Gopher and C4 rules, with defaults per task type.

Web-document rules (Rae et al. 2021, "Gopher"; Raffel et al. 2020, "C4") judge crawled pages:
50 to 100,000 words, mean word length 3-10, few symbols, mostly alphabetic words, little
repetition. Applied to a one-line product description or a Unicode character name they would
throw away good data, so the limits depend on the task: labelled examples (classification,
instruction, qa, summarization) only lose empty-ish, gigantic or degenerate-repetitive texts.

Language modelling and retrieval corpora are a team's own documents, not a web crawl, and the
web limits threw good technical documents away: on 700 real AWS CLI example pages
(``benchmarks/quality/curation/aws-examples``) Gopher's limits kept 178 (25%): JSON output and
resource ids made words "long" (236 pages) and lines "repeated" (29: closing braces), shell
lines made words "non-alphabetic" (80), and short examples had under 50 words (129). So the
document rules here are garbage detectors, each set at a level no page of the development
corpora (those AWS pages, 194 pydoc pages of the standard library, 45 python-docs pages, 348
CMake pages) comes near unless it is mostly a blob, and ``bench_quality.py`` reports what each
rule drops on every corpus, the frozen one included:

- a *word* is a whitespace token holding a letter or digit: table borders (``│``), braces and
  operators are layout, not words, and no longer count against a page;
- ``min_words`` 10: an empty-ish page (the shortest development page has 21 words);
- ``max_mean_word_length`` 30: pages that are mostly base64, hex or certificate blobs (the
  development pages' 99th percentile is 25, on AWS's JSON-heavy examples; 9 elsewhere);
- ``min_alpha_word_ratio`` 0.5: number tables and dumps (the lowest percentile: 0.60);
- ``max_symbol_ratio`` 0.1 counts ``#`` and ellipses but not Markdown's heading markers (which
  alone put half of the Markdown pages over Gopher's 0.1);
- repetition by *characters* in repeated lines that hold a letter
  (``max_duplicate_line_chars`` 0.6; Gopher has a character-based variant too) instead of the
  share of repeated lines: a JSON listing repeats ``}`` and ``"State": "available",`` lines
  legitimately (up to 0.55 on AWS's pages); a menu or a log dump repeated over most of a page
  is still caught;
- ``max_top_ngram_ratio`` 0.4 (Gopher: 0.18 for 3-grams): templated API listings reach 0.39.

On the development corpora these drop 4 of 700 AWS pages (three certificate or token blobs,
one JSON output of ellipses) and none of the others.

Every limit can be set in the spec (``curation.quality``); ``None`` switches a rule off.
Written here rather than taken from datatrove because datatrove's filters work on its own
``Document`` pipeline objects and carry its web defaults; the rules themselves are a few lines
each.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

from tasks.curate.blocks import Outcome, Removed
from tasks.curate.records import Record

_TOKEN = re.compile(r"\S+")
_ALNUM = re.compile(r"[^\W_]")  # a letter or digit in any script
_ALPHA = re.compile(r"[^\W\d_]")  # a letter in any script
_SYMBOLS = ("#", "...", "…")
#: Markdown ATX heading markers, which are not the hash-tag spam the symbol rule is about.
_HEADING_MARK = re.compile(r"^[ \t]{0,3}#{1,6}(?=[ \t])", re.MULTILINE)


def words_of(text: str) -> list[str]:
    """Whitespace tokens that hold a letter or digit (punctuation-only tokens are layout)."""
    return [token for token in _TOKEN.findall(text) if _ALNUM.search(token)]


@dataclass(frozen=True)
class QualityRules:
    """Limits (None: rule off)."""

    min_words: int | None = 1
    max_words: int | None = 20_000
    min_mean_word_length: float | None = None
    max_mean_word_length: float | None = None
    max_symbol_ratio: float | None = None  # "#" and ellipses per word
    min_alpha_word_ratio: float | None = None  # words with at least one letter
    max_duplicate_line_ratio: float | None = 0.5  # lines (with a letter) repeating an earlier one
    max_duplicate_line_chars: float | None = None  # characters in such repeated lines
    max_top_ngram_ratio: float | None = 0.5  # characters in the most frequent word 3-gram

    def as_dict(self) -> dict[str, float | int | None]:
        """The limits as a dict (for the report)."""
        return asdict(self)


#: Labelled examples: short is fine, only degenerate text goes.
EXAMPLE_RULES = QualityRules()
#: Documents (language modelling, retrieval corpora): garbage detectors (see the module doc).
DOCUMENT_RULES = QualityRules(
    min_words=10,
    max_words=100_000,
    min_mean_word_length=3,
    max_mean_word_length=30,
    max_symbol_ratio=0.1,
    min_alpha_word_ratio=0.5,
    max_duplicate_line_ratio=None,
    max_duplicate_line_chars=0.6,
    max_top_ngram_ratio=0.4,
)


def default_rules(task: str) -> QualityRules:
    """The default limits for a task type."""
    return DOCUMENT_RULES if task in ("language-modeling", "retrieval-qa") else EXAMPLE_RULES


#: Repetition is only measured on texts at least this long (a short name can repeat a word).
MIN_WORDS_FOR_REPETITION = 20


def _top_ngram_ratio(words: list[str], n: int = 3) -> float:
    """Share of characters inside occurrences of the most frequent word n-gram (Gopher)."""
    if len(words) < n + 1:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    covered: set[int] = set()
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) == gram:
            covered.update(range(i, i + n))
    total = sum(len(w) for w in words)
    return sum(len(words[i]) for i in covered) / total if total else 0.0


def _repeated_line_chars(lines: list[str]) -> float:
    """Share of characters in lines that repeat an earlier line (Gopher's character variant)."""
    seen: set[str] = set()
    repeated = 0
    for line in lines:
        if line in seen:
            repeated += len(line)
        seen.add(line)
    total = sum(len(line) for line in lines)
    return repeated / total if total else 0.0


def quality_problem(text: str, rules: QualityRules) -> tuple[str, str] | None:
    """The first rule ``text`` breaks: (rule, measured detail); None if it passes."""
    words = words_of(text)
    n = len(words)
    if rules.min_words is not None and n < rules.min_words:
        return "too few words", f"{n} < {rules.min_words}"
    if rules.max_words is not None and n > rules.max_words:
        return "too many words", f"{n} > {rules.max_words}"
    mean = sum(len(w) for w in words) / n if n else 0.0
    if rules.min_mean_word_length is not None and mean < rules.min_mean_word_length:
        return "short words", f"mean word length {mean:.1f} < {rules.min_mean_word_length}"
    if rules.max_mean_word_length is not None and mean > rules.max_mean_word_length:
        return "long words", f"mean word length {mean:.1f} > {rules.max_mean_word_length}"
    if rules.max_symbol_ratio is not None and n:
        body = _HEADING_MARK.sub("", text)
        ratio = sum(body.count(s) for s in _SYMBOLS) / n
        if ratio > rules.max_symbol_ratio:
            return "symbols", f"symbol-to-word ratio {ratio:.2f} > {rules.max_symbol_ratio}"
    if rules.min_alpha_word_ratio is not None and n:
        ratio = sum(1 for w in words if _ALPHA.search(w)) / n
        if ratio < rules.min_alpha_word_ratio:
            return (
                "non-alphabetic",
                f"alphabetic-word ratio {ratio:.2f} < {rules.min_alpha_word_ratio}",
            )
    if n < MIN_WORDS_FOR_REPETITION:
        return None
    lines = [line.strip() for line in text.splitlines() if _ALPHA.search(line)]
    if rules.max_duplicate_line_ratio is not None and len(lines) > 1:
        ratio = 1 - len(set(lines)) / len(lines)
        if ratio > rules.max_duplicate_line_ratio:
            return (
                "repeated lines",
                f"duplicate-line ratio {ratio:.2f} > {rules.max_duplicate_line_ratio}",
            )
    if rules.max_duplicate_line_chars is not None and len(lines) > 1:
        ratio = _repeated_line_chars(lines)
        if ratio > rules.max_duplicate_line_chars:
            return (
                "repeated lines",
                f"characters in repeated lines {ratio:.2f} > {rules.max_duplicate_line_chars}",
            )
    if rules.max_top_ngram_ratio is not None:
        ratio = _top_ngram_ratio([w.lower() for w in words])
        if ratio > rules.max_top_ngram_ratio:
            return (
                "repeated n-grams",
                f"top word 3-gram covers {ratio:.2f} > {rules.max_top_ngram_ratio}",
            )
    return None


def quality_filter(records: list[Record], rules: QualityRules) -> Outcome:
    """Drop records that break a rule; the countable reason names the rule."""
    kept, dropped = [], []
    for record in records:
        problem = quality_problem(record.text, rules)
        if problem is None:
            kept.append(record)
        else:
            rule, detail = problem
            dropped.append(Removed(record, "quality", f"quality: {rule}", detail))
    return Outcome(kept=kept, dropped=dropped)
