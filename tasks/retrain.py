"""Scheduled retraining: train again only when the curated data changed since the champion.

The curated data's DVC hash (``curation["data_hash"]``, computed by the curation stage) is
compared with the ``adaptflow.data_hash`` tag every registered version carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

DATA_HASH_TAG = "adaptflow.data_hash"


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to train, and why (the sentence the flow logs and returns)."""

    retrain: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The decision as a plain dict."""
        return asdict(self)


def retrain_decision(
    data_hash: str,
    champion_version: str | None,
    champion_hash: str | None,
    force: bool = False,
) -> RetrainDecision:
    """Decide whether a scheduled retrain trains, from the data hash and the champion's tag.

    Args:
        data_hash: DVC hash of the data curated just now.
        champion_version: The ``champion`` alias's version, or None when there is none.
        champion_hash: That version's ``adaptflow.data_hash`` tag, or None when it has none.
        force: Train even when the data is unchanged.

    Returns:
        The decision; ``retrain`` is False only for unchanged data without ``force``.
    """
    if champion_version is None:
        return RetrainDecision(True, f"no champion yet (data hash {data_hash})")
    if champion_hash is None:
        return RetrainDecision(
            True, f"champion v{champion_version} has no {DATA_HASH_TAG} tag to compare with"
        )
    if champion_hash != data_hash:
        return RetrainDecision(
            True,
            f"data changed since champion v{champion_version} "
            f"(hash {champion_hash} -> {data_hash})",
        )
    unchanged = f"data unchanged since champion v{champion_version} (hash {data_hash})"
    if force:
        return RetrainDecision(True, f"{unchanged}; force=True")
    return RetrainDecision(False, unchanged)


def champion_data(name: str) -> dict[str, str | None]:
    """The champion's version and the data hash it was trained on (None where missing)."""
    from registry.models import champion_version, version_tags

    version = champion_version(name)
    if version is None:
        return {"version": None, "data_hash": None}
    return {"version": version, "data_hash": version_tags(name, version).get(DATA_HASH_TAG)}


champion_data_task = task(name="champion_data", cache_policy=NO_CACHE)(champion_data)
