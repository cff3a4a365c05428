"""Decontamination: training records that share a word n-gram with the eval set are dropped.

An eval score means little if the model saw the eval texts (or long pieces of them) in
training. The check is the one used for GPT-3 and later model reports: any shared word n-gram
(lower-cased; n = 8 by default, 13 in the GPT-3 paper, which targets long documents). A text
shorter than n words is compared whole.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.curate.blocks import Outcome, Removed
from tasks.curate.dedup import shingles
from tasks.curate.records import Record

REASON = "overlaps eval set"


def eval_ngrams(evaluation: Iterable[Record], ngram: int) -> dict[str, str]:
    """Every word ``ngram``-gram of the eval records -> the id of the first record holding it."""
    owners: dict[str, str] = {}
    for record in evaluation:
        for gram in shingles(record.full_text, ngram):
            owners.setdefault(gram, record.id)
    return owners


def contamination(text: str, owners: dict[str, str], ngram: int) -> str | None:
    """Why ``text`` is contaminated (the shared n-gram and its eval id), or None."""
    hit = next((g for g in shingles(text, ngram) if g in owners), None)
    if hit is None:
        return None
    return f"shares {ngram}-gram '{hit[:80]}' with eval id {owners[hit]}"


def decontaminate(train: list[Record], evaluation: list[Record], ngram: int) -> Outcome:
    """Drop training records with any word ``ngram``-gram that also occurs in ``evaluation``."""
    owners = eval_ngrams(evaluation, ngram)
    kept, dropped = [], []
    for record in train:
        detail = contamination(record.full_text, owners, ngram)
        if detail is None:
            kept.append(record)
        else:
            dropped.append(Removed(record, "decontaminate", REASON, detail))
    return Outcome(kept=kept, dropped=dropped)
