#!/usr/bin/env python3
"""Build the `aws-examples` curation corpus: ~700 real AWS CLI example .rst files, raw.

One document per file in docs/, named <service>__<command>.txt (sub-folders joined with
"__", e.g. ec2__wait__nat-gateway-deleted.txt). Bytes are copied exactly as shipped
(CRLF line endings, trailing spaces and all). No dedup: exact duplicates are kept and counted.

Source: awscli 1.45.11 package data, <site-packages>/awscli/examples/**/*.rst
Run:    /root/.pyenv/versions/3.11.7/bin/python3 build.py
Writes: docs/*.txt, manifest.tsv, PROVENANCE.md (next to this file). Deterministic (seed 13).
"""
import collections
import hashlib
import os
import random
import shutil

SEED = 13
N_DOCS = 700
HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/root/.pyenv/versions/3.11.7"
ROOT = f"{PY}/lib/python3.11/site-packages/awscli/examples"
AWSCLI_VERSION = "1.45.11"


def all_files():
    """{service: [relative paths]} for every .rst below a service folder."""
    by_service = collections.defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, ROOT)
        if rel_dir == ".":
            continue                  # global_options.rst / global_synopsis.rst: not examples
        for fn in sorted(filenames):
            if fn.endswith(".rst") and os.path.isfile(os.path.join(dirpath, fn)):
                by_service[rel_dir.split(os.sep)[0]].append(os.path.join(rel_dir, fn))
    return {s: sorted(v) for s, v in by_service.items()}


def doc_id(rel):
    return rel[:-4].replace(os.sep, "__")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    by_service = all_files()
    n_all = sum(len(v) for v in by_service.values())

    # stratified round-robin: every service shuffled, services visited in a shuffled order,
    # one file per service per round, until N_DOCS are taken
    rng = random.Random(SEED)
    queues = {}
    for s in sorted(by_service):
        q = list(by_service[s])
        rng.shuffle(q)
        queues[s] = q
    order = sorted(by_service)
    rng.shuffle(order)
    chosen, rnd = [], 0
    while len(chosen) < min(N_DOCS, n_all):
        for s in order:
            if rnd < len(queues[s]) and len(chosen) < N_DOCS:
                chosen.append(queues[s][rnd])
        rnd += 1

    docs = os.path.join(HERE, "docs")
    if os.path.isdir(docs):
        shutil.rmtree(docs)
    os.makedirs(docs)
    rows = []
    for rel in sorted(chosen):
        src = os.path.join(ROOT, rel)
        did = doc_id(rel)
        shutil.copyfile(src, os.path.join(docs, did + ".txt"))
        rows.append((did, rel.split(os.sep)[0], rel, os.path.getsize(src), sha(src)))
    with open(os.path.join(HERE, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("id\tservice\tsource_path\tbytes\tsha256\n")
        for r in rows:
            f.write("\t".join(map(str, r)) + "\n")

    # exact-duplicate statistics (byte-identical files)
    all_hash = collections.Counter(sha(os.path.join(ROOT, rel))
                                   for v in by_service.values() for rel in v)
    src_dup_groups = {h: n for h, n in all_hash.items() if n > 1}
    src_dup_files = sum(src_dup_groups.values())
    sample_hash = collections.Counter(r[4] for r in rows)
    smp_dup_groups = {h: n for h, n in sample_hash.items() if n > 1}
    crlf = sum(1 for r in rows if b"\r\n" in open(os.path.join(ROOT, r[2]), "rb").read())
    per_service = collections.Counter(r[1] for r in rows)
    total_bytes = sum(r[3] for r in rows)

    dup_examples = []
    by_hash = collections.defaultdict(list)
    for v in by_service.values():
        for rel in v:
            h = sha(os.path.join(ROOT, rel))
            if h in src_dup_groups:
                by_hash[h].append(rel)
    for h in sorted(by_hash, key=lambda h: (-len(by_hash[h]), by_hash[h][0])):
        dup_examples.append(", ".join(sorted(by_hash[h])))
    smp_dup_names = []
    by_hash_s = collections.defaultdict(list)
    for r in rows:
        if r[4] in smp_dup_groups:
            by_hash_s[r[4]].append(r[0])
    for h in sorted(by_hash_s, key=lambda h: by_hash_s[h][0]):
        smp_dup_names.append(", ".join(by_hash_s[h]))

    stats = dict(n_all=n_all, n_services=len(by_service), n_docs=len(rows),
                 src_dup_groups=len(src_dup_groups), src_dup_files=src_dup_files,
                 src_redundant=src_dup_files - len(src_dup_groups),
                 smp_dup_groups=len(smp_dup_groups), smp_dup_files=sum(smp_dup_groups.values()),
                 crlf=crlf, total_bytes=total_bytes,
                 min_per_service=min(per_service.values()), max_per_service=max(per_service.values()),
                 services_in_sample=len(per_service))
    write_provenance(stats, per_service, dup_examples, smp_dup_names)
    print(f"source files={n_all} services={len(by_service)} docs={len(rows)} bytes={total_bytes}")
    print(f"services in sample={len(per_service)} per-service {stats['min_per_service']}..{stats['max_per_service']}")
    print(f"source exact-duplicate groups={stats['src_dup_groups']} files in them={src_dup_files}")
    print(f"sample exact-duplicate groups={stats['smp_dup_groups']} files in them={stats['smp_dup_files']}")
    print(f"docs with CRLF={crlf}")


def write_provenance(st, per_service, dup_examples, smp_dup_names):
    L = ["# aws-examples (curation corpus) — provenance\n",
         "Built: 2026-12-03 by `build.py` (seed 13, stdlib Python 3.11.7). Built blind: no model,",
         "embedding, classifier or retrieval was run on the data.\n",
         "## Source\n",
         f"- Python package `awscli` {AWSCLI_VERSION} (pip, in `{PY}`), files",
         f"  `{ROOT}/<service>/[<sub>/]<command>.rst` ({st['n_all']} files, {st['n_services']} services;",
         "  the two top-level files `global_options.rst`, `global_synopsis.rst` are not examples and",
         "  are excluded).",
         "- `docs/<id>.txt`: id = path below `examples/` without `.rst`, `/` -> `__`",
         "  (e.g. `ec2__create-vpc`, `ec2__wait__nat-gateway-deleted`). `manifest.tsv` gives id,",
         "  service, source path, size and sha256 of every document.\n",
         "## Rules (exact)\n",
         "1. Sampling (stratified across all services): `rng = random.Random(13)`; for each service",
         "   in sorted order its sorted file list is shuffled with `rng`; the sorted service list is",
         "   shuffled with `rng`; then round-robin, one file per service per round (services with",
         "   no files left are skipped), until 700 files are taken.",
         "2. Each file is copied byte for byte (no cleaning, no re-encoding: CRLF endings, trailing",
         "   whitespace, rst markup, code and JSON output blocks are kept as shipped).",
         "3. No dedup: byte-identical files are kept.\n",
         "## Counts\n",
         f"- documents: {st['n_docs']}, total {st['total_bytes']} bytes; services represented:",
         f"  {st['services_in_sample']} of {st['n_services']}, {st['min_per_service']}-{st['max_per_service']} documents each.",
         f"- documents with CRLF line endings: {st['crlf']}.",
         f"- exact duplicates in the whole source: {st['src_dup_groups']} groups of byte-identical",
         f"  files, {st['src_dup_files']} files in them ({st['src_redundant']} redundant copies).",
         f"- exact duplicates in this sample: {st['smp_dup_groups']} groups, {st['smp_dup_files']} files in them."]
    if smp_dup_names:
        L.append("  Sample duplicate groups: " + "; ".join(smp_dup_names) + ".")
    if dup_examples:
        L.append("- Source duplicate groups (all):")
        L += [f"  - {d}" for d in dup_examples]
    L += ["- Oddity: the `networkmanager/` folder ships S3 examples (`aws s3api ...`, e.g.",
          "  `networkmanager/get-object-retention.rst`), byte-identical to files in `s3api/`; this",
          "  accounts for 11 of the source duplicate groups. Boilerplate is as shipped: most files",
          "  follow `**To ...**` / `The following ... example ...` / code / `Output::` / JSON /",
          "  `For more information, see ...`; older files use `Command::` and no prose."]
    L.append("\nDocuments per service:\n")
    L.append("| service | docs |\n|---|---|")
    for s in sorted(per_service):
        L.append(f"| {s} | {per_service[s]} |")
    L += ["\n## Licence\n",
          "awscli is licensed under the Apache License 2.0 (`awscli-1.45.11.dist-info/LICENSE.txt`);",
          "the example files are part of that distribution and are copied unchanged."]
    with open(os.path.join(HERE, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
