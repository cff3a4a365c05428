"""Preference pairs: a pair whose two answers are the same teaches nothing, so it is dropped.

DPO-style losses compare the chosen and the rejected answer; when they are equal the pair has
no preference in it (its gradient is zero). The answers are compared normalised (NFC,
mojibake, whitespace), so pairs that differ only in spacing go too; the block runs after PII
redaction, so two answers that differed only in an e-mail address are equal as trained on.
"""

from __future__ import annotations

from tasks.curate.blocks import Outcome, Removed
from tasks.curate.normalize import normalize_text
from tasks.curate.records import Record

REASON = "chosen equals rejected"


def chosen_equals_rejected(records: list[Record]) -> Outcome:
    """Drop every preference pair whose chosen answer equals its rejected one (normalised).

    Records without a rejected answer are kept as they are.
    """
    kept, dropped = [], []
    for record in records:
        if (
            record.rejected is not None
            and record.target is not None
            and normalize_text(record.target) == normalize_text(record.rejected)
        ):
            detail = "the two answers are the same after normalisation"
            dropped.append(Removed(record, "chosen_equals_rejected", REASON, detail))
        else:
            kept.append(record)
    return Outcome(kept=kept, dropped=dropped)
