#!/usr/bin/env python3
"""Build the `gcloud-groups` classification set (FROZEN held-out set; real data, built blind).

text  = first paragraph of the DESCRIPTION section of a gcloud leaf-command man page, with
        every literal command mention `gcloud <words...>` replaced by "this command"
label = the top-level command group (gcloud_<group>_..., e.g. compute, container, iam)

Source: /usr/share/man/man1/gcloud_*.1.gz (Debian package google-cloud-cli 528.0.0-0)
Run:    /root/.pyenv/versions/3.11.7/bin/python3 build.py
Writes: data.jsonl, PROVENANCE.md (next to this file). Deterministic (seed 13). Stdlib only.
The troff source is parsed directly (the pages are machine-generated and use a small,
fixed set of escapes), so font spans mark exactly where a literal command starts and ends.
"""
import collections
import gzip
import json
import os
import random
import re
import subprocess

SEED = 13
PER_LABEL = 150
N_GROUPS = 8
MAX_WORDS = 60
MIN_WORDS = 4
HERE = os.path.dirname(os.path.abspath(__file__))
MAN1 = "/usr/share/man/man1"
REPL = "this command"

FONT = re.compile(r"\\f(\([A-Za-z0-9]{2}|\[[^\]]*\]|.)")
SPECIAL = {"bu": "\u2022", "em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": "\u201c",
           "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "hy": "-", "mi": "-", "co": "\u00a9",
           "rg": "\u00ae", "tm": "\u2122", "->": "\u2192", "<-": "\u2190", "mu": "\u00d7"}


def page_names():
    names = sorted(fn[:-5] for fn in os.listdir(MAN1)
                   if fn.startswith("gcloud_") and fn.endswith(".1.gz"))
    return names


def leaf_pages(names):
    nameset = set(names)
    prefixes = set()
    for n in names:
        parts = n.split("_")
        for k in range(1, len(parts)):
            prefixes.add("_".join(parts[:k]))
    out = collections.defaultdict(list)
    stats = collections.Counter()
    for n in names:
        parts = n.split("_")          # ["gcloud", group, ...]
        if parts[1] in ("alpha", "beta"):
            stats["alpha/beta page"] += 1
            continue
        if len(parts) < 4:
            stats["fewer than 3 parts after gcloud"] += 1
            continue
        if n in prefixes:
            stats["command group page (has sub-pages), not a leaf"] += 1
            continue
        out[parts[1]].append(n)
    assert all(n in nameset for v in out.values() for n in v)
    return out, stats


def description_paragraph(troff):
    """Raw troff text lines of the first paragraph of .SH "DESCRIPTION"."""
    lines = troff.replace("\r\n", "\n").split("\n")
    i = next((k for k, ln in enumerate(lines)
              if re.match(r'^\.SH\s+"?DESCRIPTION"?\s*$', ln)), None)
    if i is None:
        return None
    buf = []
    for ln in lines[i + 1:]:
        if ln.startswith((".SH", ".SS")):
            break
        if ln.startswith(('.\\"', "'\\\"")):
            continue
        if not ln.strip() or (ln.startswith(".") and not ln.startswith(".\\")):
            if buf:
                break
            continue
        buf.append(ln)
    return " ".join(buf) if buf else None


def unescape(s):
    s = s.replace("\\e", "\x00")
    s = re.sub(r"\\\((..)", lambda m: SPECIAL.get(m.group(1), ""), s)
    s = re.sub(r"\\\[([^\]]*)\]", lambda m: SPECIAL.get(m.group(1), ""), s)
    s = s.replace("\\-", "-").replace("\\'", "'").replace("\\`", "`").replace("\\&", "")
    s = s.replace("\\ ", " ").replace("\\~", " ").replace("\\0", " ").replace("\\|", "")
    s = s.replace("\\^", "").replace("\\c", "")
    s = re.sub(r"\\[sS][+-]?\d", "", s)
    s = re.sub(r"\\.", "", s)          # any other escape: drop
    return s.replace("\x00", "\\")


class Replacer:
    def __init__(self, names):
        self.paths = {tuple(n.split("_")[1:]) for n in names}
        self.maxlen = max(len(p) for p in self.paths)
        self.n_span = 0
        self.n_bare = 0

    def spans(self, raw):
        """Replace font spans whose text starts with `gcloud <word>` by REPL."""
        pieces = []          # list of (kind, text)
        pos = 0
        for m in FONT.finditer(raw):
            if m.start() > pos:
                pieces.append(("t", raw[pos:m.start()]))
            f = m.group(1)
            pieces.append(("close" if f in ("R", "P", "(CR", "[]", "[R]") else "open", ""))
            pos = m.end()
        if pos < len(raw):
            pieces.append(("t", raw[pos:]))
        out, depth, span = [], 0, None
        for kind, txt in pieces:
            if kind == "open":
                if depth == 0:
                    span = []
                depth += 1
            elif kind == "close":
                if depth > 0:
                    depth -= 1
                    if depth == 0:
                        out.append(self._span(span))
                        span = None
            else:
                (span if depth > 0 else out).append(txt)
        if span is not None:
            out.append(self._span(span))
        return "".join(out)

    def _span(self, parts):
        txt = "".join(parts)
        plain = unescape(txt).strip()
        if re.match(r"^\$?\s*gcloud\s+\S", plain):
            self.n_span += 1
            lead = txt[: len(txt) - len(txt.lstrip())]
            trail = txt[len(txt.rstrip()):]
            return lead + REPL + trail
        return txt

    def bare(self, text):
        """Replace `gcloud w1 w2 ...` outside font spans, longest known command path."""
        word = re.compile(r"\s+([a-z0-9][a-z0-9_-]*)")
        out, pos = [], 0
        for m in re.finditer(r"(?:\$\s+)?\bgcloud\b", text):
            if m.start() < pos:
                continue
            words, ends, j = [], [], m.end()
            while len(words) < self.maxlen:
                w = word.match(text, j)
                if not w:
                    break
                words.append(w.group(1))
                ends.append(w.end())
                j = w.end()
            for k in range(len(words), 0, -1):
                if tuple(words[:k]) in self.paths:
                    out.append(text[pos:m.start()] + REPL)
                    pos = ends[k - 1]
                    self.n_bare += 1
                    break
        out.append(text[pos:])
        return "".join(out)


def main():
    names = page_names()
    leaves, pstats = leaf_pages(names)
    ranked = sorted(leaves, key=lambda g: (-len(leaves[g]), g))
    top = ranked[:N_GROUPS]
    rep = Replacer(names)

    pool, stats = [], collections.Counter()
    for g in top:
        for n in leaves[g]:
            with gzip.open(f"{MAN1}/{n}.1.gz", "rt", encoding="utf-8", errors="replace") as f:
                raw = description_paragraph(f.read())
            if raw is None:
                stats["dropped: no DESCRIPTION paragraph"] += 1
                continue
            text = unescape(rep.spans(raw))
            text = " ".join(text.split())
            text = rep.bare(text)
            # replacement at a sentence start gets a capital T (as the source's own
            # "This command ..." sentences have); elsewhere it stays "this command"
            text = re.sub(r"(^|[.!?]\s+)this command", lambda m: m.group(1) + "This command", text)
            text = " ".join(text.split()[:MAX_WORDS])
            if len(text.split()) < MIN_WORDS:
                stats[f"dropped: under {MIN_WORDS} words"] += 1
                continue
            pool.append((n, g, text))

    by_key = collections.defaultdict(list)
    for row in sorted(pool):
        by_key[row[2].lower()].append(row)
    uniq = []
    for rows in by_key.values():
        if len({r[1] for r in rows}) > 1:
            stats["dropped: text under two labels (all copies)"] += len(rows)
            continue
        uniq.append(rows[0])
        stats["dropped: exact duplicate text (kept first by id)"] += len(rows) - 1

    rng = random.Random(SEED)
    per = collections.defaultdict(list)
    for row in sorted(uniq):
        per[row[1]].append(row)
    chosen = []
    for lab in sorted(per):
        chosen.extend(rng.sample(per[lab], min(PER_LABEL, len(per[lab]))))
    rng.shuffle(chosen)
    with open(os.path.join(HERE, "data.jsonl"), "w", encoding="utf-8") as f:
        for rid, lab, text in chosen:
            f.write(json.dumps({"id": rid, "text": text, "label": lab}, ensure_ascii=False) + "\n")

    counts = collections.Counter(r[1] for r in chosen)
    avail = {g: len(per[g]) for g in per}
    residual = sum(1 for r in chosen if re.search(r"\bgcloud\b", r[2]))
    stats["rows still containing the word 'gcloud' (no command path after it)"] = residual
    stats["literal font-span mentions replaced (all candidates)"] = rep.n_span
    stats["bare-text mentions replaced (all candidates)"] = rep.n_bare
    write_provenance(len(names), pstats, leaves, ranked, stats, counts, avail)
    print("leaf pages per group (top 12): " + ", ".join(f"{g}={len(leaves[g])}" for g in ranked[:12]))
    print(f"pool={len(pool)} unique={len(uniq)} rows={len(chosen)}")
    for lab in sorted(counts):
        print(f"  {lab:18s} {counts[lab]:4d}  (leaf pages {len(leaves[lab])}, usable {avail[lab]})")
    for k, v in sorted(stats.items()):
        print(f"  {k}: {v}")


def sdk_version():
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "google-cloud-cli"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def write_provenance(npages, pstats, leaves, ranked, stats, counts, avail):
    L = ["# gcloud-groups — provenance (FROZEN held-out set)\n",
         "Built: 2026-12-03 by `build.py` (seed 13, stdlib Python 3.11.7). Built blind: no model,",
         "embedding, classifier or retrieval was run on the data. Do not tune anything on it.\n",
         "## Source\n",
         f"- Debian package `google-cloud-cli` {sdk_version()} (Google Cloud SDK 528.0.0), man pages",
         f"  `{MAN1}/gcloud_*.1.gz` ({npages} pages). Row `id` = page stem, e.g.",
         "  `gcloud_compute_instances_create` (the id names the label; never show it to a model).",
         "- The troff source is parsed directly (no rendering).\n",
         "## Rules (exact)\n",
         "1. Leaf pages: stem split on `_` has at least 3 parts after `gcloud`, the first part is",
         "   not `alpha`/`beta`, and no other page's stem starts with `<stem>_` (so command-group",
         "   pages such as `gcloud_compute_instances_ops-agents` are excluded).",
         "2. label = the part after `gcloud_`; the 8 groups with the most leaf pages are used.",
         "   Leaf pages per group (top 12): " + ", ".join(f"{g} {len(leaves[g])}" for g in ranked[:12]) + ".",
         "3. Paragraph = the text lines after `.SH \"DESCRIPTION\"` up to the first blank line or",
         "   request line (`.RS`, `.IP`, `.sp`, `.SH`, ...), leading blanks/requests skipped.",
         "4. Command mentions: a font span (`\\f5`/`\\fB`/`\\fI` ... `\\fR`, nesting counted) whose text",
         "   starts with `gcloud <word>` (optionally `$ gcloud`) is replaced as a whole by",
         "   `this command`. Then, in plain text, `gcloud w1 w2 ...` is replaced by `this command`",
         "   where `w1..wk` is the longest prefix that is a real gcloud command path (any page,",
         "   alpha/beta included); `gcloud` followed by no known path (e.g. \"gcloud CLI\") is kept.",
         "   A `$ ` prompt directly before a replaced mention is replaced with it. At the start of",
         "   the text or after `. `/`! `/`? ` the replacement is written `This command` (the source's",
         "   own sentences read \"This command ...\"; a lower-case start would only mark replaced",
         "   pages); elsewhere `this command`. Phrases such as \"the this command command\" can occur.",
         "5. troff escapes: `\\-` -> `-`, `\\e` -> `\\`, `\\'` -> `'`, `\\(bu` -> bullet, `\\(em` -> em dash,",
         "   `\\&`, font changes and other escapes removed; whitespace collapsed.",
         "6. Cut to the first 60 words; drop texts under 4 words.",
         "7. Exact case-insensitive dedup (keep smallest id); texts under two labels dropped.",
         "8. Per label `random.Random(13).sample` of at most 150 (labels sorted, rows sorted by",
         "   id), then one shuffle of all rows with the same generator.\n",
         "## Counts\n",
         "| label | rows | leaf pages | usable after rules/dedup |", "|---|---|---|---|"]
    for lab in sorted(counts):
        L.append(f"| {lab} | {counts[lab]} | {len(leaves[lab])} | {avail[lab]} |")
    L.append(f"| **total** | **{sum(counts.values())}** | | |\n")
    L.append("Pages excluded before labelling:")
    L += [f"- {k}: {v}" for k, v in sorted(pstats.items())]
    L.append("\nText processing:")
    L += [f"- {k}: {v}" for k, v in sorted(stats.items())]
    L += ["\n## Licence\n",
          "Google Cloud CLI is licensed under the Apache License 2.0",
          "(`/usr/share/doc/google-cloud-cli/copyright`); the man pages are generated from it."]
    with open(os.path.join(HERE, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
