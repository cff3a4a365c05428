"""Rebuild ``knowledge/``: one Markdown page per Python standard-library module.

Each page is the module's own documentation as shipped with CPython (its docstring and the
first paragraph of each public function's and class's docstring), under headings, so the
example's knowledge is real documentation that anyone can regenerate offline:

    python examples/python-docs/build_knowledge.py

The output depends on the Python version (3.11 here); the committed pages were built with
CPython 3.11.7. ``questions.jsonl`` was written by hand against these pages.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "concurrent.futures", "contextlib",
    "csv", "dataclasses", "datetime", "difflib", "fnmatch", "fractions", "functools", "gzip",
    "hashlib", "heapq", "hmac", "itertools", "json", "logging", "lzma", "math", "pathlib",
    "pickle", "random", "re", "secrets", "shlex", "shutil", "sqlite3", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "unicodedata",
    "urllib.parse", "uuid", "weakref", "zipfile", "zlib",
)  # fmt: skip
MAX_MEMBERS = 25


def _first_paragraph(doc: str) -> str:
    return inspect.cleandoc(doc).split("\n\n")[0].strip()


def page(name: str) -> str:
    """The Markdown page of module ``name``."""
    module = importlib.import_module(name)
    lines = [f"# {name}", "", inspect.cleandoc(module.__doc__ or "").strip(), ""]
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    members = []
    for member in sorted(public):
        obj = getattr(module, member, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        home = (getattr(obj, "__module__", None) or name).lstrip("_").split(".")[0]
        if home != name.split(".")[0]:  # re-exported from elsewhere
            continue
        if obj.__doc__:
            members.append((member, obj))
    for member, obj in members[:MAX_MEMBERS]:
        kind = "class" if inspect.isclass(obj) else "function"
        lines += [f"## {name}.{member} ({kind})", "", _first_paragraph(obj.__doc__), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    """Write every page under ``knowledge/`` next to this script."""
    out = Path(__file__).parent / "knowledge"
    out.mkdir(exist_ok=True)
    for name in MODULES:
        (out / f"{name}.md").write_text(page(name), encoding="utf-8")


if __name__ == "__main__":
    main()
