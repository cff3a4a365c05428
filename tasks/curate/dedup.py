"""Duplicates and contradictions: label conflicts, exact duplicates, near duplicates.

Every block here has an array core that works on record *positions* (so the curation stage can
run it over a million records it keeps on disk, holding only compact arrays) and a
``list[Record] -> Outcome`` wrapper over the same core (what the unit tests and small callers
use). One implementation, two shapes.

Near duplicates use MinHash LSH. The MinHash engine (``NearDupParams.engine``) is rensa's
R-MinHash (Rust, ``RMinHash.digests_from_token_sets``: a batch of documents per call, straight
to a numpy array). LSH banding uses datasketch's optimal (bands, rows) for the candidate
threshold, but the buckets are found by sorting each band's 64-bit key column instead of an
in-memory dict-of-sets index (datasketch's, or rensa's ``RMinHashLSH``): at a million records
datasketch's index alone took several GB (see benchmarks/bench_curation.py), while the sorted
columns take ``8 * bands`` bytes per record, and per-shard key columns concatenate, which is
what keeps the bounded-memory streaming and the Dask shards (``tasks.curate.shards``) working.

LSH's band structure catches a pair *at* its threshold only about half the time, so candidates
are drawn at ``threshold - CANDIDATE_MARGIN`` and every candidate is confirmed with the exact
Jaccard of the two shingle sets: a record is dropped only for a measured similarity at or above
the threshold, never for a hash collision alone. On the test corpus this lifts pair recall at
0.8 from 0.66-0.73 (LSH at 0.8) to 0.985-1.0, for ~30% more candidates to check.
The first record of a group (in input order) is kept; later ones name it in their reason.
Signatures are a pure function of the shingles, ``num_perm`` and ``seed`` (no Python ``hash``),
so a fixed seed gives the same kept and dropped records on every run (tested across engines).

Engine choice (issue 23), measured by ``benchmarks/bench_curation.py --docs 20000 --no-million``
in one run on a shared 2-core machine (20,000 site-packages docstrings, word 5-grams, 128
permutations, Jaccard 0.8; the stage is ``exact_dedup`` then ``near_dedup``; recall is over the
2,786 exact-Jaccard pairs of a 3,000-document sample):

=====================================  =========  ==========  ======================================
contender                              docs/s     recall      drops (stage: 236 after exact dedup)
=====================================  =========  ==========  ======================================
stage, rensa R-MinHash (adopted)       17,600     1.000       236, each confirmed by exact Jaccard
stage, rensa C-MinHash                 20,200     1.000       236 (same records)
stage, datasketch values (old path)    7,300      1.000       236 (same records)
plain datasketch loop (README)         1,770      -           2,253 on LSH hits alone
rensa loop (RMinHash + RMinHashLSH)    52,000     1.000 (LSH) 3,448 on LSH hits alone, unconfirmed
rensa CMinHashDeduplicator             23,400     -           2,107 on *estimated* Jaccard
datatrove MinHash blocks (8 x 16)      8,500      0.995 (LSH) 2,087 on bucket hits alone
=====================================  =========  ==========  ======================================

All three stage engines give the same kept/dropped records here; timings on this loaded machine
vary ±30% between runs. R-MinHash is adopted: its signature step is consistently the fastest
when timed alone (0.17-0.25 s for 18k documents, C-MinHash 0.37-0.50 s, the datasketch values
1.4 s), it returns uint32 digests (half C-MinHash's uint64), and its recall is 1.000.
The stage is still ~0.4x rensa's own loop: that loop drops on any LSH hit (3,448 drops where
exact Jaccard confirms 2,116) and keeps its index in memory; ours spends ~0.35 s building
shingles (the same as the loop), ~0.2 s turning rensa's digest lists into numpy, and ~0.3 s on
exact Jaccard for ~160k candidate pairs (a few hundred similar-but-below-0.8 docstrings share
buckets). A MinHash-estimate pre-screen of candidates cut those pairs by only ~30% and cost
as much as it saved, so it is not used. datatrove installs without torch (only loguru), but its
word tokenizer needs spaCy and its dedup runs as disk-backed pipeline steps, so only its
signature blocks are benchmarked (on our shingles); it is not a dependency.
The datasketch engine stays as an option for that comparison only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from tasks.curate.blocks import Outcome, Removed
from tasks.curate.records import KTO_LABELS, Record

#: Positions of the records a block looks at, ascending (an int64 array).
Index = np.ndarray


def _digest(content: str) -> bytes:
    return hashlib.blake2b(content.encode("utf-8"), digest_size=16).digest()


def content_key(record: Record) -> bytes:
    """Identity of a record's content (earlier turns, text, and target if any): 16 bytes.

    A preference pair's is its prompt alone: one pair per prompt, so a second pair for the
    same prompt is a duplicate. A KTO record's is its prompt and completion (a prompt has
    several rated completions; the same one rated both ways is then a label conflict).
    """
    content = record.full_text
    if record.target is not None and record.rejected is None:
        content += "\x00" + record.target
    return _digest(content)


def content_keys(records: Sequence[Record]) -> np.ndarray:
    """``content_key`` of each record, as a fixed-width bytes array."""
    return np.array([content_key(r) for r in records], dtype="S16")


def compared_parts(record: Record) -> tuple[str, ...]:
    """What near-duplicate detection compares: the prompt side, and a KTO record's completion.

    One prompt with several rated completions is normal KTO data, so two KTO records are near
    duplicates only when their prompts *and* their completions are (``record_similarity``); every
    other record is compared by its prompt side (``full_text``).
    """
    kto = record.label in KTO_LABELS.values() and record.rejected is None
    if kto and record.target is not None:
        return record.full_text, record.target
    return (record.full_text,)


def part_lists(record: Record, n: int) -> list[list[str]]:
    """The ``shingle_list`` of each of ``compared_parts(record)``."""
    return [shingle_list(part, n) for part in compared_parts(record)]


def part_shingles(record: Record, n: int) -> list[set[str]]:
    """The shingles of each of ``compared_parts(record)``."""
    return [set(part) for part in part_lists(record, n)]


def lsh_shingles(parts: list[set[str]]) -> set[str]:
    """The shingles a record's MinHash is taken over: all its parts' (candidates for LSH)."""
    return parts[0] if len(parts) == 1 else set().union(*parts)


def lsh_tokens(parts: list[list[str]]) -> list[str]:
    """``lsh_shingles`` over ``part_lists``: the same MinHash, as a list with repeats."""
    return parts[0] if len(parts) == 1 else [s for part in parts for s in part]


def record_similarity(a: list[set[str]], b: list[set[str]]) -> float:
    """Exact Jaccard of two records' shingles: the lowest over their compared parts."""
    if len(a) == 1 or len(b) == 1:  # the common case, and zip's shorter side
        return jaccard(a[0], b[0])
    return min(jaccard(x, y) for x, y in zip(a, b, strict=False))


def prompt_keys(records: Sequence[Record]) -> np.ndarray:
    """A 16-byte key of each record's prompt side (``full_text``): the split groups by it."""
    return np.array([_digest(r.full_text) for r in records], dtype="S16")


def first_of(keys: np.ndarray, index: Index) -> Index:
    """For each position in ``index``, the first position in ``index`` with the same key."""
    if len(index) == 0:
        return index
    _, first, inverse = np.unique(keys[index], return_index=True, return_inverse=True)
    return index[first[inverse.ravel()]]


def conflicting_labels(
    keys: np.ndarray, labels: Sequence[str | None], index: Index
) -> dict[int, str]:
    """Positions whose exact content also appears with another label -> those other labels."""
    if len(index) == 0:
        return {}
    _, inverse = np.unique(keys[index], return_inverse=True)
    inverse = inverse.ravel()
    codes: dict[str | None, int] = {}
    label_codes = np.array([codes.setdefault(labels[i], len(codes)) for i in index])
    groups = inverse.max() + 1
    low = np.full(groups, len(codes))
    high = np.full(groups, -1)
    np.minimum.at(low, inverse, label_codes)
    np.maximum.at(high, inverse, label_codes)
    mixed = np.flatnonzero(low != high)
    if len(mixed) == 0:
        return {}
    members = np.flatnonzero(np.isin(inverse, mixed))
    seen: dict[int, set[str | None]] = defaultdict(set)
    for m in members:
        seen[int(inverse[m])].add(labels[index[m]])
    out = {}
    for m in members:
        own = labels[index[m]]
        others = ", ".join(sorted(repr(label) for label in seen[int(inverse[m])] if label != own))
        out[int(index[m])] = others
    return out


def label_conflicts(records: list[Record]) -> Outcome:
    """Quarantine every record whose exact text also appears with a different label."""
    index = np.arange(len(records))
    conflicts = conflicting_labels(content_keys(records), [r.label for r in records], index)
    kept, quarantined = [], []
    for i, record in enumerate(records):
        if i in conflicts:
            detail = f"same text also labelled {conflicts[i]}"
            quarantined.append(Removed(record, "label_conflicts", "label conflict", detail))
        else:
            kept.append(record)
    return Outcome(kept=kept, quarantined=quarantined)


def exact_dedup(records: list[Record]) -> Outcome:
    """Drop records whose normalised text (and target) repeats an earlier record's."""
    index = np.arange(len(records))
    first = first_of(content_keys(records), index)
    kept, dropped = [], []
    for i, record in enumerate(records):
        if first[i] != i:
            detail = f"of id {records[first[i]].id}"
            dropped.append(Removed(record, "exact_dedup", "exact duplicate", detail))
        else:
            kept.append(record)
    return Outcome(kept=kept, dropped=dropped)


#: How far below the Jaccard threshold LSH candidates are drawn (see the module docstring).
CANDIDATE_MARGIN = 0.2

#: The MinHash engines ``signatures`` can use (``NearDupParams.engine``); see the docstring.
ENGINES = ("rensa-r", "rensa-c", "datasketch")


@dataclass(frozen=True)
class NearDupParams:
    """MinHash LSH settings (the spec's ``curation.near_dedup``) and the MinHash engine."""

    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    engine: str = "rensa-r"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown MinHash engine {self.engine!r}: one of {ENGINES}")

    @property
    def candidate_threshold(self) -> float:
        """The Jaccard level LSH is tuned to catch (below ``threshold``, see the docstring)."""
        return max(0.1, self.threshold - CANDIDATE_MARGIN)

    @cached_property
    def bands(self) -> tuple[int, int]:
        """(bands, rows per band): datasketch's optimum for the candidate threshold."""
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=self.candidate_threshold, num_perm=self.num_perm)
        return lsh.b, lsh.r


def shingle_list(text: str, n: int) -> list[str]:
    """The word n-grams of ``shingles``, in text order and with repeats (cheaper than a set).

    A MinHash is the same over a list and over its set, so signatures take this directly.
    """
    words = text.lower().split()
    if len(words) <= n:
        return [" ".join(words)]
    return list(map(" ".join, zip(*(words[k:] for k in range(n)), strict=False)))


def shingles(text: str, n: int) -> set[str]:
    """Lower-cased word n-grams; a text shorter than ``n`` words is one shingle of itself."""
    return set(shingle_list(text, n))


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two sets."""
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


#: Documents per engine call in ``signatures`` (bounds the intermediate lists' memory).
SIGNATURE_DOCS = 8_192
#: Shingles hashed per numpy product on the datasketch engine (x num_perm x 8 B of memory).
SIGNATURE_BATCH = 50_000


def signatures(sets: Sequence[Iterable[str]], params: NearDupParams) -> np.ndarray:
    """MinHash signature of each shingle collection: ``(len(sets), num_perm)``.

    Any iterable of shingles will do (a set, or a ``shingle_list`` with repeats). The values
    are those of ``params.engine`` at ``params.seed``: rensa's ``RMinHash`` or ``CMinHash``
    digest (tested), or datasketch's ``MinHash`` (tested, the old path, kept for the bench).
    """
    if params.engine == "datasketch":
        return _datasketch_signatures([set(s) for s in sets], params)
    from rensa import CMinHash, RMinHash

    digests = RMinHash.digests_from_token_sets
    dtype: type[np.unsignedinteger[Any]] = np.uint32
    if params.engine == "rensa-c":
        digests, dtype = CMinHash.digests64_from_token_sets, np.uint64
    out = np.empty((len(sets), params.num_perm), dtype=dtype)
    for start in range(0, len(sets), SIGNATURE_DOCS):
        batch = [
            s if isinstance(s, list | set) else list(s)
            for s in sets[start : start + SIGNATURE_DOCS]
        ]
        if batch:
            out[start : start + len(batch)] = digests(batch, params.num_perm, params.seed)
    return out


def _permuter(params: NearDupParams) -> tuple[Callable[[bytes], int], Callable[..., Any], Any]:
    """The hash function, pre-mix and (a, b) permutations datasketch uses here."""
    from datasketch import MinHash
    from datasketch.minhash import _SCHEME_WIDTHS, _fmix  # the exact mixing MinHash applies

    template = MinHash(num_perm=params.num_perm, seed=params.seed)
    width = _SCHEME_WIDTHS[template.scheme]
    return template.hashfunc, (lambda hv: _fmix(hv, width)), template.permutations


def _datasketch_signatures(sets: Sequence[set[str]], params: NearDupParams) -> np.ndarray:
    """The values of datasketch's ``MinHash.bulk``, a batch of documents per numpy product."""
    hashfunc, mix, (a, b) = _permuter(params)
    out = np.empty((len(sets), params.num_perm), dtype=a.dtype)
    start = 0
    while start < len(sets):
        stop, hashes, sizes = start, list[int](), list[int]()
        while stop < len(sets) and (not hashes or len(hashes) < SIGNATURE_BATCH):
            encoded = [s.encode("utf-8") for s in sets[stop]]
            hashes += [hashfunc(e) for e in encoded]
            sizes.append(len(encoded))
            stop += 1
        values = mix(np.array(hashes, dtype=a.dtype))
        permuted = values[:, None] * a[None, :] + b[None, :]  # wraps mod 2^width, as datasketch
        offsets = np.concatenate(([0], np.cumsum(sizes[:-1]))).astype(np.int64)
        out[start:stop] = np.minimum.reduceat(permuted, offsets, axis=0)
        start = stop
    return out


def band_keys(sigs: np.ndarray, params: NearDupParams) -> np.ndarray:
    """One 64-bit key per LSH band per record: ``(n, bands)``.

    Two records share a key when their band rows are equal (and, rarely, by a 64-bit hash
    collision, which only adds a candidate that the exact Jaccard then rejects).
    """
    bands, rows = params.bands
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for k in range(bands):
        h = np.full(len(sigs), 0xCBF29CE484222325, dtype=np.uint64)
        for col in sigs[:, k * rows : (k + 1) * rows].T.astype(np.uint64):
            h = (h ^ col) * prime
        keys[:, k] = h
    return keys


@dataclass(frozen=True)
class SharedBuckets:
    """(record, bucket) pairs for records that share an LSH bucket with another record.

    Sorted by record then bucket. Records absent from it have no near-duplicate candidate.
    """

    record: np.ndarray
    bucket: np.ndarray

    @property
    def records(self) -> np.ndarray:
        """The positions that have at least one candidate."""
        return np.unique(self.record)


def shared_buckets(keys: np.ndarray, index: Index) -> SharedBuckets:
    """Sort each band's key column and keep the buckets with two or more of ``index``."""
    records, buckets = [], []
    next_id = 0
    for k in range(keys.shape[1]):
        column = keys[index, k]
        order = np.argsort(column, kind="stable")
        ordered = column[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        sizes = np.diff(np.r_[starts, len(ordered)])
        group = np.repeat(np.arange(len(starts)), sizes)
        shared = sizes[group] > 1
        records.append(index[order[shared]])
        buckets.append(group[shared] + next_id)
        next_id += len(starts)
    record = np.concatenate(records) if records else np.empty(0, dtype=np.int64)
    bucket = np.concatenate(buckets) if buckets else np.empty(0, dtype=np.int64)
    order = np.lexsort((bucket, record))
    return SharedBuckets(record[order], bucket[order])


def near_matches(
    shared: SharedBuckets,
    similarity: Callable[[int, int], float],
    threshold: float,
    all_pairs: bool = False,
) -> Iterator[tuple[int, int, float]]:
    """Confirmed near-duplicate pairs ``(earlier, later, Jaccard)``, in order of ``later``.

    With ``all_pairs=False`` (dedup) a record is compared only with earlier records that were
    themselves kept, and only its first match (lowest position) is reported; a matched record
    is not a candidate for later ones. With ``all_pairs=True`` every confirmed pair is reported.

    Args:
        shared: From ``shared_buckets``.
        similarity: Exact Jaccard of two positions.
        threshold: Minimum Jaccard to confirm a pair.
        all_pairs: Report every pair instead of each record's first kept match.
    """
    if len(shared.record) == 0:
        return
    members: dict[int, list[int]] = defaultdict(list)
    bounds = np.flatnonzero(np.r_[True, shared.record[1:] != shared.record[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        i = int(shared.record[lo])
        buckets = shared.bucket[lo:hi].tolist()
        matched = False
        for j in sorted({j for bucket in buckets for j in members[bucket]}):
            score = similarity(j, i)
            if score >= threshold:
                yield j, i, score
                matched = True
                if not all_pairs:
                    break
        if all_pairs or not matched:
            for bucket in buckets:
                members[bucket].append(i)


def _near_matches(
    records: Sequence[Record], params: NearDupParams, all_pairs: bool
) -> Iterator[tuple[int, int, float]]:
    """``near_matches`` over ``records``: LSH buckets, the screen, the exact Jaccard."""
    lists = [part_lists(r, params.ngram) for r in records]
    keys = band_keys(signatures([lsh_tokens(p) for p in lists], params), params)
    shared = shared_buckets(keys, np.arange(len(records)))
    sets = {p: [set(part) for part in lists[p]] for p in shared.records.tolist()}
    del lists
    similar = lambda j, i: record_similarity(sets[j], sets[i])  # noqa: E731
    return near_matches(shared, similar, params.threshold, all_pairs)


def near_duplicate_pairs(
    records: Sequence[Record], params: NearDupParams
) -> list[tuple[int, int, float]]:
    """(earlier, later, Jaccard) for every confirmed near-duplicate pair, by LSH + exact check."""
    return list(_near_matches(records, params, all_pairs=True))


def near_dedup(records: list[Record], params: NearDupParams) -> Outcome:
    """Drop each record that is a near duplicate of an earlier *kept* record."""
    matches = {i: (j, s) for j, i, s in _near_matches(records, params, all_pairs=False)}
    kept, dropped = [], []
    for i, record in enumerate(records):
        if i in matches:
            j, similarity = matches[i]
            detail = near_detail(records[j].id, similarity)
            dropped.append(Removed(record, "near_dedup", "near duplicate", detail))
        else:
            kept.append(record)
    return Outcome(kept=kept, dropped=dropped)


def near_detail(of_id: str, similarity: float) -> str:
    """The ``detail`` of a near-duplicate drop."""
    return f"of id {of_id} (Jaccard {similarity:.2f})"


def clusters(n: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """Connected components of the near-duplicate graph: a group id per record."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[find(b)] = find(a)
    return [find(i) for i in range(n)]


def semantic_dedup(
    records: list[Record], threshold: float, base_model: str, allow_pickle: bool = False
) -> Outcome:
    """Drop records whose embedding is within cosine ``threshold`` of an earlier kept record."""
    import numpy as np

    from runtime.knn import embed
    from runtime.loading import load_encoder

    if not records:
        return Outcome(kept=[])
    encoder = load_encoder(base_model, allow_pickle)
    parts = [compared_parts(r) for r in records]
    # one embedding per compared part; a pair is as close as its least similar part
    vectors = [embed(encoder, [p[k] for p in parts]) for k in range(min(map(len, parts)))]
    kept_rows: list[int] = []
    kept, dropped = [], []
    for i, record in enumerate(records):
        if kept_rows:
            sims = np.min([v[kept_rows] @ v[i] for v in vectors], axis=0)
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                detail = f"of id {records[kept_rows[best]].id} (cosine {sims[best]:.3f})"
                dropped.append(Removed(record, "semantic_dedup", "semantic duplicate", detail))
                continue
        kept_rows.append(i)
        kept.append(record)
    return Outcome(kept=kept, dropped=dropped)
