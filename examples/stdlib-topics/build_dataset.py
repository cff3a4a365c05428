#!/usr/bin/env python3
"""Build a small labelled text-classification dataset from stdlib docstrings.

Text  = first paragraph of the docstring of a public function, class or
        method in a standard-library module.
Label = the topic of the module the member comes from.

Stdlib only, deterministic. Writes ``data/topics.jsonl`` next to this file:

    python3 build_dataset.py

Per-label counts are printed to stderr.
"""

import importlib
import inspect
import json
import os
import random
import re
import sys

# label -> modules walked for that label.
TOPICS = {
    "filesystem": [
        "os",
        "os.path",
        "shutil",
        "pathlib",
        "glob",
        "fnmatch",
        "tempfile",
        "filecmp",
        "stat",
        "zipfile",
        "tarfile",
    ],
    "network": [
        "socket",
        "ssl",
        "http.client",
        "http.server",
        "urllib.request",
        "urllib.parse",
        "smtplib",
        "ftplib",
        "ipaddress",
        "imaplib",
        "poplib",
        "socketserver",
    ],
    "text": [
        "string",
        "re",
        "textwrap",
        "difflib",
        "unicodedata",
        "codecs",
        "html",
        "html.parser",
    ],
    "math": [
        "math",
        "cmath",
        "statistics",
        "fractions",
        "decimal",
        "random",
        "numbers",
    ],
    "concurrency": [
        "threading",
        "multiprocessing",
        "asyncio",
        "concurrent.futures",
        "queue",
        "sched",
        "selectors",
    ],
}

# Implementation modules whose members are re-exported by a topic's modules
# (C accelerators and platform back-ends). A member counts as belonging to a
# topic if its __module__ is one of the topic's modules, a submodule of one,
# or one of these aliases.
IMPL_ALIASES = {
    "filesystem": ["posix", "nt", "posixpath", "ntpath", "genericpath", "_stat"],
    "network": ["_socket", "_ssl"],
    "text": ["_string", "_sre", "_codecs"],
    "math": ["_random", "_decimal", "_pydecimal", "_statistics"],
    "concurrency": ["_thread", "_asyncio", "_queue", "_multiprocessing"],
}

CAP_PER_LABEL = 160
MIN_CHARS = 25
SAMPLE_SEED = 13
SHUFFLE_SEED = 7

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_PATH = os.path.join(HERE, "data", "topics.jsonl")

# A line that is only a call signature, e.g. "gethostname() -> string",
# "socket.recv(buffersize[, flags]) -> data" or a "-> result" continuation.
_SIG_START = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\(|->)")


def belongs(modname, label):
    if not modname:
        return False
    if modname in IMPL_ALIASES[label]:
        return True
    return any(modname == m or modname.startswith(m + ".") for m in TOPICS[label])


def member_module(obj):
    """__module__ of obj; for bound C methods fall back to the owner's type."""
    mod = getattr(obj, "__module__", None)
    if mod is None and inspect.isbuiltin(obj):
        owner = getattr(obj, "__self__", None)
        if owner is not None and not inspect.ismodule(owner):
            mod = type(owner).__module__
    return mod if isinstance(mod, str) else None


def is_signature_line(line, name):
    line = line.strip()
    if not line:
        return False
    if line.startswith("->"):
        return True
    # "name(" or "prefix.name(" at the start of the line.
    if re.match(r"^(?:[\w.]+\.)?" + re.escape(name) + r"\(", line):
        return True
    # Any other bare call-signature line ending in ")" or "-> something".
    return (
        bool(_SIG_START.match(line))
        and (line.endswith(")") or "->" in line or line.endswith("]"))
        and not line.endswith(".")
    )


def first_paragraph(doc, name):
    """First non-signature paragraph of doc, whitespace collapsed."""
    paras = [p for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    for para in paras:
        lines = para.splitlines()
        # Drop leading signature-only lines; if something is left, use it,
        # otherwise fall through to the next paragraph.
        i = 0
        while i < len(lines) and is_signature_line(lines[i], name):
            i += 1
        rest = " ".join(lines[i:]).split()
        if rest:
            return " ".join(rest)
        # Paragraph was signature-only: try the next one.
    return ""


def own_doc(obj):
    """Docstring that obj defines itself (not one inherited via getdoc)."""
    raw = getattr(obj, "__doc__", None)
    if not isinstance(raw, str) or not raw.strip():
        return None
    return inspect.getdoc(obj)


def collect(label, modname):
    mod = importlib.import_module(modname)
    records = []

    def add(rec_id, obj, name):
        doc = own_doc(obj)
        if not doc:
            return
        text = first_paragraph(doc, name)
        if len(text) < MIN_CHARS:
            return
        records.append({"id": rec_id, "text": text, "label": label})

    for name, obj in inspect.getmembers(mod):
        if name.startswith("_"):
            continue
        is_cls = inspect.isclass(obj)
        if not (
            is_cls or inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj)
        ):
            continue
        if not belongs(member_module(obj), label):
            continue
        add(f"{modname}.{name}", obj, name)
        if not is_cls:
            continue
        # Methods defined in the class body itself (not inherited).
        for mname in sorted(vars(obj)):
            if mname.startswith("_"):
                continue
            raw = vars(obj)[mname]
            if isinstance(raw, (staticmethod, classmethod)):
                raw = raw.__func__
            if not (
                inspect.isfunction(raw) or inspect.ismethoddescriptor(raw) or inspect.isbuiltin(raw)
            ):
                continue
            if inspect.isdatadescriptor(raw):  # getset/member descriptors
                continue
            add(f"{modname}.{name}.{mname}", raw, mname)
    return records


def main():
    by_id = {}
    for label in sorted(TOPICS):
        for modname in TOPICS[label]:
            try:
                recs = collect(label, modname)
            except ImportError as exc:
                print(f"skip {modname}: {exc}", file=sys.stderr)
                continue
            for rec in recs:
                by_id.setdefault(rec["id"], rec)

    records = sorted(by_id.values(), key=lambda r: (r["id"], r["label"]))

    # Exact dedup on text; a text seen under two labels is dropped entirely.
    labels_for_text = {}
    for rec in records:
        labels_for_text.setdefault(rec["text"], set()).add(rec["label"])
    seen = set()
    deduped = []
    for rec in records:
        t = rec["text"]
        if len(labels_for_text[t]) > 1 or t in seen:
            continue
        seen.add(t)
        deduped.append(rec)

    final = []
    for label in sorted(TOPICS):
        recs = [r for r in deduped if r["label"] == label]
        if len(recs) > CAP_PER_LABEL:
            recs = random.Random(SAMPLE_SEED).sample(recs, CAP_PER_LABEL)
            recs.sort(key=lambda r: r["id"])
        final.extend(recs)
        print(f"{label}: {len(recs)}", file=sys.stderr)
    random.Random(SHUFFLE_SEED).shuffle(final)
    print(f"total: {len(final)}", file=sys.stderr)

    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="utf-8", newline="\n") as fh:
        for rec in final:
            fh.write(
                json.dumps(
                    {"id": rec["id"], "text": rec["text"], "label": rec["label"]},
                    ensure_ascii=False,
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
