"""Rebuild ``data/preference.jsonl``: preference pairs for DPO on the same 600 characters.

For every record of ``data/pairs.jsonl`` (the same seeded sample, rebuilt here from the Unicode
database rather than read back), one pair: the same instruction as the prompt, the correct
lowercase name as ``chosen``, and as ``rejected`` the lowercase name of a neighbouring letter of
the same script, the kind of mistake the SFT model makes (it learns "GREEK SMALL LETTER ..."
and then names the wrong letter):

    {"id": "U+0042", "prompt": "Name the lowercase form of: LATIN CAPITAL LETTER B",
     "chosen": "LATIN SMALL LETTER B", "rejected": "LATIN SMALL LETTER C"}

The neighbour is the previous or the next pair (in code point order, over every BMP pair, not
only the sample) whose name starts with the same word (LATIN, GREEK, CYRILLIC, CIRCLED, ...),
the side picked by ``random.Random(1)``; a script with one pair takes the nearest pair of any
script. Regenerate offline with:

    python examples/unicode-lowercase/build_preferences.py

The output depends on the Unicode version of the Python used (3.11 -> Unicode 14.0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from build_dataset import LIMIT, pairs

SEED = 1  # picks the neighbour's side; the sample itself is build_dataset's (Random(0))


def script(name: str) -> str:
    """The first word of a character name: its script, or a family (CIRCLED, ROMAN, ...)."""
    return name.split(" ", 1)[0]


def _nearest(
    rows: list[dict[str, str]], at: int, step: int, target: str, any_script: bool = False
) -> dict[str, str] | None:
    """The closest pair from ``at`` in direction ``step`` (wrapping when ``any_script``) with
    another lowercase letter of the same script (KELVIN SIGN and K share theirs: skipped)."""
    size = len(rows)
    for distance in range(1, size):
        i = at + step * distance
        if not any_script and not 0 <= i < size:
            return None
        other = rows[i % size]
        if other["target"] != target and (any_script or script(other["target"]) == script(target)):
            return other
    return None


def preferences() -> list[dict[str, str]]:
    """The sample of ``build_dataset`` as preference pairs, in its order."""
    rows = pairs()  # every BMP pair, in code point order
    sample = sorted(random.Random(0).sample(rows, min(LIMIT, len(rows))), key=lambda r: r["id"])
    rng = random.Random(SEED)
    index = {row["id"]: i for i, row in enumerate(rows)}
    out = []
    for row in sample:
        at = index[row["id"]]
        before = _nearest(rows, at, -1, row["target"])
        after = _nearest(rows, at, +1, row["target"])
        side = rng.random()  # drawn for every record, so one record never shifts the others
        options = [r for r in (before, after) if r is not None]
        if not options:  # the only letter of its script: the nearest pair of any script
            options = [r for r in [_nearest(rows, at, -1, row["target"], any_script=True)] if r]
        wrong = options[0] if len(options) == 1 else options[int(side < 0.5)]
        out.append(
            {
                "id": row["id"],
                "prompt": row["text"],
                "chosen": row["target"],
                "rejected": wrong["target"],
            }
        )
    return out


def main() -> None:
    """Write the pairs to ``data/preference.jsonl``."""
    rows = preferences()
    out = Path(__file__).parent / "data" / "preference.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"{len(rows)} preference pairs -> {out}")


if __name__ == "__main__":
    main()
