"""The curation block protocol: each block keeps, drops or quarantines records and says why.

A block is a function ``list[Record] -> Outcome``. Dropped records are usable but unwanted
(a duplicate, a contaminated or low-quality text); quarantined ones are contradictory or broken
(the same text with two labels). Nothing disappears: ``run_blocks`` checks after every block
that kept + dropped + quarantined equals what went in.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adaptflow.errors import check
from tasks.curate.records import Quarantined, Record, record_rows


@dataclass(frozen=True)
class Removed:
    """A record a block took out, with the block and the reason."""

    record: Record
    block: str
    reason: str  # short and countable, e.g. "near duplicate"
    detail: str = ""  # the specifics, e.g. "of id 17 (Jaccard 0.86)"


@dataclass
class Outcome:
    """What one block did."""

    kept: list[Record]
    dropped: list[Removed] = field(default_factory=list)
    quarantined: list[Removed] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # e.g. redactions per PII type


Block = Callable[[list[Record]], Outcome]


@dataclass
class Funnel:
    """Records remaining after each block, and everything the blocks took out or counted."""

    steps: list[tuple[str, int]] = field(default_factory=list)
    dropped: list[Removed] = field(default_factory=list)
    quarantined: list[Removed] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def run_blocks(
    records: list[Record], blocks: list[tuple[str, Block]], funnel: Funnel | None = None
) -> tuple[list[Record], Funnel]:
    """Run ``blocks`` in order; returns the kept records and the funnel.

    Raises:
        InvariantError: When a block loses or invents a record (a bug, never a data problem).
    """
    funnel = funnel or Funnel()
    if not funnel.steps:
        funnel.steps.append(("read", len(records)))
    for name, block in blocks:
        before = len(records)
        outcome = block(records)
        accounted = len(outcome.kept) + len(outcome.dropped) + len(outcome.quarantined)
        check(accounted == before, f"block {name} lost records: {before} in, {accounted} out")
        records = outcome.kept
        funnel.steps.append((name, len(records)))
        funnel.dropped += outcome.dropped
        funnel.quarantined += outcome.quarantined
        funnel.counts.update(outcome.counts)
    return records, funnel


def removed_row(item: Removed) -> dict[str, Any]:
    """A dropped record as a row of ``dropped.jsonl``: the record, where it was, and why."""
    (row,) = record_rows([item.record])
    return row | {
        "file": item.record.file,
        "line": item.record.line,
        "block": item.block,
        "reason": item.reason,
        "detail": item.detail,
    }


def quarantine_row(item: Removed) -> Quarantined:
    """A quarantined record as a row of ``quarantine.jsonl`` (file, line, reason, raw)."""
    (row,) = record_rows([item.record])
    raw = json.dumps(row, ensure_ascii=False)
    reason = f"{item.reason}: {item.detail}" if item.detail else item.reason
    return Quarantined(item.record.file, item.record.line, reason, raw)
