"""Seeded, stratified train/eval split."""

from __future__ import annotations

import random
from collections import defaultdict

from tasks.curate.records import Record


def stratified_split(
    records: list[Record], eval_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Split records into train and eval, keeping each label's share in both.

    Written by hand rather than with sklearn's ``train_test_split`` because that one refuses
    labels with a single example; here such a label stays in train (it cannot be evaluated).

    Args:
        records: Labelled records (a missing label counts as one stratum).
        eval_fraction: Share of each label held out, rounded, at least one when a label has two
            or more records.
        seed: Seed for the shuffle; the same inputs and seed give the same split.

    Returns:
        (train, eval), each in input order.
    """
    by_label: dict[str | None, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_label[record.label].append(index)
    rng = random.Random(seed)
    held_out: set[int] = set()
    for label in sorted(by_label, key=str):
        indices = by_label[label]
        rng.shuffle(indices)
        if len(indices) < 2:
            continue
        n_eval = min(len(indices) - 1, max(1, round(len(indices) * eval_fraction)))
        held_out.update(indices[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held_out]
    evaluation = [r for i, r in enumerate(records) if i in held_out]
    return train, evaluation
