"""Build the continued pre-training example: Python source code as the new domain language.

    .venv/bin/python examples/stdlib-code/build_dataset.py [OUT_DIR]

``tiny-gpt`` is pre-trained on English docstrings of 95 standard-library modules
(``adaptflow.tiny.MODULES``); Python *code* is a language it has barely seen. The domain
corpus is the code of top-level functions and classes of pure-Python standard-library modules,
with their docstrings removed (so it is code, not more English), one record per definition.
The general text (``data.general``: replay and the forgetting check) is the docstrings of other
standard-library modules, English of the kind the base model knows, none of it in its
pre-training text. Everything comes from this Python's own standard library: no download.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import sys
from pathlib import Path

#: Pure-Python modules whose code is the domain corpus.
CODE_MODULES = (
    "argparse",
    "calendar",
    "configparser",
    "csv",
    "dataclasses",
    "difflib",
    "fractions",
    "gettext",
    "glob",
    "heapq",
    "ipaddress",
    "shlex",
    "statistics",
    "string",
    "textwrap",
    "tokenize",
    "zipfile",
    "pprint",
    "tarfile",
    "shutil",
)
#: Modules whose docstrings are the general text (none is in tiny-gpt's pre-training list).
GENERAL_MODULES = (
    "cgitb",
    "chunk",
    "code",
    "codeop",
    "compileall",
    "contextvars",
    "dis",
    "doctest",
    "filecmp",
    "fileinput",
    "formatter",
    "ftplib",
    "genericpath",
    "imghdr",
    "keyword",
    "linecache",
    "modulefinder",
    "netrc",
    "nntplib",
    "numbers",
    "opcode",
    "optparse",
    "pdb",
    "pickletools",
    "pkgutil",
    "poplib",
    "posixpath",
    "py_compile",
    "pyclbr",
    "pydoc",
    "reprlib",
    "rlcompleter",
    "runpy",
    "sndhdr",
    "stringprep",
    "symtable",
    "sysconfig",
    "tabnanny",
    "telnetlib",
    "unittest",
    "uu",
    "webbrowser",
    "wsgiref",
    "xdrlib",
    "zipapp",
    "zipimport",
)


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]


def code_records(limit_chars: int = 4000) -> list[dict[str, str]]:
    """One record per top-level function or class (source without docstrings)."""
    records = []
    for name in CODE_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        for node in ast.parse(source).body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            _strip_docstrings(node)
            text = ast.unparse(node)
            if 80 <= len(text) <= limit_chars:
                records.append({"id": f"{name}.{node.name}", "text": text})
    return records


def general_records() -> list[dict[str, str]]:
    """One record per documented member of the general modules (English docstrings)."""
    records = []
    for name in GENERAL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # removed from newer Pythons (cgitb, imghdr, ...): skip, not fail
        members = [("", module)] + [(m, getattr(module, m, None)) for m in sorted(dir(module))]
        for member, obj in members:
            if member.startswith("_"):
                continue
            doc = inspect.getdoc(obj)
            if doc and 60 <= len(doc) <= 3000 and getattr(obj, "__module__", name) == name:
                records.append({"id": f"{name}.{member}".rstrip("."), "text": doc})
    unique = {r["text"]: r for r in records}
    return list(unique.values())


def write(path: Path, rows: list[dict[str, str]]) -> None:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(out: Path) -> None:
    """Write ``code.jsonl`` and ``general.jsonl`` under ``out``."""
    code, general = code_records(), general_records()
    write(out / "code.jsonl", code)
    write(out / "general.jsonl", general)
    print(f"{len(code)} code records, {len(general)} general records -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data")
