"""The documentation of standard-library modules, read in a fresh interpreter.

Run as a script (``python -I -S stdlib_docs.py NAME ...``), it prints a JSON list with one text
per module. ``adaptflow.tiny`` runs it that way because the text read inside a busy process
depends on what that process imported: libraries patch standard-library members (one replaces
``inspect.getfile`` with an undocumented wrapper), so the tiny models' pre-training text, and so
the models, would depend on who built them. ``-I -S`` reads it with nothing but the standard
library loaded: the same text for every caller of one Python build (version and platform).

Standard library only: this file runs without ``site``, so it cannot import adaptflow or any
installed package.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys


def module_text(name: str) -> str:
    """The documentation of one standard-library module: its docstring and its members'."""
    module = importlib.import_module(name)
    parts = [inspect.cleandoc(module.__doc__ or "")]
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for member in sorted(public):
        value = getattr(module, member, None)
        # a package's submodules are attributes only once something imported them, so taking
        # them would make the text (and the model) depend on what the process imported before
        if inspect.ismodule(value) or isinstance(value, (str, int, float, bytes)):
            continue
        doc = inspect.getdoc(value)
        if doc:
            parts.append(f"{member}: {doc}")
    return "\n\n".join(p.strip() for p in parts if p.strip())


if __name__ == "__main__":
    json.dump([module_text(name) for name in sys.argv[1:]], sys.stdout)  # ASCII-escaped
