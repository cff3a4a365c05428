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
from tasks.curate.dedup import (
    ENGINES,
    NearDupParams,
    Shingles,
    band_keys,
    possible_pairs,
    shared_buckets,
    shingle_hashes,
    shingle_list,
    signatures,
)
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


def _reference_digests(engine: str, tokens: list[list[int]], params: NearDupParams) -> np.ndarray:
    """Each engine's own digest of each document's hashed tokens, one call per document."""
    from rensa import CMinHash, RMinHash

    rows = []
    for doc in tokens:
        if engine == "rensa-r":
            matrix = RMinHash.digest_matrix_from_token_hash_sets(
                [doc], params.lsh_perm, params.seed
            )
            rows.append(matrix.to_rows()[0])
        else:
            rows += CMinHash.digests64_from_token_hash_sets([doc], params.lsh_perm, params.seed)
    return np.array(rows)


@pytest.mark.parametrize("engine", ENGINES)
def test_signatures_equal_the_engines_own_minhash(engine: str) -> None:
    params = NearDupParams(num_perm=64, seed=5, engine=engine)
    texts = [r.text for r in built_corpus(seed=2, bases=20)] + ["one", "two words", ""]
    hashes, offsets = shingle_hashes(texts, params.ngram)
    docs = [hashes[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    ours = signatures((hashes, offsets), params)
    assert ours.shape == (len(texts), params.lsh_perm) and params.lsh_perm <= 64
    assert np.array_equal(ours, _reference_digests(engine, docs, params))
    # some rows only: the same values; a token set, sorted the other way, has the same MinHash
    rows = np.array([3, 0, len(texts) - 1])
    assert np.array_equal(signatures((hashes, offsets), params, rows), ours[rows])
    assert np.array_equal(
        _reference_digests(engine, [sorted(set(d))[::-1] for d in docs], params), ours
    )


def test_shingle_hashes_are_the_string_shingles() -> None:
    """One hash per ``shingle_list`` string, equal strings equal hashes: the same Jaccard."""
    texts = [r.text for r in built_corpus(seed=4, bases=40)] + [
        "", "   ", "one", "two words", "a b c d", "a b c d e", "A B C D E F", "a b c d e f g",
        "Ünïcode\u00a0wörds here x y z", "x\u2003y z\u3000w v u", "A b\tc\nd  E f\x1cg",
        "nul\x00 word a b c", "nul word\x00 a b c", "ÉCOLE école École x y",
        "日本語 の テキスト です か ね",
    ]  # fmt: skip
    hashes, offsets = shingle_hashes(texts, 5)
    strings = [shingle_list(t, 5) for t in texts]
    mapping: dict[int, str] = {}
    for k, shingle_strings in enumerate(strings):
        own = hashes[offsets[k] : offsets[k + 1]].tolist()
        assert len(own) == len(shingle_strings), texts[k]
        for value, string in zip(own, shingle_strings, strict=True):
            assert mapping.setdefault(value, string) == string  # no two strings share a hash
    assert len(set(mapping.values())) == len(mapping)  # and no string has two hashes
    assert len(mapping) == len({s for ss in strings for s in ss})
    # batches do not change the values
    texts *= 200
    again, _ = shingle_hashes(texts, 5)
    assert np.array_equal(again[: len(hashes)], hashes) and len(again) == 200 * len(hashes)


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


def test_rensa_flags_every_record_that_shares_one_of_our_bands() -> None:
    """``possible_pairs`` (rensa, with our bands) flags every candidate of our own buckets."""
    params = NearDupParams()
    records = built_corpus(seed=6, bases=60)
    tokens = Shingles.of(records, params.ngram).tokens()
    every = np.arange(len(records))
    shared = shared_buckets(band_keys(signatures(tokens, params), params), every).records
    flagged = possible_pairs(tokens, params)
    assert len(shared) > 40  # the corpus has candidates
    assert set(shared.tolist()) <= set(flagged.tolist())
    assert len(set(flagged.tolist()) - set(shared.tolist())) <= len(records) // 100  # ~the same


@pytest.mark.parametrize("width", [16, 100, 128, 1024])
def test_the_byte_sketch_estimate_counts_equal_values(width: int) -> None:
    """The word-wise sum gives what ``count_nonzero`` gives, padded widths and wide ones too."""
    from tasks.curate.dedup import _Sketch

    rng = np.random.default_rng(width)
    sigs = rng.integers(0, 1 << 32, size=(50, width), dtype=np.uint64).astype(np.uint32)
    sigs[7] = sigs[3]  # identical rows
    sigs[9, : width // 2] = sigs[3, : width // 2]  # half the values shared
    sketch = _Sketch(sigs)
    js = np.arange(50)
    expected = np.count_nonzero(sigs.astype(np.uint8) == sigs[3].astype(np.uint8), axis=1)
    assert np.array_equal(sketch.estimate(js, 3) * width, expected)
    assert sketch.estimate(js, 3)[7] == 1.0
    assert 0.5 <= sketch.estimate(js, 3)[9] < 0.6


def test_long_texts_hash_in_pieces_to_the_same_shingles() -> None:
    """Texts over one numpy pass's byte budget: grouped, or one text cut at whitespace."""
    from tasks.curate.dedup import HASH_BYTES

    rng = np.random.default_rng(0)
    vocabulary = [f"w{k}" for k in range(3000)] + ["Ünï", "日本", "x\u3000y"]

    def text(words: int) -> str:
        return " ".join(rng.choice(vocabulary, size=words).tolist())

    long_text = text(HASH_BYTES // 2)  # ~2.5x the budget: cut in pieces
    texts = ["short one", text(HASH_BYTES // 9), text(HASH_BYTES // 9), long_text, "a b c d e f"]
    assert len(long_text.encode()) > 2 * HASH_BYTES
    hashes, offsets = shingle_hashes(texts, 5)
    for k, string in enumerate(texts):
        own = hashes[offsets[k] : offsets[k + 1]]
        alone, _ = shingle_hashes([string], 5)
        assert np.array_equal(own, alone)  # the same values in a batch or alone
        assert len(own) == len(shingle_list(string, 5))
    # the cut text's shingles are its string shingles, one to one
    strings = shingle_list(long_text, 5)
    long_hashes = hashes[offsets[3] : offsets[4]].tolist()
    assert len(set(long_hashes)) == len(set(strings))
    mapping: dict[int, str] = {}
    for value, string in zip(long_hashes, strings, strict=True):
        assert mapping.setdefault(value, string) == string
    assert len(set(mapping.values())) == len(mapping)
