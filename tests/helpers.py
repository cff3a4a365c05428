"""Shared test helpers: data builders (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from tasks.curate.pii import luhn_valid
from tasks.curate.records import Record

REPO = Path(__file__).resolve().parents[1]


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


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m adaptflow ARGS`` from the repository root, in this session's environment."""
    return subprocess.run(
        [sys.executable, "-m", "adaptflow", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        input=stdin,
        timeout=600,
        cwd=REPO,
    )


#: A four-document knowledge folder (two .md, two .txt), each with one obvious topic.
KNOWLEDGE = {
    "tea.md": "# Tea\n\nGreen tea is steamed or pan-fired soon after picking.\n\n"
    "Black tea leaves are fully oxidised before drying.",
    "bikes.md": "# Bicycles\n\nA derailleur moves the chain between sprockets.\n\n"
    "Disc brakes clamp a rotor fixed to the wheel hub.",
    "bees.txt": "Honey bees communicate the direction of flowers with a waggle dance.\n\n"
    "A colony has one queen, thousands of workers and a few drones.",
    "tides.txt": "Tides are caused mainly by the gravity of the Moon.\n\n"
    "Spring tides happen when the Sun and Moon line up.",
}


def write_knowledge(folder: Path, documents: dict[str, str] = KNOWLEDGE) -> Path:
    """Write ``documents`` (relative path -> text) under ``folder``; returns ``folder``."""
    for name, text in documents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def missing_dependency(reason: str) -> None:
    """Skip a test whose outside dependency (a Debian package, a browser) is not installed.

    ``.ci/run`` installs those packages and sets ``ADAPTFLOW_REQUIRE_SERVERS=1``: there the
    same condition fails the test, so CI cannot go green by skipping it.
    """
    import pytest

    if os.environ.get("ADAPTFLOW_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason} (ADAPTFLOW_REQUIRE_SERVERS=1: .ci/run should have installed it)")
    pytest.skip(reason)
