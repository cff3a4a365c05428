"""General-domain text (``data.general``): replay for CPT and the forgetting check.

The text is split once, by content hash, into a *check* part (held out: the forgetting check
measures it before and after training) and a *replay* part (mixed into CPT). The split depends
only on the texts, never on their order or the seed, so the same document is always on the
same side, and no replayed document is ever part of the check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from adaptflow.errors import DataError
from tasks.curate.documents import read_folder
from tasks.curate.records import Fields, Quarantined, read_records


@dataclass(frozen=True)
class GeneralText:
    """``data.general`` read and split: every input is in replay, check, or quarantined."""

    replay: list[str]
    check: list[str]
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def input(self) -> int:
        """Count of input records or files."""
        return len(self.replay) + len(self.check) + len(self.quarantined)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def split_general(texts: list[str], check_fraction: float, max_check: int) -> tuple[list, list]:
    """(replay, check): the texts with the smallest hashes form the check part.

    The check part is ``check_fraction`` of the texts (at least one, at most ``max_check``);
    with a single text there is nothing to replay.
    """
    unique = sorted(set(texts), key=_digest)
    size = min(max_check, max(1, round(len(unique) * check_fraction)))
    check = set(unique[:size])
    return [t for t in texts if t not in check], [t for t in unique if t in check]


def load_general(
    path: Path, text_field: str, check_fraction: float = 0.2, max_check: int = 200
) -> GeneralText:
    """Read ``data.general`` and split it into replay and check parts.

    ``data.general`` is a folder of documents, or a JSONL/CSV/Parquet file with ``text_field``.

    Raises:
        DataError: When the path cannot be read or holds no usable text.
    """
    if path.is_dir():
        read = read_folder(path, labelled=False)
    else:
        read = read_records(path, Fields(text=text_field, label=None))
    texts = [record.text for record in read.records]
    if not texts:
        raise DataError(
            f"{path}: data.general has no usable text "
            f"({len(read.quarantined)} records or files set aside)"
        )
    replay, check = split_general(texts, check_fraction, max_check)
    return GeneralText(replay, check, read.quarantined)
