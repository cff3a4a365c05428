"""Decontamination: training records that are largely eval-set content are dropped.

An eval score means little if the model saw the eval texts (or long pieces of them) in
training. GPT-3's check drops a training document for *any* word n-gram it shares with the eval
set; on a real corpus of boilerplate-heavy technical documents that rule dropped 247 of 708
documents for one shared 8-gram of licence, template or "For more information, see" text that
nearly every document holds, while none of them copied an eval document. So overlap here is a
share, measured on the n-grams that say something about content:

- n-grams are lower-cased word n-grams (``ngram``, default 8); a text shorter than n words is
  one n-gram of itself (compared whole);
- an n-gram held by more than ``max(BOILERPLATE_FLOOR, boilerplate x records)`` records of the
  corpus (train and eval together; ``boilerplate`` default 0.01) is boilerplate and ignored: a
  template or licence line is everywhere, a copied paragraph is in one or two records (exact
  and near duplicates are removed before the split, so a copy cannot hide by repetition);
- a training record is contaminated when at least ``min_share`` (default 0.5) of its own
  content n-grams occur in the eval set (it is mostly eval text), or when it holds at least
  ``min_share`` of one eval record's content n-grams (it contains most of an eval record).

The detail names the share and the eval record, so a reviewer can look at both. The same n
for every length: the shares make a long document's one shared phrase count for little, and a
short record's whole text for everything.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tasks.curate.blocks import Outcome, Removed
from tasks.curate.dedup import shingles
from tasks.curate.records import Record

T = TypeVar("T")
REASON = "overlaps eval set"
#: Records an n-gram may be held by, whatever the corpus size, before it counts as boilerplate.
BOILERPLATE_FLOOR = 5


def boilerplate_limit(records: int, boilerplate: float) -> int:
    """Most records an n-gram may be held by and still count as content (not boilerplate)."""
    return max(BOILERPLATE_FLOOR, int(boilerplate * records))


@dataclass
class EvalGrams:
    """The eval set's n-grams and the eval records holding each (up to ``limit`` + 1 of them)."""

    ngram: int
    limit: int
    owners: dict[str, list[str]] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        """Take in one eval record's n-grams."""
        for gram in shingles(record.full_text, self.ngram):
            holders = self.owners.setdefault(gram, [])
            if len(holders) <= self.limit:  # past the limit it is boilerplate anyway
                holders.append(record.id)


def eval_ngrams(evaluation: Iterable[Record], ngram: int, limit: int) -> EvalGrams:
    """Every word ``ngram``-gram of the eval records and the records holding it."""
    grams = EvalGrams(ngram, limit)
    for record in evaluation:
        grams.add(record)
    return grams


def count_train_holders(texts: Iterable[str], grams: EvalGrams) -> Counter[str]:
    """How many training texts hold each eval n-gram (the corpus-wide count's training part)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(g for g in shingles(text, grams.ngram) if g in grams.owners)
    return counts


def content_grams(grams: EvalGrams, train_holders: Counter[str]) -> set[str]:
    """The eval n-grams that are content: held by at most ``limit`` records in all."""
    return {
        gram
        for gram, holders in grams.owners.items()
        if len(holders) + train_holders[gram] <= grams.limit
    }


def contamination(
    text: str, grams: EvalGrams, content: set[str], eval_content: dict[str, int], min_share: float
) -> str | None:
    """Why ``text`` is contaminated (which share of what), or None.

    Args:
        text: A training record's text.
        grams: The eval set's n-grams.
        content: The eval n-grams that are not boilerplate (``content_grams``).
        eval_content: Each eval record's number of content n-grams.
        min_share: The share of shared content n-grams that makes a record contaminated.
    """
    n = grams.ngram
    own = shingles(text, n)
    shared = own & content
    if not shared:
        return None
    per_eval: Counter[str] = Counter()
    for gram in shared:
        per_eval.update(grams.owners[gram])
    # the eval record this one holds the largest share of (ties: the smallest id)
    eval_id = min(per_eval, key=lambda e: (-per_eval[e] / eval_content[e], e))
    of_eval = per_eval[eval_id] / eval_content[eval_id]
    # boilerplate n-grams of the record itself do not count for or against it
    own_content = len(own) - sum(1 for g in own if g in grams.owners and g not in content)
    of_own = len(shared) / own_content if own_content else 0.0
    if of_own >= min_share:
        return f"{of_own:.0%} of its content {n}-grams are in the eval set (eval id {eval_id})"
    if of_eval >= min_share:
        return f"holds {of_eval:.0%} of eval id {eval_id}'s content {n}-grams"
    return None


@dataclass(frozen=True)
class DecontaminationSettings:
    """``curation.decontaminate`` (see the module docstring)."""

    ngram: int = 8
    min_share: float = 0.5
    boilerplate: float = 0.01


def contaminated(
    train: Callable[[], Iterable[tuple[T, Record]]],
    evaluation: Iterable[Record],
    records: int,
    settings: DecontaminationSettings,
) -> Iterator[tuple[T, str]]:
    """The contaminated training records and why, in ``train``'s order.

    Args:
        train: Returns a fresh iterator of (key, record) over the training records; it is
            read twice (counting the eval n-grams' holders, then deciding).
        evaluation: The eval records.
        records: Records in the corpus (train and eval), for the boilerplate limit.
        settings: The spec's ``curation.decontaminate``.

    Yields:
        (key, detail) of each training record to drop.
    """
    limit = boilerplate_limit(records, settings.boilerplate)
    grams = eval_ngrams(evaluation, settings.ngram, limit)
    content = content_grams(grams, count_train_holders((r.full_text for _, r in train()), grams))
    sizes = eval_content_sizes(grams, content)
    for key, record in train():
        detail = contamination(record.full_text, grams, content, sizes, settings.min_share)
        if detail is not None:
            yield key, detail


def decontaminate(
    train: list[Record],
    evaluation: list[Record],
    settings: DecontaminationSettings = DecontaminationSettings(),  # noqa: B008 (frozen)
) -> Outcome:
    """Drop training records that are largely eval content (see the module docstring)."""
    found = dict(
        contaminated(lambda: enumerate(train), evaluation, len(train) + len(evaluation), settings)
    )
    kept = [record for i, record in enumerate(train) if i not in found]
    dropped = [Removed(train[i], "decontaminate", REASON, detail) for i, detail in found.items()]
    return Outcome(kept=kept, dropped=dropped)


def eval_content_sizes(grams: EvalGrams, content: set[str]) -> dict[str, int]:
    """Each eval record's number of content n-grams."""
    sizes: dict[str, int] = defaultdict(int)
    for gram in content:
        for holder in grams.owners[gram]:
            sizes[holder] += 1
    return sizes
