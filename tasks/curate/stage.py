"""The curation stage: read and validate, split, write the outputs, version them with DVC.

Outputs, in one folder per spec name: ``train.jsonl`` and ``eval.jsonl`` (records keep their
ids), ``quarantine.jsonl`` (file, line, reason, raw), ``dropped.jsonl`` (record + reason) and
``report.md``. The accounting identity input = kept + dropped + quarantined always holds.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import DataError
from tasks.curate.records import (
    Fields,
    Quarantined,
    ReadResult,
    Record,
    read_records,
    record_rows,
    write_jsonl,
)
from tasks.curate.split import stratified_split
from tasks.curate.version import version_with_dvc


@dataclass(frozen=True)
class CurationInputs:
    """The flat arguments curation needs (taken from the spec)."""

    name: str
    train: Path
    eval: Path | None
    fields: Fields
    eval_fraction: float
    seed: int
    needs_labels: bool


def _read(path: Path, fields: Fields) -> ReadResult:
    if path.is_dir():
        raise DataError(f"{path}: a folder of documents has no labels; expected a labelled file")
    return read_records(path, fields)


def _label_table(train: list[Record], evaluation: list[Record]) -> str:
    train_counts = Counter(r.label for r in train)
    eval_counts = Counter(r.label for r in evaluation)
    rows = ["| label | train | eval |", "|---|--:|--:|"]
    for label in sorted(set(train_counts) | set(eval_counts), key=str):
        rows.append(f"| {label} | {train_counts[label]} | {eval_counts[label]} |")
    return "\n".join(rows)


def _report(summary: dict[str, Any], quarantine: list[Quarantined], table: str) -> str:
    reasons = Counter(q.reason for q in quarantine)
    lines = [
        f"# Curation report: {summary['name']}",
        "",
        f"- input records: {summary['input']}",
        f"- kept: {summary['kept']} (train {summary['train_examples']}, "
        f"eval {summary['eval_examples']})",
        f"- dropped: {sum(summary['dropped'].values())}",
        f"- quarantined: {summary['quarantined']}",
        "",
        "## Labels",
        "",
        table,
        "",
        "## Quarantine reasons",
        "",
    ]
    lines += [f"- {reason}: {n}" for reason, n in reasons.most_common()] or ["- none"]
    return "\n".join(lines) + "\n"


def curate_dataset(inputs: CurationInputs, out_root: Path, dvc_root: Path) -> dict[str, Any]:
    """Run curation and return its summary (the ``curation`` object of the CLI's JSON).

    Args:
        inputs: What to read and how to split.
        out_root: Parent folder of the per-spec output folder.
        dvc_root: DVC repository that versions the outputs.

    Returns:
        Counts (``input``, ``kept``, ``dropped``, ``quarantined``), output paths and the DVC hash.

    Raises:
        DataError: When no usable records remain, or a classifier would see a single label.
            The quarantine file is written first, so nothing is lost.
    """
    out = out_root / inputs.name
    if out.exists():
        shutil.rmtree(out)  # a stale file from an earlier run must not survive into this version
    out.mkdir(parents=True)
    train_read = _read(inputs.train, inputs.fields)
    eval_read = _read(inputs.eval, inputs.fields) if inputs.eval else None
    quarantine = train_read.quarantined + (eval_read.quarantined if eval_read else [])
    write_jsonl(out / "quarantine.jsonl", [asdict(q) for q in quarantine])
    if not train_read.records:
        raise DataError(
            f"{inputs.train}: no usable records ({len(train_read.quarantined)} quarantined, "
            f"reasons in {out / 'quarantine.jsonl'})"
        )
    if eval_read is not None:
        if not eval_read.records:
            raise DataError(f"{inputs.eval}: no usable records (see {out / 'quarantine.jsonl'})")
        train, evaluation = train_read.records, eval_read.records
    else:
        train, evaluation = stratified_split(train_read.records, inputs.eval_fraction, inputs.seed)
    if inputs.needs_labels and len({r.label for r in train}) < 2:
        raise DataError(
            f"{inputs.train}: a classifier needs at least 2 labels in the training data"
        )
    if not evaluation:
        raise DataError(f"{inputs.train}: too few records to hold any out for evaluation")
    write_jsonl(out / "train.jsonl", record_rows(train))
    write_jsonl(out / "eval.jsonl", record_rows(evaluation))
    write_jsonl(out / "dropped.jsonl", [])
    summary: dict[str, Any] = {
        "name": inputs.name,
        "input": train_read.input + (eval_read.input if eval_read else 0),
        "kept": len(train) + len(evaluation),
        "dropped": {},
        "quarantined": len(quarantine),
        "train_examples": len(train),
        "eval_examples": len(evaluation),
        "labels": sorted({r.label for r in train + evaluation if r.label is not None}),
        "output": str(out),
        "train_file": str(out / "train.jsonl"),
        "eval_file": str(out / "eval.jsonl"),
        "quarantine": str(out / "quarantine.jsonl"),
        "dropped_file": str(out / "dropped.jsonl"),
        "report": str(out / "report.md"),
    }
    # Written before hashing so that DVC's hash covers the report too (which is why the report
    # itself cannot name the hash; the summary and the MLflow run carry it).
    (out / "report.md").write_text(_report(summary, quarantine, _label_table(train, evaluation)))
    summary["data_hash"] = version_with_dvc(out, dvc_root)
    return summary


curate_dataset_task = task(name="curate_dataset", cache_policy=NO_CACHE)(curate_dataset)
