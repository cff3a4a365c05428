"""Build the summarization example: a docstring's body -> its one-line summary.

    .venv/bin/python examples/docstring-summaries/build_dataset.py [OUT_DIR]

PEP 257 asks every docstring to open with a one-line summary, then a blank line, then the
details; that makes real (source, summary) pairs. The source is the body (everything after the
blank line), the target is the summary line. Members of standard-library modules outside
tiny-t5's pre-training list (``adaptflow.tiny.MODULES``) are used, so the model has not seen
these texts. Everything comes from this Python's standard library: no download.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from pathlib import Path

MODULES = (
    "code",
    "codeop",
    "compileall",
    "contextvars",
    "dis",
    "doctest",
    "filecmp",
    "fileinput",
    "ftplib",
    "linecache",
    "modulefinder",
    "netrc",
    "nntplib",
    "optparse",
    "pdb",
    "pickletools",
    "pkgutil",
    "poplib",
    "py_compile",
    "pyclbr",
    "pydoc",
    "reprlib",
    "runpy",
    "symtable",
    "sysconfig",
    "tabnanny",
    "unittest",
    "unittest.mock",
    "wsgiref.handlers",
    "zipapp",
    "xml.etree.ElementTree",
    "email.message",
    "http.server",
    "http.cookiejar",
    "urllib.request",
    "multiprocessing.pool",
    "concurrent.futures.thread",
    "importlib.metadata",
    "tkinter",
)


def pairs() -> list[dict[str, str]]:
    """(body, summary) pairs from docstrings with a summary line, a blank line and a body."""
    rows: dict[str, dict[str, str]] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        members = [getattr(module, m, None) for m in sorted(dir(module)) if not m.startswith("_")]
        for cls in [m for m in members if inspect.isclass(m)]:
            members += [getattr(cls, m, None) for m in sorted(vars(cls)) if not m.startswith("_")]
        for obj in members:
            doc = inspect.getdoc(obj)
            if not doc or "\n\n" not in doc:
                continue
            summary, body = doc.split("\n\n", 1)
            summary = " ".join(summary.split())
            if not (3 <= len(summary.split()) <= 20) or not (8 <= len(body.split()) <= 150):
                continue
            qualname = getattr(obj, "__qualname__", getattr(obj, "__name__", "?"))
            rows.setdefault(body, {"id": f"{name}.{qualname}", "text": body, "summary": summary})
    return sorted(rows.values(), key=lambda r: r["id"])


def main(out: Path) -> None:
    """Write ``pairs.jsonl`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = pairs()
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs -> {out / 'pairs.jsonl'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data")
