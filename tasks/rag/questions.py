"""Curate a RAG use case's data: the knowledge folder's ingest report and the eval questions.

The curate stage of the ``rag`` path. It reads ``data.knowledge`` (every file indexed or
skipped with a reason, injection-like documents flagged) and ``data.questions`` (JSONL of
``question``, ``source`` (a file under the knowledge folder) and an optional reference
``answer``), and writes a versioned folder:

- ``questions.jsonl``: the questions kept (``id``, ``question``, ``source``, ``answer`` when
  given: the reference for generated answers);
- ``quarantine.jsonl``: questions that cannot be used (file, line, reason, raw): malformed
  lines, missing fields, a source that is not a readable knowledge file, one question asked of
  several sources;
- ``dropped.jsonl``: exact repeats of a kept question (same text, same source);
- ``knowledge.json``: the ingest report with each document's content hash, so DVC's hash of
  the folder changes whenever the knowledge does;
- ``report.md``.

input = kept + dropped + quarantined, always.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import DataError, check
from tasks.curate.normalize import normalize_text
from tasks.curate.records import Fields, Quarantined, Record, read_records, write_jsonl
from tasks.curate.version import version_with_dvc
from tasks.rag.ingest import IngestReport, ingest

DUPLICATE = "exact duplicate"


def _source_key(source: str) -> str:
    return Path(source.strip().replace("\\", "/")).as_posix().removeprefix("./")


def _set_aside(record: Record, reason: str) -> Quarantined:
    raw = json.dumps({"id": record.id, "question": record.text, "source": record.label})
    return Quarantined(record.file, record.line, reason, raw)


def sort_questions(
    records: list[Record], report: IngestReport
) -> tuple[list[Record], list[tuple[Record, str]], list[Quarantined]]:
    """Split read questions into kept, dropped (with why) and quarantined.

    Args:
        records: Questions as read (``text`` = question, ``label`` = source).
        report: The knowledge folder's ingest report.

    Returns:
        ``(kept, dropped, quarantined)``; kept questions carry normalised text and sources.
    """
    indexed = {d.source for d in report.documents}
    normalised = [
        Record(r.id, normalize_text(r.text), _source_key(r.label or ""), r.target, r.file, r.line)
        for r in records
    ]
    sources_of: dict[str, set[str]] = defaultdict(set)
    for record in normalised:
        sources_of[record.text.casefold()].add(record.label or "")
    kept: list[Record] = []
    dropped: list[tuple[Record, str]] = []
    quarantined: list[Quarantined] = []
    seen: dict[tuple[str, str], str] = {}
    for record in normalised:
        source = record.label or ""
        question = record.text.casefold()
        if source not in indexed:
            why = report.skipped.get(source)
            quarantined.append(
                _set_aside(
                    record,
                    f"source '{source}' was skipped at ingest: {why}"
                    if why
                    else f"source '{source}' is not a file under data.knowledge",
                )
            )
        elif len(sources_of[question]) > 1:
            others = ", ".join(sorted(sources_of[question] - {source}))
            quarantined.append(_set_aside(record, f"same question also asked of {others}"))
        elif (question, source) in seen:
            dropped.append((record, f"{DUPLICATE} of id {seen[question, source]}"))
        else:
            seen[question, source] = record.id
            kept.append(record)
    return kept, dropped, quarantined


def _report(summary: dict[str, Any], reasons: Counter[str]) -> str:
    ingest_report = summary["knowledge"]
    lines = [
        f"# Curation report: {summary['name']} (retrieval-qa)",
        "",
        f"- knowledge files: {ingest_report['files']} "
        f"({ingest_report['documents']} indexed, {len(ingest_report['skipped'])} skipped, "
        f"{len(ingest_report['flagged'])} flagged)",
        f"- questions: {summary['input']} read, {summary['kept']} kept, "
        f"{sum(summary['dropped'].values())} dropped, {summary['quarantined']} quarantined",
        "",
        "## Skipped knowledge files",
        "",
        *([f"- {s}: {why}" for s, why in ingest_report["skipped"].items()] or ["- none"]),
        "",
        "## Flagged knowledge files (text addressed to a model; indexed, fenced as data)",
        "",
        *(
            [f"- {s}: {', '.join(names)}" for s, names in ingest_report["flagged"].items()]
            or ["- none"]
        ),
        "",
        "## Questions set aside (quarantine.jsonl)",
        "",
        *([f"- {reason}: {n}" for reason, n in reasons.most_common()] or ["- none"]),
        "",
    ]
    return "\n".join(lines)


def curate_knowledge(
    name: str,
    knowledge: Path,
    questions: Path,
    id_field: str | None,
    out_root: Path,
    dvc_root: Path,
) -> dict[str, Any]:
    """Ingest ``knowledge``, curate ``questions`` against it, write and version the outputs.

    Args:
        name: The spec's name (the output folder under ``out_root``).
        knowledge: The knowledge folder.
        questions: The questions file (.jsonl, .csv or .parquet).
        id_field: The questions' id field (default: the line number).
        out_root: Parent of the per-spec output folder.
        dvc_root: DVC repository that versions the output folder.

    Returns:
        The curation summary: ``input``, ``kept``, ``dropped`` (by reason), ``quarantined``,
        ``knowledge`` (the ingest report), output paths and ``data_hash``.

    Raises:
        DataError: When the questions file cannot be read, no question is usable, or the
            knowledge folder holds no readable document (outputs are written first).
    """
    report = ingest(knowledge)
    fields = Fields(text="question", label="source", target="answer", id=id_field,
                    target_optional=True)  # fmt: skip
    read = read_records(questions, fields)
    kept, dropped, quarantined = sort_questions(read.records, report)
    quarantined = read.quarantined + quarantined
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("train.jsonl", "eval.jsonl", "funnel.png"):  # a classification run's outputs
        (out / stale).unlink(missing_ok=True)
    kept_rows = [
        {"id": r.id, "question": r.text, "source": r.label}
        | ({"answer": r.target} if r.target else {})
        for r in kept
    ]
    write_jsonl(out / "questions.jsonl", kept_rows)
    write_jsonl(
        out / "dropped.jsonl",
        [
            {"id": r.id, "question": r.text, "source": r.label, "file": r.file, "line": r.line}
            | {"block": "exact_dedup", "reason": DUPLICATE, "detail": why}
            for r, why in dropped
        ],
    )
    write_jsonl(out / "quarantine.jsonl", [asdict(q) for q in quarantined])
    hashes = {d.source: d.sha256 for d in report.documents}
    knowledge_json = report.as_dict() | {"sha256": hashes}
    (out / "knowledge.json").write_text(json.dumps(knowledge_json, indent=1) + "\n")
    n_input = len(read.records) + len(read.quarantined)
    check(
        n_input == len(kept) + len(dropped) + len(quarantined),
        f"question curation lost questions: input {n_input}, kept {len(kept)}, "
        f"dropped {len(dropped)}, quarantined {len(quarantined)}",
    )
    summary: dict[str, Any] = {
        "name": name,
        "input": n_input,
        "kept": len(kept),
        "dropped": {DUPLICATE: len(dropped)} if dropped else {},
        "quarantined": len(quarantined),
        "eval_examples": len(kept),
        "knowledge": report.as_dict(),
        "output": str(out),
        "questions_file": str(out / "questions.jsonl"),
        "eval_file": str(out / "questions.jsonl"),
        "quarantine": str(out / "quarantine.jsonl"),
        "dropped_file": str(out / "dropped.jsonl"),
        "report": str(out / "report.md"),
    }
    reasons = Counter(q.reason for q in quarantined)
    (out / "report.md").write_text(_report(summary, reasons))
    if not report.documents:
        raise DataError(f"{knowledge}: no readable document to index (see {out / 'report.md'})")
    if not kept:
        raise DataError(
            f"{questions}: no usable question ({len(quarantined)} quarantined, "
            f"{len(dropped)} dropped; see {out / 'quarantine.jsonl'})"
        )
    summary["data_hash"] = version_with_dvc(out, dvc_root)
    return summary


curate_knowledge_task = task(name="curate_knowledge", cache_policy=NO_CACHE)(curate_knowledge)
