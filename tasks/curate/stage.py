"""The curation stage: read and validate, run the blocks, split, write, version with DVC.

Three phases, so that memory stays bounded and shards can run anywhere:

1. ``plan_curation`` (driver) streams each source once: valid records go to shard files of at
   most ``curation.shard_size`` records, unreadable ones straight to the quarantine.
2. ``curate_shard`` (``tasks/curate/shards.py``; mapped Prefect tasks, optionally on Dask)
   runs the per-record blocks over each shard: normalise, quality heuristics, PII redaction.
3. ``finish_curation`` (driver) runs the blocks that compare records with each other over
   compact arrays (content keys, labels, LSH band keys): label conflicts, exact dedup, near
   dedup (MinHash LSH), optional semantic dedup; then a seeded, stratified, leakage-free
   split, decontamination of train against eval, and one streaming pass that writes the
   outputs. Texts are read back from the shards only where a block needs them (near-dup
   candidates, the eval n-grams).

Outputs, in one folder per spec name: ``train.jsonl`` and ``eval.jsonl`` (records keep their
ids), ``quarantine.jsonl`` (file, line, reason, raw), ``dropped.jsonl`` (record + block +
reason + detail), ``report.md`` and ``funnel.png``. The accounting identity
input = kept + dropped + quarantined always holds (and is checked). Results do not depend on
the shard size or the task runner: the shards only hold per-record decisions, and the global
blocks see records in input order (a test checks a 2-worker Dask run against one process).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.errors import DataError, check
from tasks.curate.blocks import Removed, quarantine_row, removed_row
from tasks.curate.decontaminate import REASON as CONTAMINATED
from tasks.curate.decontaminate import DecontaminationSettings, contaminated
from tasks.curate.dedup import (
    Shingles,
    clusters,
    confirmed_pairs,
    conflicting_labels,
    first_of,
    near_detail,
    semantic_dedup,
    shared_buckets,
)
from tasks.curate.documents import read_folder
from tasks.curate.inputs import CurationInputs, block_names, global_blocks, record_steps
from tasks.curate.records import Fields, Quarantined, Record, iter_records, record_rows
from tasks.curate.shards import ShardJob, ShardResult, curate_shard, read_stored, stored_row
from tasks.curate.split import held_out
from tasks.curate.version import version_in_project, version_with_dvc

__all__ = ["CurationInputs", "curate_dataset", "finish_curation", "plan_curation"]

SOURCES = ("train", "eval")


@dataclass
class CurationPlan:
    """Phase 1's result: the shard jobs, and what reading set aside."""

    out: Path
    work: Path
    jobs: list[ShardJob] = field(default_factory=list)
    input: int = 0  # records read, over all sources (blank lines are not records)
    read_quarantined: int = 0

    @property
    def read_quarantine(self) -> Path:
        """Records quarantined while reading (broken lines, wrong shapes, ...)."""
        return self.work / "read.quarantine.jsonl"


def _source_items(path: Path, fields: Fields) -> Iterator[Record | Quarantined | None]:
    if path.is_dir():
        folder = read_folder(path, labelled=fields.label is not None)
        return chain(folder.records, folder.quarantined)
    return iter_records(path, fields)


def plan_curation(inputs: CurationInputs, out_root: Path) -> CurationPlan:
    """Phase 1: stream each source once into shard files and the read quarantine.

    Raises:
        DataError: When a source cannot be opened or has an unsupported type.
    """
    out = out_root / inputs.name
    if out.exists():
        shutil.rmtree(out)  # a stale file from an earlier run must not survive into this version
    plan = CurationPlan(out=out, work=out / ".shards")
    plan.work.mkdir(parents=True)
    size = inputs.blocks.shard_size
    sources = [("train", inputs.train)] + ([("eval", inputs.eval)] if inputs.eval else [])
    with plan.read_quarantine.open("w", encoding="utf-8") as quarantine:
        for source, path in sources:
            shard: TextIO | None = None
            in_shard = 0
            for item in _source_items(path, inputs.fields):
                if item is None:
                    continue  # a blank line
                plan.input += 1
                if isinstance(item, Quarantined):
                    plan.read_quarantined += 1
                    quarantine.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                    continue
                if shard is None or in_shard == size:
                    if shard is not None:
                        shard.close()
                    number = sum(job.source == source for job in plan.jobs)
                    job = ShardJob(source, number, plan.work / f"{source}-{number:05d}.jsonl")
                    plan.jobs.append(job)
                    shard, in_shard = job.path.open("w", encoding="utf-8"), 0
                shard.write(json.dumps(stored_row(item), ensure_ascii=False) + "\n")
                in_shard += 1
            if shard is not None:
                shard.close()
    return plan


@dataclass
class _Source:
    """One source's shard results joined in input order; positions index these arrays."""

    name: str
    results: list[ShardResult]
    ids: list[str]
    labels: list[str | None]
    keys: np.ndarray
    prompts: np.ndarray
    bands: np.ndarray
    steps: list[tuple[str, int]]
    removed: dict[int, Removed] = field(default_factory=dict)
    quarantined: set[int] = field(default_factory=set)

    @classmethod
    def join(cls, name: str, results: list[ShardResult], inputs: CurationInputs) -> _Source:
        steps: Counter[str] = Counter()
        for result in results:
            steps.update(dict(result.steps))
        names = record_steps(inputs)
        return cls(
            name=name,
            results=results,
            ids=[i for r in results for i in r.ids],
            labels=[label for r in results for label in r.labels],
            keys=np.concatenate([r.keys for r in results]) if results else np.empty(0, "S16"),
            prompts=(
                np.concatenate([r.prompts for r in results]) if results else np.empty(0, "S16")
            ),
            bands=np.concatenate([r.bands for r in results]) if results else np.empty((0, 0)),
            steps=[(n, steps[n]) for n in names],
        )

    def stream(
        self, wanted: Callable[[int], bool] = lambda _: True
    ) -> Iterator[tuple[int, Record]]:
        """(position, record) of the kept records ``wanted`` selects, read back from the shards."""
        position = 0
        for result in self.results:
            for record in read_stored(result.job.output("kept")):
                if wanted(position):
                    yield position, record
                position += 1

    def records(self, positions: set[int]) -> dict[int, Record]:
        """The kept records at ``positions`` (one pass over the shards)."""
        return dict(self.stream(positions.__contains__))

    def remove(
        self, position: int, block: str, reason: str, detail: str, quarantine: bool = False
    ) -> None:
        """Record a global block's decision about the record at ``position``."""
        placeholder = Record(id=self.ids[position], text="")  # the record is filled in on write
        self.removed[position] = Removed(placeholder, block, reason, detail)
        if quarantine:
            self.quarantined.add(position)


# --- the cross-record blocks ------------------------------------------------------------------
# Each takes the positions still kept and returns the ones it removes, having told ``src``
# why for each (``src.remove``: block, reason, detail). They need every record at once, so
# they run here, after the per-record blocks of every shard.


def label_conflicts_block(inputs: CurationInputs, src: _Source, alive: np.ndarray) -> np.ndarray:
    """Quarantine every record whose text also appears with another label."""
    conflicts = conflicting_labels(src.keys, src.labels, alive)
    for position, others in conflicts.items():
        detail = f"same text also labelled {others}"
        src.remove(position, "label_conflicts", "label conflict", detail, quarantine=True)
    return np.fromiter(conflicts, dtype=np.int64, count=len(conflicts))


def exact_dedup_block(inputs: CurationInputs, src: _Source, alive: np.ndarray) -> np.ndarray:
    """Drop every later copy of an exactly equal (normalised) text."""
    first = first_of(src.keys, alive)
    later = first != alive
    for position, original in zip(alive[later], first[later], strict=True):
        src.remove(int(position), "exact_dedup", "exact duplicate", f"of id {src.ids[original]}")
    return alive[later]


def near_dedup_block(inputs: CurationInputs, src: _Source, alive: np.ndarray) -> np.ndarray:
    """Drop the later record of every near-duplicate pair (MinHash LSH, confirmed by Jaccard)."""
    pairs = _near_pairs(inputs, src, alive, all_pairs=False)
    for earlier, later, similarity in pairs:
        detail = near_detail(src.ids[earlier], similarity)
        src.remove(later, "near_dedup", "near duplicate", detail)
    return np.array([later for _, later, _ in pairs], dtype=np.int64)


def semantic_dedup_block(inputs: CurationInputs, src: _Source, alive: np.ndarray) -> np.ndarray:
    """Drop records whose embedding is too close to an earlier one's (memory grows with data)."""
    found = src.records(set(alive.tolist()))
    position_of = {src.ids[p]: p for p in alive.tolist()}  # ids are unique in a source
    records = [found[p] for p in alive.tolist()]
    settings = inputs.blocks.semantic_dedup
    outcome = semantic_dedup(records, settings.threshold, inputs.base_model, inputs.allow_pickle)
    for item in outcome.dropped:
        src.remove(position_of[item.record.id], "semantic_dedup", item.reason, item.detail)
    return np.array([position_of[i.record.id] for i in outcome.dropped], dtype=np.int64)


CrossRecordBlock = Callable[[CurationInputs, _Source, np.ndarray], np.ndarray]
#: The cross-record blocks by name; ``global_blocks(inputs)`` says which run, in what order.
CROSS_RECORD_BLOCKS: dict[str, CrossRecordBlock] = {
    "label_conflicts": label_conflicts_block,
    "exact_dedup": exact_dedup_block,
    "near_dedup": near_dedup_block,
    "semantic_dedup": semantic_dedup_block,
}


def _global_blocks(inputs: CurationInputs, src: _Source) -> np.ndarray:
    """Run the cross-record blocks in order; returns the positions still kept.

    Raises:
        InvariantError: When a block removes a position twice or one it was not given.
    """
    alive = np.arange(len(src.ids))
    for name in global_blocks(inputs):
        gone = CROSS_RECORD_BLOCKS[name](inputs, src, alive)
        check(
            len(set(gone.tolist())) == len(gone) and bool(np.isin(gone, alive).all()),
            f"block {name} removed records it was not given, or one twice",
        )
        alive = alive[~np.isin(alive, gone)]
        src.steps.append((name, len(alive)))
    return alive


def _near_pairs(
    inputs: CurationInputs, src: _Source, alive: np.ndarray, all_pairs: bool
) -> list[tuple[int, int, float]]:
    """Confirmed near-duplicate pairs among ``alive`` (texts read only for LSH candidates)."""
    params = inputs.near_params
    shared = shared_buckets(src.bands, alive)
    positions = shared.records
    found = src.records(set(positions.tolist()))
    shingles = Shingles.of([found[p] for p in positions.tolist()], params.ngram)
    return confirmed_pairs(shingles, positions, shared, params, all_pairs)


def _split(inputs: CurationInputs, src: _Source, alive: np.ndarray) -> set[int]:
    """Eval positions: stratified and leakage-free (near-duplicate clusters stay together).

    With near dedup on, no two kept records are near duplicates (the same LSH would find
    them), so only a run with near dedup off needs the clustering pass. Records with the same
    prompt stay together too: a KTO prompt's rated completions, or any repeated prompt that
    dedup let through, land on one side.
    """
    pairs: list[tuple[int, int, float]] = []
    if not inputs.blocks.near_dedup.enabled:
        local = {int(p): n for n, p in enumerate(alive)}
        pairs = [(local[a], local[b], s) for a, b, s in _near_pairs(inputs, src, alive, True)]
    first = first_of(src.prompts, alive)
    repeated = np.flatnonzero(first != alive)  # ``alive`` is ascending: indexes are local
    firsts = np.searchsorted(alive, first[repeated])
    pairs += [(int(f), int(n), 1.0) for f, n in zip(firsts, repeated, strict=True)]
    groups = clusters(len(alive), pairs) if pairs else None
    chosen = held_out([src.labels[p] for p in alive], inputs.eval_fraction, inputs.seed, groups)
    return {int(alive[n]) for n in chosen}


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


def _label_table(train_counts: Counter[str | None], eval_counts: Counter[str | None]) -> str:
    rows = ["| label | train | eval |", "|---|--:|--:|"]
    for label in sorted(set(train_counts) | set(eval_counts), key=str):
        rows.append(f"| {label} | {train_counts[label]} | {eval_counts[label]} |")
    return "\n".join(rows)


def _report(summary: dict[str, Any], reasons: Counter[str], table: str) -> str:
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


@dataclass
class _Written:
    """Counts from the output pass."""

    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    quarantined: Counter[str] = field(default_factory=Counter)  # by reason (before any ':')
    train: Counter[str | None] = field(default_factory=Counter)  # by label
    eval: Counter[str | None] = field(default_factory=Counter)


def _copy_rows(path: Path, out: TextIO, reasons: Counter[str], short: bool = False) -> None:
    """Append a shard's rows to ``out``, counting reasons (up to the first ':' if ``short``)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            out.write(line)
            reason = json.loads(line)["reason"]
            reasons[reason.split(":")[0] if short else reason] += 1


def _write_outputs(
    plan: CurationPlan,
    sources: dict[str, _Source],
    roles: dict[str, dict[int, str]],
    write_sets: bool,
) -> _Written:
    """One pass over the shards: every record lands in exactly one output file."""
    out, written = plan.out, _Written()
    names = ("quarantine", "dropped") + (("train", "eval") if write_sets else ())
    files = {name: (out / f"{name}.jsonl").open("w", encoding="utf-8") for name in names}
    try:
        _copy_rows(plan.read_quarantine, files["quarantine"], written.quarantined, True)
        for job in plan.jobs:
            _copy_rows(job.output("quarantine"), files["quarantine"], written.quarantined, True)
            _copy_rows(job.output("dropped"), files["dropped"], written.dropped)
        for name, src in sources.items():
            role = roles[name]
            for position, record in src.stream():
                if position in src.removed:
                    item = replace(src.removed[position], record=record)
                    if position in src.quarantined:
                        row = asdict(quarantine_row(item))
                        files["quarantine"].write(json.dumps(row, ensure_ascii=False) + "\n")
                        written.quarantined[item.reason] += 1
                    else:
                        row = removed_row(item)
                        files["dropped"].write(json.dumps(row, ensure_ascii=False) + "\n")
                        written.dropped[item.reason] += 1
                elif write_sets:
                    side = role[position]
                    (row,) = record_rows([record])
                    files[side].write(json.dumps(row, ensure_ascii=False) + "\n")
                    getattr(written, side)[record.label] += 1
    finally:
        for handle in files.values():
            handle.close()
    return written


def _merge_steps(sources: dict[str, _Source]) -> list[tuple[str, int]]:
    totals: Counter[str] = Counter()
    order: list[str] = []
    for src in sources.values():
        for name, n in src.steps:
            if name not in totals:
                order.append(name)
            totals[name] += n
    return [(name, totals[name]) for name in order]


def finish_curation(
    inputs: CurationInputs, plan: CurationPlan, results: list[ShardResult], dvc_root: Path
) -> dict[str, Any]:
    """Phase 3: global blocks, split, decontamination, outputs, report and DVC version.

    Args:
        inputs: What the spec asked for.
        plan: Phase 1's shards.
        results: Every shard's result (any order).
        dvc_root: DVC repository that versions the outputs.

    Returns:
        Counts (``input``, ``kept``, ``dropped`` by reason, ``quarantined``), the funnel, PII
        counts, output paths and the DVC hash.

    Raises:
        DataError: When no usable records remain, or a classifier would see a single label.
            The quarantine and dropped files are written first, so nothing is lost.
    """
    try:
        return _finish(inputs, plan, results, dvc_root)
    finally:
        shutil.rmtree(plan.work, ignore_errors=True)


def _finish(
    inputs: CurationInputs, plan: CurationPlan, results: list[ShardResult], dvc_root: Path
) -> dict[str, Any]:
    out = plan.out
    ordered = sorted(results, key=lambda r: (SOURCES.index(r.job.source), r.job.number))
    names = ["train"] + (["eval"] if inputs.eval else [])
    sources = {
        name: _Source.join(name, [r for r in ordered if r.job.source == name], inputs)
        for name in names
    }
    alive = {name: _global_blocks(inputs, src) for name, src in sources.items()}
    steps = _merge_steps(sources)
    train_src = sources["train"]
    roles: dict[str, dict[int, str]] = {name: {} for name in names}
    problem = None
    if len(alive["train"]) == 0:
        dropped = sum(sum(r.dropped.values()) for r in results) + len(train_src.removed)
        problem = (
            f"{inputs.train}: no usable records left ({plan.read_quarantined} quarantined when "
            f"read, {dropped} dropped or quarantined by curation; see {out})"
        )
    elif "eval" in sources and len(alive["eval"]) == 0:
        problem = f"{inputs.eval}: no usable records left (see {out})"
    else:
        if "eval" in sources:
            eval_src, evaluation = sources["eval"], set(alive["eval"].tolist())
            train = set(alive["train"].tolist())
        else:
            eval_src, evaluation = train_src, _split(inputs, train_src, alive["train"])
            train = set(alive["train"].tolist()) - evaluation
        cfg = inputs.blocks.decontaminate
        if cfg.enabled:
            found = list(
                contaminated(
                    lambda: train_src.stream(train.__contains__),
                    (r for _, r in eval_src.stream(evaluation.__contains__)),
                    len(train) + len(evaluation),
                    DecontaminationSettings(cfg.ngram, cfg.min_share, cfg.boilerplate),
                )
            )
            for position, detail in found:
                train_src.remove(position, "decontaminate", CONTAMINATED, detail)
                train.discard(position)
            steps.append(("decontaminate", len(train) + len(evaluation)))
        roles["train"] |= dict.fromkeys(train, "train")
        roles[eval_src.name] |= dict.fromkeys(evaluation, "eval")
        if inputs.needs_labels and len({train_src.labels[p] for p in train}) < 2:
            problem = f"{inputs.train}: a classifier needs at least 2 labels in the training data"
        elif not evaluation:
            problem = f"{inputs.train}: too few records to hold any out for evaluation"
    steps.insert(0, ("input", plan.input))
    written = _write_outputs(plan, sources, roles, write_sets=problem is None)
    if problem is not None:
        raise DataError(problem)
    kept = sum(written.train.values()) + sum(written.eval.values())
    n_dropped, n_quarantined = sum(written.dropped.values()), sum(written.quarantined.values())
    # The identity every curation run must satisfy; a failure here is a bug, not bad data.
    check(
        plan.input == kept + n_dropped + n_quarantined,
        f"curation lost records: input {plan.input}, kept {kept}, "
        f"dropped {n_dropped}, quarantined {n_quarantined}",
    )
    counts: Counter[str] = Counter()
    for result in results:
        counts.update(result.counts)
    labels = {label for label in chain(written.train, written.eval) if label is not None}
    summary: dict[str, Any] = {
        "name": inputs.name,
        "input": plan.input,
        "kept": kept,
        "dropped": dict(written.dropped.most_common()),
        "quarantined": n_quarantined,
        "train_examples": sum(written.train.values()),
        "eval_examples": sum(written.eval.values()),
        "labels": sorted(labels),
        "normalised": counts.get("normalised", 0),
        "pii": {
            k.removeprefix("pii."): v for k, v in sorted(counts.items()) if k.startswith("pii.")
        },
        "funnel": steps,
        "blocks": block_names(inputs),
        "shards": len(plan.jobs),
        "shard_processes": len({r.process for r in results}),
        "output": str(out),
        "train_file": str(out / "train.jsonl"),
        "eval_file": str(out / "eval.jsonl"),
        "quarantine": str(out / "quarantine.jsonl"),
        "dropped_file": str(out / "dropped.jsonl"),
        "report": str(out / "report.md"),
        "funnel_chart": str(out / "funnel.png"),
    }
    funnel_png(steps, out / "funnel.png", f"curation funnel: {inputs.name}")
    # The report and the chart are not part of DVC's hash (``tasks.curate.version.DERIVED``):
    # the hash that gates retraining moves with the data only.
    table = _label_table(written.train, written.eval)
    (out / "report.md").write_text(_report(summary, written.quarantined, table))
    shutil.rmtree(plan.work)  # scratch; not part of the versioned dataset
    if inputs.version_in == "project":
        summary["data_hash"], dvc_file = version_in_project(out, dvc_root)
        summary["dvc_file"] = str(dvc_file)
    else:
        summary["data_hash"] = version_with_dvc(out, dvc_root)
    return summary


def curate_dataset(inputs: CurationInputs, out_root: Path, dvc_root: Path) -> dict[str, Any]:
    """All three phases in this process (the flow maps the shards as Prefect tasks instead).

    Args:
        inputs: What to read, which blocks to run and how to split.
        out_root: Parent folder of the per-spec output folder.
        dvc_root: DVC repository that versions the outputs.

    Returns:
        The curation summary (see ``finish_curation``).
    """
    plan = plan_curation(inputs, out_root)
    try:
        results = [curate_shard(job, inputs) for job in plan.jobs]
    except BaseException:
        shutil.rmtree(plan.work, ignore_errors=True)
        raise
    return finish_curation(inputs, plan, results, dvc_root)


plan_curation_task = task(name="plan_curation", cache_policy=NO_CACHE)(plan_curation)
curate_shard_task = task(name="curate_shard", cache_policy=NO_CACHE)(curate_shard)
finish_curation_task = task(name="finish_curation", cache_policy=NO_CACHE)(finish_curation)
