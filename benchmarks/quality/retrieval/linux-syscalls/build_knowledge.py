#!/usr/bin/env python3
"""Render the Linux man-pages section 2 (system calls) into one Markdown file per page.

Deterministic and re-runnable; stdlib only. Reads /usr/share/man/man2/*.2.gz (regular files
only: symlinks and `.so` redirect stubs are skipped), renders each page with

    MANWIDTH=80 LC_ALL=C.UTF-8 man --nh --nj -l PAGE | col -bx

and writes knowledge/<name>.md. See PROVENANCE.md for the rules.

Before rendering, marker lines are inserted into a temporary copy of the roff source around
no-fill regions (.nf/.fi, .EX/.EE) and tbl tables (.TS/.TE), so that code, synopses and tables
can be emitted as fenced code blocks; the markers never reach the output.

Usage: python3 build_knowledge.py [--src /usr/share/man/man2] [--out knowledge]
"""
import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CODE_START = "@@AFCODESTART@@"
CODE_END = "@@AFCODEEND@@"
MIN_WORDS = 60
CODE_SECTIONS = {"SYNOPSIS", "EXAMPLES", "EXAMPLE"}

# ASCII-fold the few typographic characters groff emits, so identifiers and quotes grep plainly.
CHAR_MAP = {
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--", "\u2212": "-",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ", "\u00ad": "", "\ufffd": "",
}


def read_source(path):
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def is_redirect(text):
    body = [l for l in text.splitlines() if l.strip() and not l.startswith(('.\\"', "'\\\""))]
    return len(body) <= 1 and all(l.startswith(".so ") for l in body)


def add_markers(text):
    """Insert marker text lines around no-fill regions and tables."""
    out = []
    in_nofill = False
    for line in text.split("\n"):
        req = line.strip()
        m = re.match(r"^[.'][ \t]*([A-Za-z]+)\b", req)
        name = m.group(1) if m else None
        if name in ("nf", "EX") and not in_nofill:
            out.append(line)
            out.append(CODE_START)
            in_nofill = True
        elif name in ("fi", "EE") and in_nofill:
            out.append(CODE_END)
            out.append(line)
            in_nofill = False
        elif name == "TS" and not in_nofill:
            out += [".br", CODE_START, ".br", line]
        elif name == "TE" and not in_nofill:
            out += [line, ".br", ".sp", CODE_END, ".br"]
        else:
            out.append(line)
    return "\n".join(out)


def render(src_text, name, tmpdir):
    tmp = os.path.join(tmpdir, name + ".2")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(src_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAN", "GROFF"))}
    env.update({"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "MANPAGER": "cat",
                "PAGER": "cat"})
    man = subprocess.run(["man", "--nh", "--nj", "-l", tmp], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=True)
    col = subprocess.run(["col", "-bx"], input=man.stdout, env=env, stdout=subprocess.PIPE,
                         check=True)
    os.unlink(tmp)
    return col.stdout.decode("utf-8", "replace")


def fold(s):
    for a, b in CHAR_MAP.items():
        s = s.replace(a, b)
    return s


def indent_of(s):
    return len(s) - len(s.lstrip(" "))


def split_paragraphs(block):
    """block: list of raw (tab-expanded) lines without blank lines -> list of prose paragraphs."""
    paras = []
    cur = []
    prev_ind = None
    for raw in block:
        ind = indent_of(raw)
        if not cur:
            cur = [raw]
        elif raw.lstrip().startswith("\u2022"):  # list item (possibly with no blank line before)
            paras.append(cur)
            cur = [raw]
        elif ind == prev_ind:
            cur.append(raw)
        elif len(cur) == 1 and ind > prev_ind:
            first = cur[0].rstrip()
            inline = (len(first) > ind and first[ind - 1] == " " and first[ind] != " "
                      and len(first) >= 60)
            if inline:  # hanging paragraph whose tag fits on the first line
                cur.append(raw)
            else:  # tag on a line of its own
                paras.append(cur)
                cur = [raw]
        else:
            paras.append(cur)
            cur = [raw]
        prev_ind = ind
    if cur:
        paras.append(cur)
    result = []
    for p in paras:
        text = ""
        for l in p:
            l = l.strip()
            if not text:
                text = l
            elif re.search(r"[A-Za-z0-9]-$", text) and not re.search(r"(^|\s)-", text.rsplit(" ", 1)[-1]):
                text += l  # line broken after an explicit hyphen (hyphenation is off)
            else:
                text += " " + l
        text = re.sub(r"\s+", " ", text).strip()
        if text.startswith("\u2022 "):
            text = "- " + text[2:]
        elif text == "\u2022":
            continue
        result.append(text)
    return result


def to_markdown(name, rendered):
    lines = [fold(l.expandtabs(8)).rstrip() for l in rendered.split("\n")]
    # drop running header (first non-blank line) and footer (last non-blank line)
    nonblank = [i for i, l in enumerate(lines) if l.strip()]
    hdr_re = re.compile(r"\S+\(2\)\s*$")
    if nonblank and hdr_re.search(lines[nonblank[0]]) and indent_of(lines[nonblank[0]]) == 0:
        lines[nonblank[0]] = ""
    if nonblank and hdr_re.search(lines[nonblank[-1]]) and "man-pages" in lines[nonblank[-1]]:
        lines[nonblank[-1]] = ""

    out = ["# %s(2)" % name]
    section = None
    block = []      # prose lines awaiting paragraph split
    code = None     # list of raw lines while inside a code region

    def flush_block():
        for p in split_paragraphs(block):
            out.append("")
            out.append(p)
        block.clear()

    for raw in lines:
        s = raw.strip()
        if code is not None:
            if s == CODE_END:
                body = [l for l in code]
                while body and not body[0].strip():
                    body.pop(0)
                while body and not body[-1].strip():
                    body.pop()
                if body:
                    ind = min(indent_of(l) for l in body if l.strip())
                    lang = "c" if section in CODE_SECTIONS else ""
                    out.append("")
                    out.append("```" + lang)
                    out.extend(l[ind:] for l in body)
                    out.append("```")
                code = None
            elif s == CODE_START:
                pass
            else:
                code.append(raw)
            continue
        if s == CODE_START:
            flush_block()
            code = []
            continue
        if s == CODE_END:
            continue
        if not s:
            flush_block()
            continue
        ind = indent_of(raw)
        if ind == 0:
            flush_block()
            section = s
            out.append("")
            out.append("## " + s)
            continue
        if ind == 3:
            flush_block()
            out.append("")
            out.append("### " + s)
            continue
        block.append(raw)
    flush_block()
    if code:  # unterminated region: emit as code anyway
        body = [l for l in code if l is not None]
        ind = min((indent_of(l) for l in body if l.strip()), default=0)
        out += ["", "```"] + [l[ind:] for l in body] + ["```"]
    text = "\n".join(out).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text


def word_count(md):
    body = md.split("\n", 1)[1] if "\n" in md else ""
    return len(re.findall(r"\S+", body))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="/usr/share/man/man2")
    ap.add_argument("--out", default=os.path.join(HERE, "knowledge"))
    args = ap.parse_args()

    for tool in ("man", "col"):
        if not shutil.which(tool):
            sys.exit("missing tool: " + tool)

    names = sorted(f for f in os.listdir(args.src) if f.endswith(".2.gz"))
    if os.path.isdir(args.out):
        for f in os.listdir(args.out):
            if f.endswith(".md"):
                os.unlink(os.path.join(args.out, f))
    os.makedirs(args.out, exist_ok=True)

    written = skipped_link = skipped_redirect = skipped_short = 0
    short = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for fname in names:
            path = os.path.join(args.src, fname)
            if os.path.islink(path) or not os.path.isfile(path):
                skipped_link += 1
                continue
            text = read_source(path)
            if is_redirect(text):
                skipped_redirect += 1
                continue
            name = fname[: -len(".2.gz")]
            md = to_markdown(name, render(add_markers(text), name, tmpdir))
            if word_count(md) < MIN_WORDS:
                skipped_short += 1
                short.append(name)
                continue
            with open(os.path.join(args.out, name + ".md"), "w", encoding="utf-8") as fh:
                fh.write(md)
            written += 1
    print("skipped: %d symlinks, %d .so redirects, %d under %d words %s"
          % (skipped_link, skipped_redirect, skipped_short, MIN_WORDS, short), file=sys.stderr)
    print(written)


if __name__ == "__main__":
    main()
