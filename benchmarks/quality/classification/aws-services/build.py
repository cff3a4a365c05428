#!/usr/bin/env python3
"""Build the `aws-services` classification set (frozen, real data, built blind).

text  = title of the first example of an AWS CLI example file + its first prose paragraph
label = the AWS CLI service folder the file lives in (8 services with the most files)

Source: awscli 1.45.11 package data, <site-packages>/awscli/examples/<service>/<command>.rst
Run:    /root/.pyenv/versions/3.11.7/bin/python3 build.py
Writes: data.jsonl, PROVENANCE.md (next to this file). Deterministic (seed 13). Stdlib only.
"""
import collections
import json
import os
import random
import re

SEED = 13
PER_LABEL = 150
N_SERVICES = 8
MAX_WORDS = 60
MIN_WORDS = 4
HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/root/.pyenv/versions/3.11.7"
ROOT = f"{PY}/lib/python3.11/site-packages/awscli/examples"
AWSCLI_VERSION = "1.45.11"

BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)
EXAMPLE_PREFIX = re.compile(r"^Example\s*\d+\s*[:.\-\u2013]\s*", re.I)
LABEL_ONLY = re.compile(r"^[\w ()/-]{0,40}::\s*$")   # "Command::", "Output::", "Example output::"


def paragraphs(raw):
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    return [p for p in re.split(r"\n[ \t]*\n", raw) if p.strip()]


def rst_to_plain(s):
    s = re.sub(r"`([^`<]*?)\s*<[^>]*>`__?", r"\1", s)     # `text <url>`__ -> text
    s = re.sub(r":\w+:`([^`]*)`", r"\1", s)               # :ref:`x` -> x
    s = re.sub(r"``(.+?)``", r"\1", s, flags=re.S)          # ``literal`` -> literal
    s = re.sub(r"(?<![\w*])\*\*(\S(?:.*?\S)?)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?!\w)", r"\1", s)
    s = re.sub(r"`([^`]+)`", r"\1", s)
    s = " ".join(s.split())
    s = re.sub(r"\s+::$", "", s)                           # "... example. ::" -> "... example."
    s = re.sub(r"::$", ":", s)                              # "... named x::" -> "... named x:"
    return s.strip()


def is_prose(p):
    if p[:1].isspace():                      # indented: literal/code block
        return False
    q = p.strip()
    if LABEL_ONLY.match(q) or q.startswith("aws ") or q.startswith(".. "):
        return False
    if q.lower().startswith("for more information"):
        return False
    return True


def extract(raw):
    """(title or None, first prose paragraph or None, note)"""
    ps = paragraphs(raw)
    title, start, note = None, 0, ""
    m = BOLD.search(ps[0]) if ps else None
    if m:
        title = EXAMPLE_PREFIX.sub("", " ".join(m.group(1).split())).strip()
        start = 1
        if ps[0].strip() != m.group(0):
            note = "text outside the bold title on its line"
    para = None
    for p in ps[start:]:
        if p.strip().startswith("**") and BOLD.match(p.strip()):
            break                            # next example: stop
        if is_prose(p):
            para = rst_to_plain(p)
            break
    return title, para, note


def cut(text, n):
    w = text.split()
    return " ".join(w[:n])


def main():
    services = {}
    for s in sorted(os.listdir(ROOT)):
        d = os.path.join(ROOT, s)
        if os.path.isdir(d):
            services[s] = sorted(f for f in os.listdir(d)
                                 if f.endswith(".rst") and os.path.isfile(os.path.join(d, f)))
    ranked = sorted(services, key=lambda s: (-len(services[s]), s))
    top = ranked[:N_SERVICES]

    pool, stats, odd = [], collections.Counter(), []
    for s in top:
        for fn in services[s]:
            path = os.path.join(ROOT, s, fn)
            with open(path, encoding="utf-8") as f:
                title, para, note = extract(f.read())
            rid = f"{s}/{fn[:-4]}"
            if note:
                odd.append(f"{rid}: {note}")
            if title is None:
                stats["no bold title (text = paragraph only)"] += 1
            if para is None:
                stats["no prose paragraph before next example (text = title only)"] += 1
            text = " ".join(x for x in (rst_to_plain(title) if title else None, para) if x)
            text = cut(text, MAX_WORDS)
            if len(text.split()) < MIN_WORDS:
                stats[f"dropped: under {MIN_WORDS} words"] += 1
                continue
            pool.append((rid, s, text))

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
    avail = {s: len(per[s]) for s in per}
    write_provenance(services, ranked, top, stats, odd, counts, avail)
    print(f"services ranked: " + ", ".join(f"{s}={len(services[s])}" for s in ranked[:10]))
    print(f"pool={len(pool)} unique={len(uniq)} rows={len(chosen)}")
    for lab in sorted(counts):
        print(f"  {lab:12s} {counts[lab]:4d}  (files {len(services[lab])}, usable {avail[lab]})")
    for k, v in sorted(stats.items()):
        print(f"  {k}: {v}")


def write_provenance(services, ranked, top, stats, odd, counts, avail):
    L = ["# aws-services — provenance\n",
         "Built: 2026-12-03 by `build.py` (seed 13, stdlib Python 3.11.7). Built blind: no model,",
         "embedding, classifier or retrieval was run on the data.\n",
         "## Source\n",
         f"- Python package `awscli` {AWSCLI_VERSION} (pip, in `{PY}`), files",
         f"  `{ROOT}/<service>/<command>.rst`.",
         "  Row `id` = `<service>/<command>` (the id names the label; never show it to a model).\n",
         "## Rules (exact)\n",
         "1. Services ranked by number of `.rst` files directly in the service folder (sub-folders",
         "   such as `ec2/wait/` not counted or used); the top 8 are the labels. Ranking (top 10): " +
         ", ".join(f"{s} {len(services[s])}" for s in ranked[:10]) + ".",
         "2. File split into paragraphs at blank lines (CRLF normalised). Title = the first",
         "   `**bold**` span in the first paragraph, with a leading `Example N:` removed.",
         "3. First prose paragraph = the first later paragraph, before the next `**bold**` example",
         "   title, that is not indented (code/output block), not a bare label line ending in `::`",
         "   (`Command::`, `Output::`), does not start with `aws ` or `.. `, and does not start",
         "   with `For more information`.",
         "4. rst unwrapped to plain words: ``` ``lit`` ``` -> `lit`, `*em*`/`**b**` -> text,",
         "   `` `text <url>`__ `` -> `text`, `:role:`x`` -> `x`; trailing ` ::` removed, trailing",
         "   `::` -> `:`; whitespace collapsed.",
         "5. text = title + ' ' + paragraph (either may be missing, see counts), cut to the first",
         "   60 whitespace-separated words. Texts under 4 words dropped.",
         "6. Exact case-insensitive dedup (keep smallest id); texts under two labels dropped.",
         "7. Per label `random.Random(13).sample` of at most 150 (labels sorted, rows sorted by",
         "   id), then one shuffle of all rows with the same generator.\n",
         "## Counts\n",
         "| label | rows | files in folder | usable after rules/dedup |", "|---|---|---|---|"]
    for lab in sorted(counts):
        L.append(f"| {lab} | {counts[lab]} | {len(services[lab])} | {avail[lab]} |")
    L.append(f"| **total** | **{sum(counts.values())}** | | |\n")
    for k, v in sorted(stats.items()):
        L.append(f"- {k}: {v}")
    if odd:
        L.append("\nOdd source files:")
        L.extend(f"- {o}" for o in odd)
    L += ["- Many source files use CRLF line endings; the older s3api files have no bold title;",
          "  older apigateway/ec2 files have `Command::` instead of a prose paragraph.",
          "- Almost every paragraph names the command (`The following create-vpc example ...`),",
          "  which is how the source is written; command names are not removed.\n",
          "## Licence\n",
          "awscli is licensed under the Apache License 2.0 (`awscli-1.45.11.dist-info/LICENSE.txt`);",
          "the example texts are part of that distribution."]
    with open(os.path.join(HERE, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
