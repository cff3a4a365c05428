"""Shared test helpers: data builders (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tasks.curate.pii import luhn_valid
from tasks.curate.records import Record


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON lines (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def built_corpus(seed: int = 7, bases: int = 120) -> list[Record]:
    """Random 100-word documents, each with 0-3 edited copies (some near, some not)."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    records = []
    for b in range(bases):
        words = rng.choices(vocabulary, k=100)
        records.append(Record(id=f"{b}", text=" ".join(words), label=str(b % 3)))
        for c in range(rng.randint(0, 3)):
            copy = list(words)
            for _ in range(rng.choice([1, 2, 8])):  # 1-2 edits: near (J >= 0.8); 8: not
                copy[rng.randrange(len(copy))] = rng.choice(vocabulary)
            records.append(Record(id=f"{b}.{c}", text=" ".join(copy), label=str(b % 3)))
    return records


def _luhn_complete(prefix: str) -> str:
    for last in "0123456789":
        if luhn_valid(prefix + last):
            return prefix + last
    raise AssertionError


def pii_canaries(seed: int = 3, per_type: int = 100) -> list[tuple[str, str]]:
    """(kind, value) canaries in varied but realistic formats."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    alnum = letters + letters.upper() + "0123456789"
    out = []
    for i in range(per_type):
        user = "".join(rng.choices(letters, k=rng.randint(3, 9))) + rng.choice(["", ".x", "_7"])
        domain = "".join(rng.choices(letters, k=rng.randint(3, 8)))
        out.append(("email", f"{user}@{domain}.{rng.choice(['com', 'org', 'co.uk', 'io'])}"))
        d = [str(rng.randint(0, 9)) for _ in range(10)]
        formats = [
            f"({d[0]}{d[1]}{d[2]}) {''.join(d[3:6])}-{''.join(d[6:])}",
            f"+1 {''.join(d[:3])}-{''.join(d[3:6])}-{''.join(d[6:])}",
            f"+44 20 {''.join(d[:4])} {''.join(d[4:8])}",
            f"{''.join(d[:3])}.{''.join(d[3:6])}.{''.join(d[6:])}",
        ]
        out.append(("phone", formats[i % len(formats)]))
        if i % 2:
            ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        else:
            ip = ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))
        out.append(("ip_address", ip))
        card = _luhn_complete(
            rng.choice(["4", "51", "37", "6011"])
            + "".join(
                rng.choices("0123456789", k=15 - len(rng.choice(["4", "51", "37", "6011"])) + 0)
            )
        )
        if i % 3 == 0:
            card = " ".join(card[k : k + 4] for k in range(0, len(card), 4))
        out.append(("card_number", card))
        keys = [
            "sk-" + "".join(rng.choices(alnum, k=40)),
            "ghp_" + "".join(rng.choices(alnum, k=36)),
            "AKIA" + "".join(rng.choices(letters.upper() + "0123456789", k=16)),
            "hf_" + "".join(rng.choices(alnum, k=34)),
        ]
        out.append(("api_key", keys[i % len(keys)]))
    return out
