"""Rebuild ``data/pairs.jsonl``: "lowercase this Unicode character name" instruction pairs.

For every character of the Basic Multilingual Plane whose lowercase form is a different single
character with a name (per the Unicode database CPython ships), one record asks for the lowercase
form's name:

    {"id": "U+0042", "text": "Name the lowercase form of: LATIN CAPITAL LETTER B",
     "target": "LATIN SMALL LETTER B"}

The answer is mostly a copy of the question with one or two words changed (CAPITAL -> SMALL,
a script-specific variant for some alphabets), which a tiny decoder can learn in a minute on a
CPU and cannot do without training. Regenerate offline with:

    python examples/unicode-lowercase/build_dataset.py

The output depends on the Unicode version of the Python used (3.11 -> Unicode 14.0).
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

LIMIT = 600  # a sample keeps the demo to about a minute of training on two CPU cores


def pairs() -> list[dict[str, str]]:
    """Every (uppercase name, lowercase name) pair of the BMP, as records."""
    rows = []
    for code in range(0x10000):
        char = chr(code)
        lower = char.lower()
        if lower == char or len(lower) != 1:
            continue
        name, lower_name = unicodedata.name(char, ""), unicodedata.name(lower, "")
        if name and lower_name:
            rows.append(
                {
                    "id": f"U+{code:04X}",
                    "text": f"Name the lowercase form of: {name}",
                    "target": lower_name,
                }
            )
    return rows


def main() -> None:
    """Write a seeded sample of the pairs to ``data/pairs.jsonl``."""
    rows = pairs()
    sample = sorted(random.Random(0).sample(rows, min(LIMIT, len(rows))), key=lambda r: r["id"])
    out = Path(__file__).parent / "data" / "pairs.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in sample), encoding="utf-8")
    print(f"{len(sample)} of {len(rows)} pairs -> {out}")


if __name__ == "__main__":
    main()
