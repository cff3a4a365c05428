"""Decontamination: training records that share a word n-gram with the eval set are dropped.

An eval score means little if the model saw the eval texts (or long pieces of them) in
training. The check is the one used for GPT-3 and later model reports: any shared word n-gram
(lower-cased; n = 8 by default, 13 in the GPT-3 paper, which targets long documents). A text
shorter than n words is compared whole.
"""

from __future__ import annotations

from tasks.curate.blocks import Outcome, Removed
from tasks.curate.dedup import shingles
from tasks.curate.records import Record


def decontaminate(train: list[Record], evaluation: list[Record], ngram: int) -> Outcome:
    """Drop training records with any word ``ngram``-gram that also occurs in ``evaluation``."""
    owners: dict[str, str] = {}
    for record in evaluation:
        for gram in shingles(record.text, ngram):
            owners.setdefault(gram, record.id)
    kept, dropped = [], []
    for record in train:
        hit = next((g for g in shingles(record.text, ngram) if g in owners), None)
        if hit is None:
            kept.append(record)
        else:
            detail = f"shares {ngram}-gram '{hit[:80]}' with eval id {owners[hit]}"
            dropped.append(Removed(record, "decontaminate", "overlaps eval set", detail))
    return Outcome(kept=kept, dropped=dropped)
