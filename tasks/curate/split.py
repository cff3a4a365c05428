"""Seeded, stratified train/eval split."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from tasks.curate.records import Record


def stratified_split(
    records: list[Record], eval_fraction: float, seed: int, groups: list[int] | None = None
) -> tuple[list[Record], list[Record]]:
    """Split records into train and eval (each in input order); see ``held_out``."""
    out = held_out([r.label for r in records], eval_fraction, seed, groups)
    train = [r for i, r in enumerate(records) if i not in out]
    evaluation = [r for i, r in enumerate(records) if i in out]
    return train, evaluation


def held_out(
    labels: Sequence[str | None], eval_fraction: float, seed: int, groups: list[int] | None = None
) -> set[int]:
    """Positions to hold out for eval, keeping each label's share in both sides.

    With ``groups`` (a group id per record, e.g. near-duplicate clusters) a group is never
    split: all its records land on the same side, so near duplicates cannot leak between
    train and eval. A group counts under the label of its first record.

    Written by hand rather than with sklearn's ``train_test_split`` because that one refuses
    labels with a single example; here such a label stays in train (it cannot be evaluated).

    Args:
        labels: The label of each record (a missing label counts as one stratum).
        eval_fraction: Share of each label held out, rounded, at least one when a label has two
            or more records.
        seed: Seed for the shuffle; the same inputs and seed give the same split.
        groups: Optional group id per record; a group is kept whole on one side.

    Returns:
        The positions that go to eval.
    """
    groups = groups if groups is not None else list(range(len(labels)))
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    by_label: dict[str | None, list[int]] = defaultdict(list)  # label -> group ids
    sizes: dict[str | None, int] = defaultdict(int)
    for group, indices in members.items():
        label = labels[indices[0]]
        by_label[label].append(group)
        sizes[label] += len(indices)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for label in sorted(by_label, key=str):
        label_groups = by_label[label]
        rng.shuffle(label_groups)
        if sizes[label] < 2:
            continue
        n_eval = min(sizes[label] - 1, max(1, round(sizes[label] * eval_fraction)))
        taken = 0
        for group in label_groups[:-1]:  # the last group always stays in train
            if taken >= n_eval:
                break
            chosen.update(members[group])
            taken += len(members[group])
    return chosen
