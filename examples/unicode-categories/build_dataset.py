"""Build data/chars.jsonl: Unicode character names labelled with their general category.

Text that every Python install has: ``unicodedata.name(ch)`` from the Unicode Character Database
that CPython ships (Unicode 14.0.0 in Python 3.11), label = ``unicodedata.category(ch)`` mapped to
a readable name. Deterministic: ``python3 build_dataset.py`` rewrites the same file.
"""

import json
import random
import sys
import unicodedata
from pathlib import Path

LABELS = {
    "Lu": "uppercase-letter",
    "Ll": "lowercase-letter",
    "Nd": "decimal-digit",
    "Sm": "math-symbol",
    "So": "other-symbol",
    "Po": "punctuation",
}
PER_LABEL = 130


def main() -> None:
    pools: dict[str, list[dict[str, str]]] = {label: [] for label in LABELS.values()}
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        label = LABELS.get(unicodedata.category(ch))
        name = unicodedata.name(ch, "")
        if label and name:
            pools[label].append({"id": f"U+{code:04X}", "text": name, "label": label})
    rng = random.Random(2026)
    rows = []
    for label in sorted(pools):
        rows += rng.sample(pools[label], min(PER_LABEL, len(pools[label])))
    rng.shuffle(rows)
    out = Path(__file__).resolve().parent / "data" / "chars.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"unicode {unicodedata.unidata_version}: {len(rows)} records -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
