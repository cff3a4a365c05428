"""Sharded curation: the same kept, dropped and quarantined records whatever the sharding.

The per-record blocks run per shard and the global ones over the joined arrays, so the shard
size and the task runner (this process, or a Dask cluster) must not change any output file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import built_corpus, write_jsonl

from adaptflow.spec import CurationSpec, NearDedupSpec, load_spec
from tasks.curate.dedup import ENGINES, NearDupParams, shingle_list, shingles, signatures
from tasks.curate.records import Fields
from tasks.curate.stage import CurationInputs, curate_dataset

OUTPUTS = ("train_file", "eval_file", "dropped_file", "quarantine")


def _corpus(tmp_path: Path) -> Path:
    """Near and exact duplicates, label conflicts, PII, quality failures and broken lines."""
    rows = [{"text": r.text, "label": r.label} for r in built_corpus(seed=11, bases=90)]
    rows += [dict(rows[i]) for i in range(0, 60, 7)]  # exact duplicates
    rows += [{"text": rows[3]["text"], "label": "other"}]  # a label conflict
    rows += [
        {"text": f"mail me at user{i}@example.com about w{i} " * 3, "label": "1"} for i in range(5)
    ]
    rows += [{"text": "x", "label": "0"}, {"text": "$$$ %%% ^^^ &&& *** ((( )))", "label": "2"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with path.open("a") as handle:
        handle.write('["not", "an", "object"]\n{"text": 5, "label": "1"}\n{"text": "cut')
    return path


def _inputs(name: str, train: Path, **blocks) -> CurationInputs:
    return CurationInputs(
        name=name, train=train, eval=None, fields=Fields(id=None), eval_fraction=0.2, seed=3,
        needs_labels=True, blocks=CurationSpec(**blocks),
    )  # fmt: skip


def _files(summary: dict) -> dict[str, str]:
    return {key: Path(summary[key]).read_text() for key in OUTPUTS}


def _reference_digests(engine: str, sets: list[set[str]], params: NearDupParams) -> np.ndarray:
    """Each engine's own per-document MinHash, one object per document."""
    if engine == "datasketch":
        from datasketch import MinHash

        theirs = MinHash.bulk(
            ([s.encode() for s in shingle_set] for shingle_set in sets),
            num_perm=params.num_perm,
            seed=params.seed,
        )
        return np.stack([m.hashvalues for m in theirs])
    from rensa import CMinHash, RMinHash

    rows = []
    for shingle_set in sets:
        if engine == "rensa-r":
            r_minhash = RMinHash(params.num_perm, params.seed)
            r_minhash.update(sorted(shingle_set))
            rows.append(r_minhash.digest())
        else:
            c_minhash = CMinHash(params.num_perm, params.seed)
            c_minhash.update(sorted(shingle_set))
            rows.append(c_minhash.digest_u64())
    return np.array(rows)


@pytest.mark.parametrize("engine", ENGINES)
def test_signatures_equal_the_engines_own_minhash(engine: str) -> None:
    params = NearDupParams(num_perm=64, seed=5, engine=engine)
    texts = [r.text for r in built_corpus(seed=2, bases=20)] + ["one", "two words"]
    sets = [shingles(t, params.ngram) for t in texts]
    ours = signatures(sets, params)
    assert ours.shape == (len(texts), 64)
    assert np.array_equal(ours, _reference_digests(engine, sets, params))
    # a shingle list with repeats, in text order, has the same MinHash as its set
    lists = [shingle_list(t, params.ngram) + shingle_list(t, params.ngram)[:3] for t in texts]
    assert np.array_equal(signatures(lists, params), ours)


@pytest.mark.parametrize("near", [True, False], ids=["near-dedup", "near-dedup-off"])
def test_shard_size_does_not_change_any_output(tmp_path: Path, near: bool) -> None:
    data = _corpus(tmp_path)
    near_spec = NearDedupSpec(enabled=near)
    whole = curate_dataset(_inputs("same", data, near_dedup=near_spec), tmp_path / "a", tmp_path)
    sharded = curate_dataset(
        _inputs("same", data, near_dedup=near_spec, shard_size=23), tmp_path / "b", tmp_path
    )
    assert (whole["shards"], sharded["shards"]) == (1, 12)
    assert _files(whole) == _files(sharded)
    assert whole["input"] == 260 == sharded["input"]
    same = ("kept", "dropped", "quarantined", "funnel", "pii", "train_examples")
    assert {k: whole[k] for k in same} == {k: sharded[k] for k in same}
    assert whole["data_hash"] == sharded["data_hash"]
    assert whole["quarantined"] == 3 + 2  # broken lines, and both sides of the label conflict
    if near:
        assert whole["dropped"]["near duplicate"] > 0
    assert not (Path(whole["output"]) / ".shards").exists()


@pytest.mark.integration
def test_two_dask_workers_keep_exactly_the_single_process_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.curate import curate

    data = _corpus(tmp_path)
    single = curate_dataset(_inputs("dask-shards", data), tmp_path / "single", tmp_path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "name: dask-shards\ntask: classification\n"
        f"data: {{train: {data}, eval_fraction: 0.2}}\nseed: 3\n"
        "curation: {shard_size: 40}\n"
    )
    monkeypatch.setenv("ADAPTFLOW_CURATION_WORKERS", "2")
    dask = curate(load_spec(spec_file))
    assert dask["shards"] == 7
    assert dask["shard_processes"] == 2  # both Dask workers ran shards, none ran here
    assert _files(dask) == _files(single)
    assert dask["data_hash"] == single["data_hash"]
