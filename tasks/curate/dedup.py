"""Duplicates and contradictions: label conflicts, exact duplicates, near duplicates.

Every block here has an array core that works on record *positions* (so the curation stage can
run it over a million records it keeps on disk, holding only compact arrays) and a
``list[Record] -> Outcome`` wrapper over the same core (what the unit tests and small callers
use). One implementation, two shapes.

Near duplicates use MinHash LSH, in four steps, each on whole arrays:

1. ``shingle_hashes``: each record's word 5-grams as 64-bit hashes, computed in numpy from the
   UTF-8 bytes of a batch of texts (two threads), never as Python strings (the same shingles as
   ``shingle_list``; tested equal, string by string).
2. ``possible_pairs``: rensa's R-MinHash digests the flat hash array in Rust
   (``RMinHash.digest_matrix_from_flat_token_hashes``) and its one-shot LSH, with our bands,
   flags the records that share a band with another. Only those (~1/6 of the benchmark
   corpus) have their signatures turned into numpy: a Python int per value, the slow part.
3. ``band_keys`` / ``shared_buckets``: datasketch's optimal (bands, rows) for the candidate
   threshold; buckets are found by sorting each band's 64-bit key column instead of an
   in-memory dict-of-sets index (datasketch's, or rensa's ``RMinHashLSH``): at a million
   records datasketch's index alone took several GB, while the sorted columns take
   ``8 * bands`` bytes per record, and per-shard key columns concatenate, which is what keeps
   the bounded-memory streaming and the Dask shards (``tasks.curate.shards``) working.
4. ``confirmed_pairs`` / ``near_matches``: each candidate is confirmed by the exact Jaccard of
   the two records' shingle-hash sets (exact but for a 2^-64 hash collision); a long candidate
   list is first screened by a byte sketch of the signatures (``_Sketch``, ``SCREEN_MARGIN``).

LSH's band structure catches a pair *at* its threshold only about half the time, so candidates
are drawn at ``threshold - CANDIDATE_MARGIN`` and every candidate is confirmed with the exact
Jaccard: a record is dropped only for a measured similarity at or above the threshold, never
for a hash collision alone. On the test corpus this lifts pair recall at 0.8 from 0.66-0.73
(LSH at 0.8) to 0.985-1.0, for ~30% more candidates to check.
The first record of a group (in input order) is kept; later ones name it in their reason.
Signatures are a pure function of the shingles, ``num_perm`` and ``seed`` (no Python ``hash``),
so a fixed seed gives the same kept and dropped records on every run (tested across engines).

Engine choice (issue 23), measured by ``benchmarks/bench_curation.py --docs 20000 --no-million``
(5 rounds in turns, medians) on a 2-core machine: 20,000 site-packages docstrings, word
5-grams, 128 permutations, Jaccard 0.8; the stage is ``exact_dedup`` then ``near_dedup``;
recall is over the 2,786 exact-Jaccard pairs of a 3,000-document sample:

=====================================  =========  ==========  ======================================
contender                              docs/s     recall      drops (stage: 236 after exact dedup)
=====================================  =========  ==========  ======================================
stage, rensa R-MinHash (adopted)       78,200     1.000       236, each confirmed by exact Jaccard
stage, rensa C-MinHash                 29,800     1.000       236 (same records)
rensa loop (RMinHash + RMinHashLSH)    60,500     1.000 (LSH) 3,448 on LSH hits alone, unconfirmed
rensa CMinHashDeduplicator             26,200     -           2,107 on *estimated* Jaccard
datatrove MinHash blocks (8 x 16)      9,700      0.995 (LSH) 2,087 on bucket hits alone
plain datasketch loop (README)         2,000      -           2,253 on LSH hits alone
=====================================  =========  ==========  ======================================

The stage runs at 1.24-1.29x rensa's own loop over two runs (which drops on any LSH hit: 3,448
drops where exact Jaccard confirms 2,116, and keeps its index in memory). Before this design it
ran at ~0.4x: Python string shingles (~0.3 s of the 0.33 s the loop takes), every signature
turned into numpy (~0.2 s), and ~420k candidate pairs each checked by a Python set intersection.
Now, per 20k documents: exact dedup ~30 ms, shingle hashes ~60 ms, rensa's digests and flags ~20
ms, flagged signatures ~25 ms, buckets ~6 ms, confirmation ~80 ms. C-MinHash has no flat-buffer
path and no one-shot flags in rensa, so it converts every signature; it stays as an option (same
drops). The datasketch values (the old path, 7,300 docs/s) are gone from the stage; the plain
datasketch loop stays in the benchmark. datatrove installs without torch (only loguru), but its
word tokenizer needs spaCy and its dedup runs as disk-backed pipeline steps, so only its
signature blocks are benchmarked (on our shingles); it is not a dependency.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property
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


def record_similarity(a: Sequence[set[Any]], b: Sequence[set[Any]]) -> float:
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
ENGINES = ("rensa-r", "rensa-c")


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

    @property
    def lsh_perm(self) -> int:
        """The permutations the bands use and ``signatures`` computes: ``bands * rows``.

        At most ``num_perm`` (at 128: 18 bands of 7 rows, 126).
        """
        bands, rows = self.bands
        return bands * rows


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


def jaccard(a: set[Any], b: set[Any]) -> float:
    """Exact Jaccard similarity of two sets."""
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


#: Texts per batch in ``shingle_hashes`` (batches run on ``HASH_THREADS`` threads).
HASH_DOCS = 2_048
#: Most bytes of text one numpy pass hashes (bounds its memory: see ``_word_hashes``).
HASH_BYTES = 1 << 20
#: Threads hashing batches in ``shingle_hashes`` (the machine this runs on has 2 cores).
HASH_THREADS = 2
#: Documents per engine call in ``signatures`` (bounds the intermediate lists' memory).
SIGNATURE_DOCS = 8_192

# ``str.split()`` splits on these: the ASCII ones as a byte table, the others replaced first
# (UTF-8 continuation bytes are >= 0x80, so a byte table cannot misread a multi-byte letter).
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_WIDE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
_BYTE_BASE = 0x100000001B3  # odd, so invertible mod 2^64
_WORD_BASE = np.uint64(0x9E3779B97F4A7C15)
_SHORT_TAG = np.uint64(0xD6E8FEB86659FD93)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads a polynomial hash's bits (wraps mod 2^64)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@cache
def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """``_BYTE_BASE**k`` and its inverse's, mod 2^64, for k < length (a power of two)."""
    inverse = 1
    for _ in range(7):  # Newton's iteration doubles the correct low bits: 7 steps pass 64
        inverse = inverse * (2 - _BYTE_BASE * inverse) % (1 << 64)
    out = []
    for base in (_BYTE_BASE, inverse):
        power = np.empty(length, dtype=np.uint64)
        power[0] = 1
        np.cumprod(np.full(length - 1, base, dtype=np.uint64), out=power[1:])
        out.append(power)
    return out[0], out[1]


def shingle_hashes(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of ``shingle_list(text, n)`` for each text, flat, and each text's offsets.

    The same shingles as ``shingle_list`` (lower-cased words as ``str.split`` finds them, word
    n-grams, a text under ``n`` words one shingle of itself), computed in numpy a batch of texts
    at a time instead of one Python string per shingle: the words of the UTF-8 bytes are hashed
    with a polynomial prefix sum, an n-gram from its words' hashes, each mixed by
    ``_fmix64``. Equal shingles get equal hashes on every run and machine (no Python ``hash``);
    two different shingles collide with probability ~2^-64, so a Jaccard over these hashes is
    the shingles' exact Jaccard but for that (tested against the strings).

    Returns:
        ``(hashes, offsets)``: text ``i``'s shingles are ``hashes[offsets[i]:offsets[i + 1]]``
        (in text order, repeats kept; every text has at least one).
    """
    starts = range(0, len(texts), HASH_DOCS)
    if len(starts) > 1:  # numpy lets go of the GIL on these arrays: two threads, ~1.5x here
        with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
            batches = list(pool.map(lambda k: _hash_batch(texts[k : k + HASH_DOCS], n), starts))
    else:
        batches = [_hash_batch(texts, n)] if texts else []
    if not batches:
        return np.empty(0, dtype=np.uint64), np.zeros(1, dtype=np.int64)
    hashes = np.concatenate([h for h, _ in batches])
    sizes = np.concatenate([np.diff(o) for _, o in batches])
    return hashes, np.r_[0, np.cumsum(sizes)].astype(np.int64)


def _hash_batch(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``shingle_hashes`` of one batch."""
    lowered = [t.lower() for t in texts]
    encoded = [t.encode("utf-8") if t.isascii() else _WIDE_SPACE.sub(" ", t).encode("utf-8")
               for t in lowered]  # fmt: skip
    words, count = _word_hashes(encoded)
    text_of = np.repeat(np.arange(len(texts)), count)
    first = np.r_[0, np.cumsum(count)[:-1]]
    grams = np.zeros(max(len(words) - n + 1, 0), dtype=np.uint64)
    for k in range(n):
        grams = grams * _WORD_BASE + words[k : k + len(grams)]
    whole = np.flatnonzero(text_of[: len(grams)] == text_of[n - 1 : n - 1 + len(grams)])
    offsets = np.r_[0, np.cumsum(np.maximum(count - n + 1, 1))].astype(np.int64)
    out = np.empty(offsets[-1], dtype=np.uint64)
    owner = text_of[whole]
    out[offsets[owner] + whole - first[owner]] = _fmix64(grams[whole])
    short = np.flatnonzero(count < n)  # one shingle of all its words (none: the empty one)
    value = np.zeros(len(short), dtype=np.uint64)
    for k in range(min(n - 1, len(words))):
        has = count[short] > k
        word = words[np.minimum(first[short] + k, len(words) - 1)]
        value = np.where(has, value * _WORD_BASE + word, value)
    out[offsets[short]] = _fmix64(value ^ (count[short].astype(np.uint64) * _SHORT_TAG))
    return out, offsets


def _word_hashes(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every word of every text (flat, in order) and each text's word count.

    One numpy pass hashes up to ``HASH_BYTES`` of text (its arrays take ~40 bytes per byte of
    text): texts are grouped up to that, and a longer text is cut at whitespace into pieces
    (no word is split, so its words and their hashes are the same).
    """
    if sum(map(len, encoded)) <= HASH_BYTES:
        return _word_pass(encoded)
    passes: list[tuple[np.ndarray, np.ndarray]] = []
    group: list[bytes] = []
    size = 0
    for text in encoded:
        if group and size + len(text) > HASH_BYTES:
            passes.append(_word_pass(group))
            group, size = [], 0
        if len(text) > HASH_BYTES:  # its pieces' words, counted as one text's
            words, count = _word_pass(_cut(text))
            passes.append((words, count.sum(keepdims=True)))
        else:
            group.append(text)
            size += len(text) + 1
    if group:
        passes.append(_word_pass(group))
    words = np.concatenate([w for w, _ in passes])
    return words, np.concatenate([c for _, c in passes]).astype(np.int64)


_SPACE_BYTE = re.compile(b"[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f ]")


def _cut(text: bytes) -> list[bytes]:
    """``text`` in pieces of about ``HASH_BYTES / 2`` to ``HASH_BYTES``, cut at whitespace."""
    pieces, start = [], 0
    while len(text) - start > HASH_BYTES:
        found = _SPACE_BYTE.search(text, start + HASH_BYTES // 2)
        if found is None:  # no whitespace left: the rest is one piece
            break
        pieces.append(text[start : found.start()])
        start = found.start() + 1
    pieces.append(text[start:])
    return pieces


def _word_pass(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``_word_hashes`` of texts that fit one pass: a polynomial prefix sum over their bytes."""
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) + 1
    data = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)  # a space ends every text
    space = _ASCII_SPACE[data]
    starts = np.flatnonzero(~space & np.r_[True, space[:-1]])
    ends = np.flatnonzero(~space & np.r_[space[1:], True]) + 1
    power, inverse = _powers(1 << int(len(data)).bit_length())
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    terms = np.multiply(data, power[: len(data)])  # uint64; a NUL byte adds 0, the length
    np.cumsum(terms, out=prefix[1:])  # below still tells such words apart
    words = _fmix64(
        (prefix[ends] - prefix[starts]) * inverse[starts] + (ends - starts).astype(np.uint64)
    )  # each word's bytes as a polynomial from its own start, mixed with its length
    text_of = np.searchsorted(np.r_[0, np.cumsum(lengths)[:-1]], starts, side="right") - 1
    return words, np.bincount(text_of, minlength=len(encoded))


@dataclass(frozen=True)
class Shingles:
    """The shingle hashes of a list of records, part by part (``compared_parts``).

    ``hashes[parts[p]:parts[p + 1]]`` are part ``p``'s; record ``i`` has parts
    ``record_parts[i]`` to ``record_parts[i + 1]``, contiguous, so its LSH tokens (all its
    parts' shingles) are one slice too.
    """

    hashes: np.ndarray
    parts: np.ndarray
    record_parts: np.ndarray

    @classmethod
    def of(cls, records: Sequence[Record], n: int) -> Shingles:
        """Hash every compared part of every record."""
        each = [compared_parts(r) for r in records]
        hashes, parts = shingle_hashes([part for p in each for part in p], n)
        sizes = np.fromiter(map(len, each), dtype=np.int64, count=len(each))
        return cls(hashes, parts, np.r_[0, np.cumsum(sizes)].astype(np.int64))

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Each record's LSH tokens: ``(flat hashes, record offsets)``."""
        return self.hashes, self.parts[self.record_parts]

    def sets(self, i: int) -> list[set[int]]:
        """Record ``i``'s shingle set per compared part (``record_similarity`` takes these)."""
        bounds = self.parts[self.record_parts[i] : self.record_parts[i + 1] + 1].tolist()
        return [set(self.hashes[a:b].tolist()) for a, b in zip(bounds, bounds[1:], strict=False)]


#: The dtype of each engine's digests.
_DTYPES: dict[str, type[np.unsignedinteger[Any]]] = {"rensa-r": np.uint32, "rensa-c": np.uint64}


def signatures(
    tokens: tuple[np.ndarray, np.ndarray], params: NearDupParams, rows: Index | None = None
) -> np.ndarray:
    """MinHash signature of each token list (or of ``rows`` only): ``(len, lsh_perm)``.

    ``tokens`` is ``(flat uint64 hashes, offsets)`` (``shingle_hashes``, ``Shingles.tokens``).
    The values are ``params.engine``'s digest of the hashed tokens at ``params.seed``: rensa's
    ``RMinHash`` (uint32) or ``CMinHash`` (uint64), tested against rensa's per-document path.
    """
    from rensa import CMinHash, RMinHash

    hashes, offsets = tokens
    chosen = np.arange(len(offsets) - 1) if rows is None else rows
    out = np.empty((len(chosen), params.lsh_perm), dtype=_DTYPES[params.engine])
    for start in range(0, len(chosen), SIGNATURE_DOCS):
        flat, bounds = _gather(hashes, offsets, chosen[start : start + SIGNATURE_DOCS])
        if params.engine == "rensa-r":
            matrix = RMinHash.digest_matrix_from_flat_token_hashes(
                flat, bounds.astype(np.uint64), params.lsh_perm, params.seed
            )
            digests = matrix.to_rows()
        else:
            pairs = zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
            lists = [flat[a:b].tolist() for a, b in pairs]
            digests = CMinHash.digests64_from_token_hash_sets(lists, params.lsh_perm, params.seed)
        out[start : start + len(bounds) - 1] = digests
    return out


def _gather(hashes: np.ndarray, offsets: np.ndarray, rows: Index) -> tuple[np.ndarray, np.ndarray]:
    """The token hashes of ``rows`` only, flat, and their offsets."""
    if len(rows) == len(offsets) - 1 and (len(rows) == 0 or rows[-1] == len(rows) - 1):
        return hashes, offsets
    lo = offsets[rows]
    sizes = offsets[rows + 1] - lo
    bounds = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    take = np.arange(bounds[-1]) + np.repeat(lo - bounds[:-1], sizes)
    return hashes[take], bounds


def possible_pairs(tokens: tuple[np.ndarray, np.ndarray], params: NearDupParams) -> Index:
    """Positions that share an LSH band with another position, found in Rust.

    rensa's one-shot LSH, with our bands (``params.bands`` over the ``lsh_perm`` values
    ``signatures`` computes), flags each row that shares a band hash with another row: the
    records ``shared_buckets`` would find (and, rarely, a few more by a hash collision; tested).
    Only they need their signatures turned into numpy, the slow part (a Python int per
    value): about half the rows a superset from bands of 4 rows gave on the benchmark corpus.
    """
    from rensa import RMinHash, RMinHashLSH

    hashes, offsets = tokens
    every = np.arange(len(offsets) - 1)
    if len(every) < 2 or params.engine != "rensa-r":
        return every
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(np.uint64), params.lsh_perm, params.seed
    )
    lsh = RMinHashLSH(params.candidate_threshold, params.lsh_perm, params.bands[0])
    flags = lsh.query_duplicate_flags_matrix_one_shot(matrix)
    return every[np.fromiter(flags, dtype=bool, count=len(every))]


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


#: A candidate whose MinHash estimate of Jaccard is this far under the threshold is not checked
#: exactly: at 128 permutations the estimate's standard deviation at J = 0.8 is 0.035, so a
#: pair at the threshold is screened out with probability ~1e-5 (the recall tests bound it).
SCREEN_MARGIN = 0.15
#: Candidate lists up to this long are checked exactly without the numpy screen (it costs more).
SCREEN_FROM = 8


def near_matches(
    shared: SharedBuckets,
    similarity: Callable[[int, int], float],
    threshold: float,
    all_pairs: bool = False,
    estimate: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> Iterator[tuple[int, int, float]]:
    """Confirmed near-duplicate pairs ``(earlier, later, Jaccard)``, in order of ``later``.

    With ``all_pairs=False`` (dedup) a record is compared only with earlier records that were
    themselves kept, and only its first match (lowest position) is reported; a matched record
    is not a candidate for later ones. With ``all_pairs=True`` every confirmed pair is reported.
    The pairs are positions; the callbacks take *rows* of ``shared.records`` (0, 1, ...).

    Args:
        shared: From ``shared_buckets``.
        similarity: Exact Jaccard of two rows.
        threshold: Minimum Jaccard to confirm a pair.
        all_pairs: Report every pair instead of each record's first kept match.
        estimate: MinHash estimates of Jaccard between rows (an array) and one row; when
            given, a long candidate list is screened by it first (``SCREEN_MARGIN``).
    """
    if len(shared.record) == 0:
        return
    positions = shared.records
    rows = np.searchsorted(positions, shared.record)
    ids, sizes = np.unique(shared.bucket, return_counts=True)
    capacity = dict(zip(ids.tolist(), sizes.tolist(), strict=True))
    members: dict[int, np.ndarray] = {}  # bucket -> its rows so far, ascending, preallocated
    filled: dict[int, int] = defaultdict(int)
    floor = threshold - SCREEN_MARGIN
    bounds = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1], True]).tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        i = int(rows[lo])
        buckets = shared.bucket[lo:hi].tolist()
        earlier = [members[b][: filled[b]] for b in buckets if filled[b]]
        if not earlier:
            candidates: Sequence[int] = ()
        else:
            array = earlier[0] if len(earlier) == 1 else _union(earlier)
            if estimate is not None and len(array) > SCREEN_FROM:
                array = array[estimate(array, i) >= floor]
            candidates = array.tolist()
        matched = False
        for j in candidates:
            score = similarity(j, i)
            if score >= threshold:
                yield int(positions[j]), int(positions[i]), score
                matched = True
                if not all_pairs:
                    break
        if all_pairs or not matched:
            for b in buckets:
                if b not in members:
                    members[b] = np.empty(capacity[b], dtype=np.int64)
                members[b][filled[b]] = i
                filled[b] += 1


def _union(arrays: list[np.ndarray]) -> np.ndarray:
    """The sorted union of a few int arrays (``np.unique`` costs more on these small ones)."""
    joined = np.concatenate(arrays)
    joined.sort()
    return joined[np.r_[True, joined[1:] != joined[:-1]]]


class _Sketch:
    """The low byte of each signature value: a cheap MinHash estimate of Jaccard.

    The equality mask of two rows, read as 64-bit words, is summed word-wise and its bytes
    added by one multiply (each byte counts agreements, so this holds while a row has at most
    255 values); ~1.6x faster than ``count_nonzero`` on ~200-row candidate lists.
    """

    _ONES = np.uint64(0x0101010101010101)

    def __init__(self, sigs: np.ndarray) -> None:
        self.width = sigs.shape[1]
        padded = -(-self.width // 8) * 8  # zero columns agree: subtracted in ``estimate``
        self.rows = np.zeros((len(sigs), padded), dtype=np.uint8)
        self.rows[:, : self.width] = sigs.astype(np.uint8)
        self.words = padded <= 255

    def estimate(self, js: np.ndarray, i: int) -> np.ndarray:
        """Share of equal values between rows ``js`` and row ``i``."""
        equal = self.rows[js] == self.rows[i]
        if not self.words:
            return np.count_nonzero(equal[:, : self.width], axis=1) / self.width
        words = equal.view(np.uint64).sum(axis=1, dtype=np.uint64)
        agree = (words * self._ONES) >> np.uint64(56)
        return (agree.astype(np.int64) - (self.rows.shape[1] - self.width)) / self.width


def confirmed_pairs(
    shingles: Shingles,
    positions: Index,
    shared: SharedBuckets,
    params: NearDupParams,
    all_pairs: bool,
    sigs: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """``near_matches`` over LSH candidates whose shingles are ``shingles`` (row k: positions[k]).

    ``sigs`` are the signatures of ``shared.records`` in order (computed here when not given:
    cheap in Rust for these few). Their low bytes screen long candidate lists: comparing 128
    bytes a pair is what keeps ~400k candidate pairs cheap, and a byte's chance agreement
    (1/256) lifts an estimate by under 0.004. Shingle sets are built only for pairs that pass.
    """
    candidates = shared.records
    rows = np.searchsorted(positions, candidates)
    if sigs is None:
        sigs = signatures(shingles.tokens(), params, rows)
    sets: dict[int, list[set[int]]] = {}

    def similar(j: int, i: int) -> float:
        for k in (j, i):
            if k not in sets:
                sets[k] = shingles.sets(int(rows[k]))
        return record_similarity(sets[j], sets[i])

    estimate = _Sketch(sigs).estimate
    return list(near_matches(shared, similar, params.threshold, all_pairs, estimate))


def _near_matches(
    records: Sequence[Record], params: NearDupParams, all_pairs: bool
) -> list[tuple[int, int, float]]:
    """Near-duplicate pairs of ``records``: rensa's flags, our LSH buckets, the exact Jaccard."""
    shingles = Shingles.of(records, params.ngram)
    tokens = shingles.tokens()
    flagged = possible_pairs(tokens, params)
    sigs = signatures(tokens, params, flagged)
    local = shared_buckets(band_keys(sigs, params), np.arange(len(flagged)))
    shared = SharedBuckets(flagged[local.record], local.bucket)  # sorted still: flagged ascends
    every = np.arange(len(records))
    return confirmed_pairs(shingles, every, shared, params, all_pairs, sigs[local.records])


def near_duplicate_pairs(
    records: Sequence[Record], params: NearDupParams
) -> list[tuple[int, int, float]]:
    """(earlier, later, Jaccard) for every confirmed near-duplicate pair, by LSH + exact check."""
    return _near_matches(records, params, all_pairs=True)


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
