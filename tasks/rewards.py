"""The spec's rewards as scorers, with registered reward models fetched from the registry.

``runtime.rewards`` computes rewards without talking to the registry (a served package must
not need it); this is the pipeline's side: ``kind: model`` rewards naming ``models:/NAME@ALIAS``
are downloaded once (``registry.models.reward_package``) and handed over as folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptflow.catalogue import registered_reference
from adaptflow.errors import RegistryError, SpecError
from adaptflow.settings import load_settings
from adaptflow.spec import Spec
from registry.models import reward_package
from runtime.manifest import read_raw
from runtime.rewards import Reward, build_rewards


def reward_model_folder(reference: str, field: str, spec_dir: Path | None = None) -> Path:
    """The local package of the reward model ``reference`` names (registered or a folder).

    Raises:
        SpecError: No such registered version or folder, or not a reward model (naming
            ``field``: ``rewards[i]`` or ``align.judge``).
        ServiceError: The registry could not be read.
    """
    if registered_reference(reference) is not None:
        return reward_package(reference, load_settings().work_dir / "reward-models", field)
    folder = Path(reference)
    if not folder.is_absolute() and spec_dir is not None:
        folder = spec_dir / folder
    try:
        kind = read_raw(folder)["kind"]
    except RegistryError:
        raise SpecError(
            f"{field}: '{reference}' is neither a registered reward model (models:/NAME@ALIAS) "
            "nor a reward model package folder"
        ) from None
    if kind != "reward-model":
        raise SpecError(f"{field}: {folder} is a '{kind}' package, not a reward model")
    return folder.resolve()


def pinned_reference(reference: str, field: str, spec_dir: Path | None = None) -> str:
    """A reward model reference pinned: an alias as the version it names now, or a folder.

    ``models:/NAME@ALIAS`` becomes ``models:/NAME/N`` (fetched and checked); a folder its
    absolute path (checked).
    """
    folder = reward_model_folder(reference, field, spec_dir)
    if registered_reference(reference) is None:
        return str(folder)
    return f"models:/{folder.parent.name}/{folder.name}"


def pin_reward_models(spec: Spec) -> Spec:
    """``spec`` with every reward model it names fetched, checked and pinned to one version.

    GRPO's ``kind: model`` rewards and ``align.judge``; the run is tagged with them
    (``adaptflow.reward_model.I``, ``adaptflow.judge``). A spec naming none is returned as is.

    Raises:
        SpecError: A reward model that does not exist or is not one (naming its field).
        ServiceError: The registry could not be read.
    """
    spec_dir = spec.source.parent if spec.source else None
    pins: dict[str, str] = {}
    rewards = []
    for index, reward in enumerate(spec.rewards):
        if reward.kind == "model" and reward.model is not None:
            uri = pinned_reference(reward.model, f"rewards[{index}]", spec_dir)
            pins[f"adaptflow.reward_model.{index}"] = uri
            reward = reward.model_copy(update={"model": uri})
        rewards.append(reward)
    judge = spec.align.judge
    if judge is not None:
        judge = pinned_reference(judge, "align.judge", spec_dir)
        pins["adaptflow.judge"] = judge
    return spec.with_pinned_reward_models(rewards, judge, pins) if pins else spec


def fetch_reward_models(rewards: list[dict[str, Any]]) -> dict[str, Path]:
    """The local package folder of every registered reward model the rewards name.

    Raises:
        SpecError: No such model, alias or version, or not a reward model.
        ServiceError: The registry could not be read.
    """
    return {
        r["model"]: reward_model_folder(r["model"], f"rewards[{i}]")
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
