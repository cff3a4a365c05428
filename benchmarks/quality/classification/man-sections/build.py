#!/usr/bin/env python3
"""Build the `man-sections` classification set (frozen, real data, built blind).

text  = the description part of a manual page's NAME line (after the `\\-`)
label = the manual section as words

Source: /usr/share/man/man{1,2,3,5,7,8}/*.{N}.gz on this machine (Debian 12).
Run:    /root/.pyenv/versions/3.11.7/bin/python3 build.py
Writes: data.jsonl, PROVENANCE.md (next to this file). Deterministic (seed 13).
Stdlib only; needs `man` (man-db), `groff`, `col` on PATH.
"""
import collections
import glob
import json
import os
import random
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

SEED = 13
PER_LABEL = 200
MIN_WORDS = 4
HERE = os.path.dirname(os.path.abspath(__file__))
MAN = "/usr/share/man"
LABELS = {
    "1": "user command",
    "2": "system call",
    "3": "library function",
    "5": "file format",
    "7": "overview",
    "8": "admin command",
}
RENDER_ENV = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", MANWIDTH="200",
                  MAN_KEEP_FORMATTING="", MANPAGER="cat", PAGER="cat")

# a comma-separated list of page names, e.g. "lz4, unlz4, lz4cat"
NAMELIST = r"[\w.+:@/\[\]-]+(?:,\s*[\w.+:@/\[\]-]+)*"
SEP = r"\s+[-\u2010\u2013\u2014\u2212]+\s+"
LEAD_NAMES = re.compile(r"^" + NAMELIST + SEP)
NEXT_ENTRY = re.compile(r"\s" + NAMELIST + SEP)
FIRST_SEP = re.compile(r"\s[-\u2010\u2013\u2014\u2212]+\s")


def candidates():
    """Regular (non-symlink) files whose suffix is exactly .<section>.gz."""
    out, skipped = [], collections.Counter()
    for sec in LABELS:
        d = f"{MAN}/man{sec}"
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if fn.startswith("gcloud_"):
                skipped["gcloud_* page"] += 1
                continue
            if not fn.endswith(f".{sec}.gz"):
                skipped[f"other suffix in man{sec} ({fn.rsplit('.', 2)[-2]})"] += 1
                continue
            if os.path.islink(p):
                skipped["symlink"] += 1
                continue
            if is_so_stub(p):
                skipped[".so redirect stub"] += 1
                continue
            out.append((sec, p))
    return out, skipped


def is_so_stub(path):
    import gzip
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = [ln for ln in f.read(4096).splitlines()
                 if ln.strip() and not ln.startswith(('.\\"', "'\\\"", '.\\}'))]
    return bool(lines) and lines[0].startswith(".so ")


def render(path):
    r = subprocess.run(f"man --nh --nj -l '{path}' 2>/dev/null | col -bx", shell=True,
                       capture_output=True, env=RENDER_ENV)
    return r.stdout.decode("utf-8", "replace")


def name_description(rendered):
    """Return the NAME-line description, or None."""
    lines = rendered.split("\n")
    start = next((k for k, ln in enumerate(lines) if re.match(r"^NAME\s*$", ln)), None)
    if start is None:
        return None
    buf = []
    for ln in lines[start + 1:]:
        if ln and not ln[0].isspace():  # next section heading
            break
        if not ln.strip():
            if buf:                     # first paragraph of NAME only
                break
            continue
        buf.append(ln)
    t = " ".join(" ".join(buf).split())
    m = FIRST_SEP.search(t)
    if not m:
        return None
    d = t[m.end():]
    m = LEAD_NAMES.match(d)          # "name \- names \- desc" (ronn/markdown pages)
    if m:
        d = d[m.end():]
    m = NEXT_ENTRY.search(d)         # several "name \- desc" entries: keep the first
    if m:
        d = d[:m.start()]
    d = " ".join(d.split())
    return d or None


def dpkg_owner_map():
    owner = {}
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        pkg = os.path.basename(lst)[:-5].split(":")[0]
        with open(lst, encoding="utf-8", errors="replace") as f:
            for ln in f:
                owner[ln.rstrip("\n")] = pkg
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
                       capture_output=True, text=True)
    vers = dict(ln.split("\t", 1) for ln in r.stdout.splitlines() if "\t" in ln)
    return owner, vers


def main():
    cands, skipped = candidates()
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as ex:
        rendered = list(ex.map(lambda sp: render(sp[1]), cands))

    pool = []  # (id, path, label, text)
    dropped = collections.Counter()
    for (sec, path), txt in zip(cands, rendered):
        desc = name_description(txt)
        pid = os.path.basename(path)[:-3]  # e.g. open.2
        if not desc:
            dropped["no NAME description"] += 1
            continue
        if len(desc.split()) < MIN_WORDS:
            dropped[f"under {MIN_WORDS} words"] += 1
            continue
        pool.append((pid, path, LABELS[sec], desc))

    # exact (case-insensitive) dedup; texts seen under two labels are dropped entirely
    by_key = collections.defaultdict(list)
    for row in sorted(pool):
        by_key[row[3].lower()].append(row)
    uniq = []
    for key, rows in by_key.items():
        if len({r[2] for r in rows}) > 1:
            dropped["text under two labels (all copies dropped)"] += len(rows)
            continue
        uniq.append(rows[0])
        dropped["exact duplicate text (kept first by id)"] += len(rows) - 1

    rng = random.Random(SEED)
    per_label = collections.defaultdict(list)
    for row in sorted(uniq):
        per_label[row[2]].append(row)
    chosen = []
    for lab in sorted(per_label):
        rows = per_label[lab]
        chosen.extend(rng.sample(rows, min(PER_LABEL, len(rows))))
    rng.shuffle(chosen)

    with open(os.path.join(HERE, "data.jsonl"), "w", encoding="utf-8") as f:
        for pid, path, lab, text in chosen:
            f.write(json.dumps({"id": pid, "text": text, "label": lab}, ensure_ascii=False) + "\n")

    owner, vers = dpkg_owner_map()
    pkg_rows = collections.Counter()
    for pid, path, lab, text in chosen:
        pkg_rows[owner.get(path, "(no dpkg owner)")] += 1
    counts = collections.Counter(r[2] for r in chosen)
    avail = {lab: len(per_label[lab]) for lab in per_label}
    write_provenance(len(cands), skipped, dropped, avail, counts, pkg_rows, vers)

    print(f"candidates={len(cands)} pool={len(pool)} unique={len(uniq)} rows={len(chosen)}")
    for lab in sorted(counts):
        print(f"  {lab:18s} {counts[lab]:4d}  (available {avail[lab]})")
    for k, v in sorted(dropped.items()):
        print(f"  dropped: {k}: {v}")


def write_provenance(ncand, skipped, dropped, avail, counts, pkg_rows, vers):
    sec_of = {v: k for k, v in LABELS.items()}
    L = []
    L.append("# man-sections — provenance\n")
    L.append("Built: 2026-12-03 by `build.py` (seed 13, stdlib Python 3.11.7). Built blind: no model,")
    L.append("embedding, classifier or retrieval was run on the data.\n")
    L.append("## Source\n")
    L.append("- Manual pages installed on the build machine (Debian GNU/Linux 12 bookworm):")
    L.append("  `/usr/share/man/man{1,2,3,5,7,8}/<page>.<N>.gz`. Row `id` = file stem, e.g. `open.2`")
    L.append("  -> `/usr/share/man/man2/open.2.gz`. NOTE: the id ends in the section number, i.e. it")
    L.append("  encodes the label; never show ids to a model under test.")
    L.append("- Rendered with `LC_ALL=C.UTF-8 MANWIDTH=200 man --nh --nj -l FILE | col -bx` (man-db /")
    L.append("  groff on this machine).\n")
    L.append("## Rules (exact)\n")
    L.append("1. Candidates: regular files in man1/2/3/5/7/8 whose name ends exactly in `.<N>.gz` for")
    L.append("   that directory's section. This excludes `gcloud_*` pages, symlinks (Debian's form of")
    L.append("   alias pages), `.so` redirect stubs (first non-comment line `.so ...`), and every")
    L.append("   sub-section suffix (`1ssl`, `1p`, `3pm`, `3perl`, `3ssl`, `3type`, `3const`, `3t`,")
    L.append("   `3head`, `3readline`, `2type`, `5ssl`, `7ssl`, `5edit`, `7edit`).")
    L.append("2. text = the first paragraph of the rendered NAME section (up to its first blank line;")
    L.append("   rst2man pages such as cmake-*.7 and ctags-*.7 put more prose there), whitespace")
    L.append("   collapsed, everything after the first ` - ` separator (the `\\-`). If that remainder itself starts with `names - ` (pages")
    L.append("   converted from markdown, e.g. lz4, zstd) the name list is removed; if the NAME section")
    L.append("   holds several `name - description` entries (bzip2, hostname, ext4, ip-fou, tc-bfifo)")
    L.append("   only the first description is kept. No other edits (case and final periods kept).")
    L.append("3. label = section as words: " + ", ".join(f"{k} -> \"{v}\"" for k, v in LABELS.items()) + ".")
    L.append("4. Drop texts under 4 words (whitespace split).")
    L.append("5. Dedup exactly, case-insensitive: a text under one label keeps the row with the smallest")
    L.append("   id; a text seen under two or more labels is dropped in all copies.")
    L.append("6. Per label: `random.Random(13).sample` of at most 200 rows (labels in sorted order,")
    L.append("   candidates sorted by id), then one shuffle of all rows with the same generator.\n")
    L.append("## Counts\n")
    L.append(f"Candidate files: {ncand}. Skipped before rendering:")
    for k, v in sorted(skipped.items()):
        L.append(f"- {k}: {v}")
    L.append("\nDropped after rendering:")
    for k, v in sorted(dropped.items()):
        L.append(f"- {k}: {v}")
    L.append("\n| label | section | rows | available after dedup |\n|---|---|---|---|")
    for lab in sorted(counts):
        L.append(f"| {lab} | {sec_of[lab]} | {counts[lab]} | {avail[lab]} |")
    L.append(f"| **total** | | **{sum(counts.values())}** | |\n")
    L.append("## Packages the rows come from (dpkg owner of the page file, installed version)\n")
    L.append("| package | version | rows |\n|---|---|---|")
    for pkg, n in sorted(pkg_rows.items(), key=lambda kv: (-kv[1], kv[0])):
        L.append(f"| {pkg} | {vers.get(pkg, '?')} | {n} |")
    L.append("\n## Licence\n")
    L.append("Each text is a one-line summary copied from a manual page. The pages carry their own")
    L.append("licences (see `/usr/share/doc/<package>/copyright`): sections 2, 3, 5, 7 are mostly")
    L.append("Linux man-pages (`manpages`, `manpages-dev` 6.03-2; various permissive \"Linux-man-pages-")
    L.append("copyleft\"/BSD/GPL notices), section 1/8 pages come from the packages above (GPL, LGPL,")
    L.append("BSD, MIT, ...). Short descriptive fragments used as internal evaluation data; do not")
    L.append("redistribute the set without checking the per-package copyright files.")
    with open(os.path.join(HERE, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
