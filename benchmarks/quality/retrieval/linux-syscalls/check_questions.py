#!/usr/bin/env python3
"""Structural check of questions.jsonl against knowledge/ (stdlib only; no retrieval).

Checks: valid JSON lines with exactly id/question/source, ids q001.. in order and unique,
questions unique, every source exists under knowledge/, at most 2 questions per source.
Exit status 1 on any problem.
"""
import collections
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    problems = []
    rows = []
    with open(os.path.join(HERE, "questions.jsonl"), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except ValueError as exc:
                problems.append("line %d: bad JSON (%s)" % (n, exc))
                continue
            if set(row) != {"id", "question", "source"}:
                problems.append("line %d: keys %s" % (n, sorted(row)))
            if row.get("id") != "q%03d" % n:
                problems.append("line %d: id %r" % (n, row.get("id")))
            if not os.path.isfile(os.path.join(HERE, "knowledge", row.get("source", ""))):
                problems.append("line %d: missing source %r" % (n, row.get("source")))
            rows.append(row)
    per = collections.Counter(r.get("source") for r in rows)
    problems += ["%s has %d questions" % (s, c) for s, c in per.items() if c > 2]
    dup = [q for q, c in collections.Counter(r.get("question") for r in rows).items() if c > 1]
    problems += ["duplicate question: %s" % q for q in dup]
    print("%d questions over %d files" % (len(rows), len(per)))
    for p in problems:
        print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
