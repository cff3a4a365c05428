"""The spec's rewards as scorers, with registered reward models fetched from the registry.

``runtime.rewards`` computes rewards without talking to the registry (a served package must
not need it); this is the pipeline's side: ``kind: model`` rewards naming ``models:/NAME@ALIAS``
are downloaded once (``registry.models.reward_package``) and handed over as folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptflow.catalogue import registered_reference
from adaptflow.settings import load_settings
from registry.models import reward_package
from runtime.rewards import Reward, build_rewards


def fetch_reward_models(rewards: list[dict[str, Any]]) -> dict[str, Path]:
    """The local package folder of every registered reward model the rewards name.

    Raises:
        SpecError: No such model, alias or version, or not a reward model.
        ServiceError: The registry could not be read.
    """
    root = load_settings().work_dir / "reward-models"
    return {
        r["model"]: reward_package(r["model"], root, f"rewards[{i}]")
        for i, r in enumerate(rewards)
        if r.get("kind") == "model" and registered_reference(r["model"]) is not None
    }


def reward_scorers(rewards: list[dict[str, Any]], spec_dir: Path | None = None) -> list[Reward]:
    """``build_rewards`` of the spec's ``rewards``, registered reward models fetched first.

    Raises:
        SpecError: A reward that cannot be built (see ``build_rewards``), or a registered
            version that does not exist or is not a reward model.
    """
    return build_rewards(rewards, spec_dir, fetch_reward_models(rewards))
