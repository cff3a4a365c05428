"""Stage flow: register the candidate; move ``champion`` only when the gate said so."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.tracking import promote_if_better, register_candidate


@flow(name="register")
def register(
    name: str,
    run_id: str,
    package_dir: str,
    card_facts: dict[str, Any],
    version_tags: dict[str, str],
    promote: bool,
    champion_version: str | None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Register a version (alias ``challenger``); promote it when ``promote`` is true.

    ``champion_version`` is the champion the gate compared against; if the alias moved since,
    the candidate is promoted only when it beats the new champion on ``metric`` (no lost
    update; ``promotion`` then says why, and ``promoted`` is false when it was refused).
    """
    registered = register_candidate(name, run_id, package_dir, card_facts, version_tags)
    champion, promoted, note = champion_version, False, None
    if promote:
        outcome = promote_if_better(name, registered["version"], champion_version, metric)
        champion, promoted, note = (
            outcome["champion_version"],
            outcome["promoted"],
            outcome.get("reason"),
        )
    return registered | {"promoted": promoted, "champion_version": champion, "promotion": note}
