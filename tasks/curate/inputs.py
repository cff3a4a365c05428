"""What a curation run is asked to do (from the spec), and the blocks that makes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from adaptflow.spec import CurationSpec
from tasks.curate.blocks import Block
from tasks.curate.dedup import NearDupParams
from tasks.curate.normalize import normalize
from tasks.curate.pairs import chosen_equals_rejected
from tasks.curate.pii import redact_pii
from tasks.curate.quality import default_rules, quality_filter
from tasks.curate.records import Fields


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
    allow_pickle: bool = False  # the spec's flag, for the encoder of semantic_dedup
    blocks: CurationSpec = field(default_factory=CurationSpec)
    #: ``data.version_in``: the private DVC repository under ADAPTFLOW_HOME, or the user's own
    version_in: str = "home"

    def may_read(self, fmt: str) -> bool:
        """Whether the data may be in format ``fmt`` (asked for, or ``auto``)."""
        return self.fields.format in (fmt, "auto")

    @property
    def near_params(self) -> NearDupParams:
        """MinHash LSH settings from ``curation.near_dedup``."""
        near = self.blocks.near_dedup
        return NearDupParams(near.ngram, near.num_perm, near.threshold)


def record_blocks(inputs: CurationInputs) -> list[tuple[str, Block]]:
    """The per-record blocks the spec switches on, in order: they run shard by shard.

    Each decides on one record alone, so a shard's result does not depend on the others.
    """
    cfg = inputs.blocks
    blocks: list[tuple[str, Block]] = []
    if cfg.normalize:
        blocks.append(("normalize", normalize))
    if cfg.quality.enabled:
        rules = replace(default_rules(inputs.task), **cfg.quality.overrides())
        blocks.append(("quality", partial(quality_filter, rules=rules)))
    if cfg.pii:
        blocks.append(("pii", redact_pii))
    if inputs.may_read("preference"):
        # last: answers that differ only in what normalisation or redaction changed are equal
        blocks.append(("chosen_equals_rejected", chosen_equals_rejected))
    return blocks


def record_steps(inputs: CurationInputs) -> list[str]:
    """The funnel steps a shard reports: ``valid``, then each per-record block."""
    return ["valid"] + [name for name, _ in record_blocks(inputs)]


def global_blocks(inputs: CurationInputs) -> list[str]:
    """The blocks that compare records with each other, in order: they run on the driver."""
    cfg = inputs.blocks
    names = []
    if cfg.label_conflicts and (inputs.needs_labels or inputs.may_read("kto")):
        names.append("label_conflicts")  # a KTO completion rated both ways is a conflict too
    if cfg.exact_dedup:
        names.append("exact_dedup")
    if cfg.near_dedup.enabled:
        names.append("near_dedup")
    if cfg.semantic_dedup.enabled:
        names.append("semantic_dedup")
    return names


def block_names(inputs: CurationInputs) -> list[str]:
    """Every block that runs, in order (decontamination last, after the split)."""
    names = [name for name, _ in record_blocks(inputs)] + global_blocks(inputs)
    return names + (["decontaminate"] if inputs.blocks.decontaminate.enabled else [])
