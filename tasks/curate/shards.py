"""One shard of a curation run: the per-record blocks, then the compact arrays the driver needs.

A shard is a JSONL file of validated records (``stored_row``), at most ``curation.shard_size``
long. ``curate_shard`` reads it a chunk at a time, runs the per-record blocks (normalise,
quality, PII), writes the kept records and the set-aside ones to files next to it, and returns
what the global blocks need to compare records across shards without reading them again: a
content key, label and id per kept record, and its LSH band keys. Shards share nothing, so
they run as mapped Prefect tasks on any task runner (in-process, or Dask workers that see
the same folder).
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from tasks.curate.blocks import Funnel, quarantine_row, removed_row, run_blocks
from tasks.curate.dedup import Shingles, band_keys, content_keys, prompt_keys, signatures
from tasks.curate.inputs import CurationInputs, record_blocks, record_steps
from tasks.curate.records import Record

#: Records per chunk inside a shard (bounds a shard's memory, whatever its size).
CHUNK = 5_000


def stored_row(record: Record) -> dict[str, Any]:
    """A validated record as written to a shard file (with where it was read)."""
    return asdict(record)


def stored_record(line: str) -> Record:
    """The inverse of ``stored_row`` for one JSONL line."""
    return Record(**json.loads(line))


def read_stored(path: Path) -> Iterator[Record]:
    """Records of a shard file (or a shard's kept file), in order."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield stored_record(line)


@dataclass(frozen=True)
class ShardJob:
    """One shard to curate: which source it belongs to, its number and its file."""

    source: str  # "train" or "eval"
    number: int
    path: Path

    def output(self, kind: str) -> Path:
        """Where this shard writes ``kind`` ("kept", "dropped", "quarantine")."""
        return self.path.with_name(f"{self.path.stem}.{kind}.jsonl")


@dataclass
class ShardResult:
    """What one shard kept, set aside and counted, and the arrays the global blocks use."""

    job: ShardJob
    steps: list[tuple[str, int]]
    counts: dict[str, int]
    dropped: dict[str, int]  # by reason
    quarantined: int
    ids: list[str]
    labels: list[str | None]
    keys: np.ndarray  # content key per kept record ("S16")
    prompts: np.ndarray  # prompt key per kept record ("S16"): the split keeps a prompt whole
    bands: np.ndarray  # LSH band keys per kept record (n, bands), uint64; (n, 0) when unused
    process: str = ""  # host:pid that ran the shard (to see where the work went)

    @property
    def kept(self) -> int:
        """Records that passed the per-record blocks."""
        return len(self.ids)


def curate_shard(job: ShardJob, inputs: CurationInputs) -> ShardResult:
    """Run the per-record blocks over one shard file, a chunk at a time."""
    blocks = record_blocks(inputs)
    near = inputs.near_params
    want_bands = inputs.blocks.near_dedup.enabled or inputs.eval is None
    steps: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    ids: list[str] = []
    labels: list[str | None] = []
    keys, prompts, bands = [], [], []
    dropped: Counter[str] = Counter()
    quarantined = 0
    records = read_stored(job.path)
    with (
        job.output("kept").open("w", encoding="utf-8") as kept_out,
        job.output("dropped").open("w", encoding="utf-8") as dropped_out,
        job.output("quarantine").open("w", encoding="utf-8") as quarantine_out,
    ):
        while chunk := list(islice(records, CHUNK)):
            kept, funnel = run_blocks(chunk, blocks, Funnel(steps=[("valid", len(chunk))]))
            steps.update(dict(funnel.steps))
            counts.update(funnel.counts)
            for item in funnel.dropped:
                dropped_out.write(json.dumps(removed_row(item), ensure_ascii=False) + "\n")
            for item in funnel.quarantined:
                row = asdict(quarantine_row(item))
                quarantine_out.write(json.dumps(row, ensure_ascii=False) + "\n")
            dropped.update(item.reason for item in funnel.dropped)
            quarantined += len(funnel.quarantined)
            for record in kept:
                kept_out.write(json.dumps(stored_row(record), ensure_ascii=False) + "\n")
            ids += [r.id for r in kept]
            labels += [r.label for r in kept]
            keys.append(content_keys(kept))
            prompts.append(prompt_keys(kept))
            if want_bands and kept:
                tokens = Shingles.of(kept, near.ngram).tokens()
                bands.append(band_keys(signatures(tokens, near), near))
    n_bands = near.bands[0] if want_bands else 0
    return ShardResult(
        job=job,
        steps=[(name, steps[name]) for name in record_steps(inputs)],
        counts=dict(counts),
        dropped=dict(dropped),
        quarantined=quarantined,
        ids=ids,
        labels=labels,
        keys=np.concatenate(keys) if keys else np.empty(0, dtype="S16"),
        prompts=np.concatenate(prompts) if prompts else np.empty(0, dtype="S16"),
        bands=np.concatenate(bands) if bands else np.empty((0, n_bands), dtype=np.uint64),
        process=f"{socket.gethostname()}:{os.getpid()}",
    )
