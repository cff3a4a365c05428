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
) -> dict[str, Any]:
    """Register a version (alias ``challenger``); promote it when ``promote`` is true.

    ``champion_version`` is the champion the gate compared against; promotion is refused if
    the alias moved since (no lost update).
    """
    registered = register_candidate(name, run_id, package_dir, card_facts, version_tags)
    champion = champion_version
    if promote:
        champion = promote_if_better(name, registered["version"], champion_version)[
            "champion_version"
        ]
    return registered | {"promoted": promote, "champion_version": champion}
