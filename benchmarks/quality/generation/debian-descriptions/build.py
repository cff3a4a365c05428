"""Build the frozen generation set: a Debian package's long description -> its synopsis line.

Source: ``/var/lib/dpkg/status`` of this machine (the packages installed in the image), whose
``Description`` field is the one-line synopsis followed by the extended description, both
written by the package's maintainers (Debian Policy 5.6.13). The rows are summarization pairs:
``text`` is the extended description (continuation lines unwrapped, ``.`` paragraph breaks kept
as blank lines, cut at 120 words), ``summary`` the synopsis. Rules:

- skip packages whose extended description has fewer than 12 words;
- keep the first package (in name order) of each identical extended description (library
  variants share them) and of each identical synopsis;
- the id is the package name (it often names the answer: never show ids to a model).

Run: ``python build.py`` (writes ``pairs.jsonl`` next to this file).
"""

from __future__ import annotations

import json
from pathlib import Path

STATUS = Path("/var/lib/dpkg/status")
OUT = Path(__file__).with_name("pairs.jsonl")
MIN_WORDS = 12
MAX_WORDS = 120


def stanzas(text: str) -> list[dict[str, str]]:
    """The status file's stanzas as field -> value (continuation lines joined with newlines)."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def extended(lines: list[str]) -> str:
    """Debian's extended description: ' .' is a blank line, other lines are unwrapped."""
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        body = line[1:] if line.startswith(" ") else line
        if body.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(body.strip())
    text = "\n\n".join(" ".join(p) for p in paragraphs if p)
    words = text.split(" ")
    return " ".join(words[:MAX_WORDS]) if len(text.split()) > MAX_WORDS else text


def main() -> None:
    rows = []
    seen_text: set[str] = set()
    seen_summary: set[str] = set()
    packages = sorted(stanzas(STATUS.read_text(encoding="utf-8")), key=lambda s: s["Package"])
    for stanza in packages:
        if "Description" not in stanza:
            continue
        synopsis, *rest = stanza["Description"].split("\n")
        text = extended(rest)
        if len(text.split()) < MIN_WORDS or text in seen_text or synopsis in seen_summary:
            continue
        seen_text.add(text)
        seen_summary.add(synopsis)
        rows.append({"id": stanza["Package"], "text": text, "summary": synopsis.strip()})
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    print(f"{len(rows)} pairs from {len(packages)} packages -> {OUT}")


if __name__ == "__main__":
    main()
