#!/usr/bin/env python3
"""Build the `man3-libc` curation corpus (FROZEN): Linux man-pages section-3 pages as text.

One document per page in docs/, named <page stem>.txt (e.g. printf.3.txt, size_t.3type.txt).
Each page is rendered to plain text with man-db/groff and the page header/footer lines are
removed; nothing else is edited.

Source: /usr/share/man/man3/*.3*.gz whose .TH line names "Linux man-pages" (Debian packages
        manpages-dev / manpages 6.03-2)
Run:    /root/.pyenv/versions/3.11.7/bin/python3 build.py            (default rendering)
        /root/.pyenv/versions/3.11.7/bin/python3 build.py --brief-render
            (exactly `MANWIDTH=80 man -l FILE | col -b`, with hyphenation/justification/tabs)
Writes: docs/*.txt, manifest.tsv, PROVENANCE.md (next to this file). Deterministic (seed 13).
"""
import collections
import glob
import gzip
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

SEED = 13
N_DOCS = 700
HERE = os.path.dirname(os.path.abspath(__file__))
MAN3 = "/usr/share/man/man3"
BRIEF = "--brief-render" in sys.argv
CMD_DEFAULT = "man --nh --nj -l '{f}' 2>/dev/null | col -bx"
CMD_BRIEF = "man -l '{f}' 2>/dev/null | col -b"
ENV = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", MANWIDTH="80",
           MAN_KEEP_FORMATTING="", MANPAGER="cat", PAGER="cat")


def head_lines(path, n=8192):
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read(n).splitlines()


def candidates():
    out, skipped = [], collections.Counter()
    for p in sorted(glob.glob(f"{MAN3}/*.gz")):
        fn = os.path.basename(p)
        m = re.match(r"^(.*)\.(3[a-z]*)\.gz$", fn)
        if not m:
            skipped["not a section-3 file name"] += 1
            continue
        if os.path.islink(p):
            skipped["symlink (alias of another page)"] += 1
            continue
        lines = [ln for ln in head_lines(p) if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
        if lines and lines[0].startswith(".so "):
            skipped[".so redirect stub"] += 1
            continue
        th = next((ln for ln in lines if ln.startswith(".TH ")), None)
        if th is None or "Linux man-pages" not in th:
            skipped["not Linux man-pages (.TH footer)"] += 1
            continue
        out.append((fn[:-3], m.group(2), p, th))
    return out, skipped


def render(path):
    cmd = (CMD_BRIEF if BRIEF else CMD_DEFAULT).format(f=path)
    r = subprocess.run(cmd, shell=True, capture_output=True, env=ENV)
    return r.stdout.decode("utf-8", "replace")


def clean(txt):
    lines = [ln.rstrip() for ln in txt.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    if lines:
        lines.pop(0)      # header: "printf(3)   Library Functions Manual   printf(3)"
    if lines:
        lines.pop()       # footer: "Linux man-pages 6.03   2023-02-05   printf(3)"
    text = "\n".join(lines).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text + "\n"


def main():
    cands, skipped = candidates()
    rng = random.Random(SEED)
    chosen = rng.sample(cands, min(N_DOCS, len(cands)))
    chosen.sort()
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as ex:
        rendered = list(ex.map(lambda c: render(c[2]), chosen))

    docs = os.path.join(HERE, "docs")
    if os.path.isdir(docs):
        shutil.rmtree(docs)
    os.makedirs(docs)
    rows, empty = [], []
    for (stem, sub, path, th), txt in zip(chosen, rendered):
        text = clean(txt)
        if len(text.split()) < 4:
            empty.append(stem)
            continue
        with open(os.path.join(docs, stem + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)
        rows.append((stem, sub, path, len(text.encode()), hashlib.sha256(text.encode()).hexdigest(),
                     th.split('"')[-2] if th.count('"') >= 2 else ""))
    with open(os.path.join(HERE, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("id\tsubsection\tsource_path\tbytes\tsha256\tth_footer\n")
        for r in rows:
            f.write("\t".join(map(str, r)) + "\n")

    pkg = {}
    for lst in ("manpages-dev", "manpages"):
        for fn in glob.glob(f"/var/lib/dpkg/info/{lst}.list") + glob.glob(f"/var/lib/dpkg/info/{lst}:*.list"):
            for ln in open(fn, encoding="utf-8"):
                pkg[ln.strip()] = lst
    vers = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", "manpages",
                           "manpages-dev"], capture_output=True, text=True).stdout
    per_pkg = collections.Counter(pkg.get(r[2], "(no dpkg owner)") for r in rows)
    per_sub = collections.Counter(r[1] for r in rows)
    dup = collections.Counter(r[4] for r in rows)
    ndup = sum(n for n in dup.values() if n > 1)
    total = sum(r[3] for r in rows)
    nonascii = sum(1 for r in rows if any(ord(c) > 127 for c in open(os.path.join(docs, r[0] + ".txt"), encoding="utf-8").read()))
    write_provenance(len(cands), skipped, rows, per_sub, per_pkg, vers, ndup, total, empty, nonascii)
    print(f"eligible pages={len(cands)} docs={len(rows)} bytes={total} render={'brief' if BRIEF else 'default'}")
    for s in sorted(per_sub):
        print(f"  {s:8s} {per_sub[s]}")
    for k, v in sorted(skipped.items()):
        print(f"  skipped: {k}: {v}")
    print(f"  byte-identical rendered docs: {ndup}; dropped as empty: {len(empty)}")


def write_provenance(ncand, skipped, rows, per_sub, per_pkg, vers, ndup, total, empty, nonascii):
    cmd = CMD_BRIEF if BRIEF else CMD_DEFAULT
    L = ["# man3-libc (curation corpus, FROZEN) — provenance\n",
         "Built: 2026-12-03 by `build.py` (seed 13, stdlib Python 3.11.7). Built blind: no model,",
         "embedding, classifier or retrieval was run on the data. Do not tune anything on it.\n",
         "## Source\n",
         f"- `{MAN3}/<page>.3*.gz` on the build machine (Debian GNU/Linux 12), Linux man-pages",
         "  project, Debian packages: " + ", ".join(l.replace("\t", " ") for l in vers.split("\n") if l) + ".",
         "- `docs/<page>.<subsection>.txt`, id = file stem (e.g. `printf.3`, `size_t.3type`).",
         "  `manifest.tsv`: id, subsection, source path, bytes, sha256 of the text, .TH footer.\n",
         "## Rules (exact)\n",
         "1. Eligible: every regular file (not a symlink) in man3 named `<name>.3<suffix>.gz` whose",
         "   first non-comment line is not a `.so` redirect and whose `.TH` line contains",
         "   `Linux man-pages`. Section-3 sub-sections of the same project are included",
         "   (`3type` = libc data types, `3const` = libc constants, `3head` = headers); filter on",
         "   `manifest.tsv` column `subsection` to keep `3` only.",
         f"2. `random.Random(13).sample(eligible, min(700, len(eligible)))` — the source has only",
         f"   {ncand} eligible pages, so every eligible page is taken.",
         f"3. Rendering: `LC_ALL=C.UTF-8 MANWIDTH=80 {cmd}`.",
         "   The brief asked for `MANWIDTH=80 man -l FILE | col -b`; by default `--nh --nj` (no",
         "   hyphenation, no justification) and `col -x` (tabs -> spaces) are added so words are",
         "   not split across lines with U+2010 hyphens and no justification spaces are inserted.",
         "   `build.py --brief-render` rebuilds with exactly the brief's command.",
         "4. Cleaning: trailing spaces stripped per line; leading/trailing blank lines removed; the",
         "   first line (page header, `printf(3)  Library Functions Manual  printf(3)`) and the last",
         "   line (footer, `Linux man-pages 6.03  2023-02-05  printf(3)`) removed; runs of 2+",
         "   blank lines collapsed to one. Indentation, tables (UTF-8 box drawing) kept.",
         "5. No dedup needed (see counts).\n",
         "## Counts\n",
         f"- documents: {len(rows)}, {total} bytes of text; byte-identical documents: {ndup};",
         f"  dropped as empty after rendering: {len(empty)}; documents with non-ASCII characters: {nonascii}.",
         "- by sub-section: " + ", ".join(f"{s} {n}" for s, n in sorted(per_sub.items())) + ".",
         "- by package: " + ", ".join(f"{p} {n}" for p, n in sorted(per_pkg.items())) + ".",
         "- skipped files in man3:"]
    L += [f"  - {k}: {v}" for k, v in sorted(skipped.items())]
    L += ["- Oddity kept as shipped: `__ppc_set_ppr_med.3` starts with a stray line",
          "  `Programmer's Manual\"` (a broken continuation in the page source); the page `.TH`",
          "  footers all read `Linux man-pages 6.03`."]
    L += ["\n## Licence\n",
          "Linux man-pages: per-page licences, mostly `Linux-man-pages-copyleft` (verbatim copying",
          "and modified versions allowed provided the notice is kept), some BSD / GPL / MIT /",
          "public-domain pages; SPDX ids are in each page's comment header and",
          "`/usr/share/doc/manpages-dev/copyright`. The rendered text keeps the page content but not",
          "the comment header with the notice; keep this PROVENANCE file with the documents."]
    with open(os.path.join(HERE, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
