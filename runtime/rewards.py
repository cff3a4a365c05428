"""The rewards of ``grpo`` (the spec's ``rewards``): scoring answers, in training and evaluation.

One ``Reward`` per spec entry. Training hands them to TRL's GRPO trainer as reward functions
(``tasks.train.align``), evaluation scores the held-out prompts' greedy answers with the same
functions (``reward_metrics``), so the number the gate compares is the number RL optimised.

- ``exact_match``, ``contains``, ``token_f1``: the answer against the record's reference
  answer, SQuAD-normalised (``runtime.text_metrics``); 1/0, 1/0 and the F1.
- ``regex``: 1 when ``pattern`` is found in the answer (``re.search``), else 0.
- ``python``: ``module:function``, imported with the spec's folder on ``sys.path`` and called as
  ``function(prompts=[...], completions=[...], references=[...])``; it returns one real number
  per completion. Anything else is an error naming the function and the first bad value.
- ``model``: a reward model package (method ``reward``, ``runtime.reward_model``) scores each
  answer to its prompt. ``models:/NAME@ALIAS`` arrives resolved to a local folder (the
  pipeline downloads it; the runtime does not talk to the registry); a folder path is used as is.

Prompts are the user's text (not the rendered template), in training and evaluation alike.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

from adaptflow.errors import SpecError
from runtime.text_metrics import exact_match, normalize_answer, token_f1

Scorer = Callable[[list[str], list[str], list[str | None]], list[float]]


@dataclass(frozen=True)
class Reward:
    """One weighted reward: ``score(prompts, completions, references)`` -> one float each."""

    name: str
    weight: float
    score: Scorer


def _reference_check(kind: str, check: Callable[[str, str], float]) -> Scorer:
    def score(prompts: list[str], completions: list[str], refs: list[str | None]) -> list[float]:
        missing = [i for i, ref in enumerate(refs) if ref is None]
        if missing:
            raise SpecError(
                f"reward '{kind}' compares answers with the record's reference answer; "
                f"{len(missing)} record(s) have none (give every record a target)"
            )
        return [check(c, str(r)) for c, r in zip(completions, refs, strict=True)]  # none is None

    return score


def _contains(completion: str, reference: str) -> float:
    return 1.0 if normalize_answer(reference) in normalize_answer(completion) else 0.0


def _regex(pattern: str) -> Scorer:
    compiled = re.compile(pattern)

    def score(prompts: list[str], completions: list[str], refs: list[str | None]) -> list[float]:
        return [1.0 if compiled.search(c) else 0.0 for c in completions]

    return score


def import_function(path: str, base_dir: Path | None, where: str = "rewards") -> Callable[..., Any]:
    """``module:function`` imported with ``base_dir`` (the spec's folder) first on ``sys.path``.

    Raises:
        SpecError: When the module does not import or has no such callable.
    """
    module_name, _, attribute = path.partition(":")
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may fail in any way while importing
        raise SpecError(f"{where}: function '{path}' does not import: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    function = getattr(module, attribute, None)
    if not callable(function):
        raise SpecError(f"{where}: module '{module_name}' has no function '{attribute}'")
    return function  # type: ignore[no-any-return]


def _python(function: Callable[..., Any], path: str, where: str) -> Scorer:
    def score(prompts: list[str], completions: list[str], refs: list[str | None]) -> list[float]:
        values = function(prompts=prompts, completions=completions, references=refs)
        return checked_scores(values, len(completions), f"{where}: function '{path}'")

    return score


def checked_scores(values: Any, expected: int, who: str) -> list[float]:
    """``values`` as floats, or a ``SpecError`` saying what is wrong with them.

    Raises:
        SpecError: When ``values`` is not a sequence of ``expected`` finite real numbers.
    """
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise SpecError(f"{who} must return a list of numbers, got {type(values).__name__}")
    if len(values) != expected:
        raise SpecError(f"{who} returned {len(values)} scores for {expected} completions")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise SpecError(
                f"{who} returned a non-number at position {index}: {value!r} (scores are "
                "finite real numbers)"
            )
    return [float(v) for v in values]


def _model(folder: Path) -> Scorer:
    from runtime.reward_model import RewardModel

    judge = RewardModel.from_package(folder)

    def score(prompts: list[str], completions: list[str], refs: list[str | None]) -> list[float]:
        return judge.score(prompts, completions)

    return score


def build_rewards(
    specs: list[dict[str, Any]],
    base_dir: Path | None = None,
    models: dict[str, Path] | None = None,
) -> list[Reward]:
    """The spec's ``rewards`` (as dicts) as scorers, named ``kind`` (``kind_2``... on repeats).

    Args:
        specs: The rewards (``RewardSpec`` dicts).
        base_dir: The spec's folder (python rewards import from it, model paths resolve in it).
        models: Local package folders of the ``model`` rewards' registered versions.

    Raises:
        SpecError: When a python reward does not import, or a model reward has no package.
    """
    rewards: list[Reward] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        kind = spec["kind"]
        seen[kind] = seen.get(kind, 0) + 1
        name = kind if seen[kind] == 1 else f"{kind}_{seen[kind]}"
        where = f"rewards[{index}]"
        scorer: Scorer
        if kind == "exact_match":
            scorer = _reference_check(kind, exact_match)
        elif kind == "contains":
            scorer = _reference_check(kind, _contains)
        elif kind == "token_f1":
            scorer = _reference_check(kind, token_f1)
        elif kind == "regex":
            scorer = _regex(spec["pattern"])
        elif kind == "python":
            function = import_function(spec["function"], base_dir, where)
            scorer = _python(function, spec["function"], where)
        elif kind == "model":
            scorer = _model(_model_folder(spec["model"], base_dir, models or {}, where))
        else:
            raise SpecError(f"{where}: reward kind '{kind}' is not available in this version")
        rewards.append(Reward(name, float(spec.get("weight", 1.0)), scorer))
    return rewards


def _model_folder(
    reference: str, base_dir: Path | None, models: dict[str, Path], where: str
) -> Path:
    if reference in models:
        return models[reference]
    folder = Path(reference)
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    if not (folder / "adaptflow_model.json").is_file():
        raise SpecError(
            f"{where}: model '{reference}' is neither a registered reward model "
            "(models:/NAME@ALIAS) nor a reward model package folder"
        )
    return folder


def reward_metrics(
    rewards: list[Reward], prompts: list[str], completions: list[str], refs: list[str | None]
) -> dict[str, float]:
    """``reward_mean`` (the weighted sum, averaged over answers) and ``reward_mean.<name>``."""
    if not completions:
        return {"reward_mean": 0.0} | {f"reward_mean.{r.name}": 0.0 for r in rewards}
    metrics: dict[str, float] = {}
    total = [0.0] * len(completions)
    for reward in rewards:
        scores = reward.score(prompts, completions, refs)
        metrics[f"reward_mean.{reward.name}"] = sum(scores) / len(scores)
        total = [t + reward.weight * s for t, s in zip(total, scores, strict=True)]
    return {"reward_mean": sum(total) / len(total)} | metrics
