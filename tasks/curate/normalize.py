"""Normalisation: Unicode NFC, mojibake repair, whitespace. Nothing else is rewritten.

Mojibake repair is ftfy's (``fix_text`` with its defaults minus the ones that change meaning
or layout: no quote "uncurling", no width folding, no line-break rewriting), because decoding
text that went through the wrong codec is exactly what ftfy is built and tested for.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import replace

from tasks.curate.blocks import Outcome
from tasks.curate.records import Record

_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newlines
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


def normalize_text(text: str) -> str:
    """Repair mojibake, compose to NFC, collapse runs of spaces, trim; keep paragraph breaks."""
    import ftfy

    config = ftfy.TextFixerConfig(
        uncurl_quotes=False, fix_latin_ligatures=False, fix_character_width=False,
        fix_line_breaks=False, normalization="NFC", explain=False,
    )  # fmt: skip
    fixed = unicodedata.normalize("NFC", ftfy.fix_text(text, config))
    lines = [_SPACES.sub(" ", line).strip() for line in fixed.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def normalize(records: list[Record]) -> Outcome:
    """The normalisation block: never drops; counts how many records changed.

    A conversation's earlier turns and a preference pair's rejected answer are normalised
    like its text and target.
    """
    kept, counts = [], Counter[str]()
    for record in records:
        text = normalize_text(record.text)
        target = normalize_text(record.target) if record.target is not None else None
        rejected = normalize_text(record.rejected) if record.rejected is not None else None
        context = record.context
        if context is not None:
            context = [turn | {"content": normalize_text(turn["content"])} for turn in context]
        changed = (text, target, rejected, context)
        if changed != (record.text, record.target, record.rejected, record.context):
            counts["normalised"] += 1
        kept.append(replace(record, text=text, target=target, rejected=rejected, context=context))
    return Outcome(kept=kept, counts=counts)
