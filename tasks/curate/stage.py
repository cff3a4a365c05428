"""The curation stage: read and validate, run the blocks, split, write, version with DVC.

Blocks (``tasks/curate/*.py``, each saying why it drops a record), in order: normalise,
quality heuristics, PII redaction, label conflicts, exact dedup, near dedup (MinHash LSH),
optional semantic dedup; then a seeded, stratified, leakage-free split; then decontamination of
train against eval. Outputs, in one folder per spec name: ``train.jsonl`` and ``eval.jsonl``
(records keep their ids), ``quarantine.jsonl`` (file, line, reason, raw), ``dropped.jsonl``
(record + block + reason + detail), ``report.md`` and ``funnel.png``. The accounting identity
input = kept + dropped + quarantined always holds (and is checked).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import DataError
from adaptflow.spec import CurationSpec
from tasks.curate.blocks import Block, Funnel, Removed, run_blocks
from tasks.curate.decontaminate import decontaminate
from tasks.curate.dedup import (
    NearDupParams,
    clusters,
    exact_dedup,
    label_conflicts,
    near_dedup,
    near_duplicate_pairs,
    semantic_dedup,
)
from tasks.curate.documents import read_folder
from tasks.curate.normalize import normalize
from tasks.curate.pii import redact_pii
from tasks.curate.quality import default_rules, quality_filter
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
    task: str = "classification"
    base_model: str = "minilm"
    blocks: CurationSpec = field(default_factory=CurationSpec)


def _near_params(inputs: CurationInputs) -> NearDupParams:
    near = inputs.blocks.near_dedup
    return NearDupParams(near.ngram, near.num_perm, near.threshold)


def build_blocks(inputs: CurationInputs) -> list[tuple[str, Block]]:
    """The blocks the spec switches on, in the order they run."""
    cfg = inputs.blocks
    blocks: list[tuple[str, Block]] = []
    if cfg.normalize:
        blocks.append(("normalize", normalize))
    if cfg.quality.enabled:
        rules = replace(default_rules(inputs.task), **cfg.quality.overrides())
        blocks.append(("quality", partial(quality_filter, rules=rules)))
    if cfg.pii:
        blocks.append(("pii", redact_pii))
    if cfg.label_conflicts and inputs.needs_labels:
        blocks.append(("label_conflicts", label_conflicts))
    if cfg.exact_dedup:
        blocks.append(("exact_dedup", exact_dedup))
    if cfg.near_dedup.enabled:
        blocks.append(("near_dedup", partial(near_dedup, params=_near_params(inputs))))
    if cfg.semantic_dedup.enabled:
        threshold = cfg.semantic_dedup.threshold
        blocks.append(
            (
                "semantic_dedup",
                partial(semantic_dedup, threshold=threshold, base_model=inputs.base_model),
            )
        )
    return blocks


def _split(inputs: CurationInputs, records: list[Record]) -> tuple[list[Record], list[Record]]:
    """Stratified and leakage-free: near-duplicate clusters stay on one side.

    With near dedup on, no two kept records are near duplicates (the same LSH would find
    them), so only a run with near dedup off needs the clustering pass.
    """
    groups = None
    if not inputs.blocks.near_dedup.enabled:
        groups = clusters(len(records), near_duplicate_pairs(records, _near_params(inputs)))
    return stratified_split(records, inputs.eval_fraction, inputs.seed, groups)


def _removed_row(item: Removed) -> dict[str, Any]:
    (row,) = record_rows([item.record])
    return row | {
        "file": item.record.file,
        "line": item.record.line,
        "block": item.block,
        "reason": item.reason,
        "detail": item.detail,
    }


def _quarantine_row(item: Removed) -> Quarantined:
    (row,) = record_rows([item.record])
    raw = json.dumps(row, ensure_ascii=False)
    reason = f"{item.reason}: {item.detail}" if item.detail else item.reason
    return Quarantined(item.record.file, item.record.line, reason, raw)


def _merge(a: Funnel, b: Funnel) -> Funnel:
    steps = [(name, n + m) for (name, n), (_, m) in zip(a.steps, b.steps, strict=True)]
    return Funnel(steps, a.dropped + b.dropped, a.quarantined + b.quarantined, a.counts + b.counts)


def funnel_png(steps: list[tuple[str, int]], path: Path, title: str) -> Path:
    """Horizontal bars: records remaining after each step, top to bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in steps]
    counts = [n for _, n in steps]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(steps) + 1.4))
    bars = ax.barh(range(len(steps)), counts, color="tab:blue")
    ax.set_yticks(range(len(steps)), names)
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts], padding=3)
    ax.set_xlim(0, max(counts + [1]) * 1.15)
    ax.set_xlabel("records remaining")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def _read(path: Path, fields: Fields) -> ReadResult:
    if path.is_dir():
        return read_folder(path, labelled=fields.label is not None)
    return read_records(path, fields)


def _label_table(train: list[Record], evaluation: list[Record]) -> str:
    train_counts = Counter(r.label for r in train)
    eval_counts = Counter(r.label for r in evaluation)
    rows = ["| label | train | eval |", "|---|--:|--:|"]
    for label in sorted(set(train_counts) | set(eval_counts), key=str):
        rows.append(f"| {label} | {train_counts[label]} | {eval_counts[label]} |")
    return "\n".join(rows)


def _report(summary: dict[str, Any], quarantine: list[Quarantined], table: str) -> str:
    reasons = Counter(q.reason.split(":")[0] for q in quarantine)
    lines = [
        f"# Curation report: {summary['name']}",
        "",
        f"- input records: {summary['input']}",
        f"- kept: {summary['kept']} (train {summary['train_examples']}, "
        f"eval {summary['eval_examples']})",
        f"- dropped: {sum(summary['dropped'].values())}",
        f"- quarantined: {summary['quarantined']}",
        f"- normalised texts: {summary['normalised']}",
        "",
        "## Funnel (records remaining after each step; chart: funnel.png)",
        "",
        "| step | records |",
        "|---|--:|",
        *[f"| {name} | {n:,} |" for name, n in summary["funnel"]],
        "",
        "## Dropped, by reason (records in dropped.jsonl)",
        "",
        *([f"- {reason}: {n}" for reason, n in summary["dropped"].items()] or ["- none"]),
        "",
        "## Quarantine reasons (records in quarantine.jsonl)",
        "",
        *([f"- {reason}: {n}" for reason, n in reasons.most_common()] or ["- none"]),
        "",
        "## PII redacted (placeholders in the curated text)",
        "",
        *([f"- {kind}: {n}" for kind, n in summary["pii"].items()] or ["- none found"]),
        "",
        "## Labels",
        "",
        table,
    ]
    return "\n".join(lines) + "\n"


def curate_dataset(inputs: CurationInputs, out_root: Path, dvc_root: Path) -> dict[str, Any]:
    """Run curation and return its summary (the ``curation`` object of the CLI's JSON).

    Args:
        inputs: What to read, which blocks to run and how to split.
        out_root: Parent folder of the per-spec output folder.
        dvc_root: DVC repository that versions the outputs.

    Returns:
        Counts (``input``, ``kept``, ``dropped`` by reason, ``quarantined``), the funnel, PII
        counts, output paths and the DVC hash.

    Raises:
        DataError: When no usable records remain, or a classifier would see a single label.
            The quarantine and dropped files are written first, so nothing is lost.
    """
    out = out_root / inputs.name
    if out.exists():
        shutil.rmtree(out)  # a stale file from an earlier run must not survive into this version
    out.mkdir(parents=True)
    blocks = build_blocks(inputs)
    train_read = _read(inputs.train, inputs.fields)
    eval_read = _read(inputs.eval, inputs.fields) if inputs.eval else None
    total_input = train_read.input + (eval_read.input if eval_read else 0)
    train, funnel = run_blocks(
        train_read.records, blocks, Funnel(steps=[("valid", len(train_read.records))])
    )
    evaluation: list[Record] = []
    if eval_read is not None:
        evaluation, eval_funnel = run_blocks(
            eval_read.records, blocks, Funnel(steps=[("valid", len(eval_read.records))])
        )
        funnel = _merge(funnel, eval_funnel)
    funnel.steps.insert(0, ("input", total_input))
    quarantine = train_read.quarantined + (eval_read.quarantined if eval_read else [])
    quarantine += [_quarantine_row(item) for item in funnel.quarantined]

    def write_set_aside() -> None:
        write_jsonl(out / "quarantine.jsonl", [asdict(q) for q in quarantine])
        write_jsonl(out / "dropped.jsonl", [_removed_row(item) for item in funnel.dropped])

    write_set_aside()
    if not train:
        raise DataError(
            f"{inputs.train}: no usable records left ({len(train_read.quarantined)} quarantined "
            f"when read, {len(funnel.dropped)} dropped by curation; see {out})"
        )
    if eval_read is not None:
        if not evaluation:
            raise DataError(f"{inputs.eval}: no usable records left (see {out})")
    else:
        train, evaluation = _split(inputs, train)
    if inputs.blocks.decontaminate.enabled:
        outcome = decontaminate(train, evaluation, inputs.blocks.decontaminate.ngram)
        train = outcome.kept
        funnel.dropped += outcome.dropped
        funnel.steps.append(("decontaminate", len(train) + len(evaluation)))
        write_set_aside()
    if inputs.needs_labels and len({r.label for r in train}) < 2:
        raise DataError(
            f"{inputs.train}: a classifier needs at least 2 labels in the training data"
        )
    if not evaluation:
        raise DataError(f"{inputs.train}: too few records to hold any out for evaluation")
    write_jsonl(out / "train.jsonl", record_rows(train))
    write_jsonl(out / "eval.jsonl", record_rows(evaluation))
    dropped = Counter(item.reason for item in funnel.dropped)
    kept = len(train) + len(evaluation)
    # The identity every curation run must satisfy; a failure here is a bug, not bad data.
    assert total_input == kept + len(funnel.dropped) + len(quarantine), (
        f"curation lost records: input {total_input}, kept {kept}, "
        f"dropped {len(funnel.dropped)}, quarantined {len(quarantine)}"
    )
    summary: dict[str, Any] = {
        "name": inputs.name,
        "input": total_input,
        "kept": kept,
        "dropped": dict(dropped.most_common()),
        "quarantined": len(quarantine),
        "train_examples": len(train),
        "eval_examples": len(evaluation),
        "labels": sorted({r.label for r in train + evaluation if r.label is not None}),
        "normalised": funnel.counts.get("normalised", 0),
        "pii": {
            k.removeprefix("pii."): v
            for k, v in sorted(funnel.counts.items())
            if k.startswith("pii.")
        },
        "funnel": funnel.steps,
        "blocks": [name for name, _ in blocks]
        + (["decontaminate"] if inputs.blocks.decontaminate.enabled else []),
        "output": str(out),
        "train_file": str(out / "train.jsonl"),
        "eval_file": str(out / "eval.jsonl"),
        "quarantine": str(out / "quarantine.jsonl"),
        "dropped_file": str(out / "dropped.jsonl"),
        "report": str(out / "report.md"),
        "funnel_chart": str(out / "funnel.png"),
    }
    funnel_png(funnel.steps, out / "funnel.png", f"curation funnel: {inputs.name}")
    # Written before hashing so that DVC's hash covers the report too (which is why the report
    # itself cannot name the hash; the summary and the MLflow run carry it).
    (out / "report.md").write_text(_report(summary, quarantine, _label_table(train, evaluation)))
    summary["data_hash"] = version_with_dvc(out, dvc_root)
    return summary


curate_dataset_task = task(name="curate_dataset", cache_policy=NO_CACHE)(curate_dataset)
