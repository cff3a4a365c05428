"""``win_rate``: how often a judge (a reward model) prefers a model's answers to the base's.

For each held-out prompt the judge scores the model's greedy answer and the starting model's
(the baseline's) greedy answer to the same prompt; ``win_rate`` is the share of prompts where
the model's answer scores higher, a tie counting half. The baseline's own ``win_rate`` is 0.5
by definition (every comparison a tie), so ``win_rate > 0.5`` means "the judge prefers the
candidate to where it started", and the champion's ``win_rate`` against the same base answers
makes the gate's second comparison like for like.

The judge is ``align.judge``: a registered reward model (``models:/NAME@ALIAS``, fetched once
as GRPO's ``kind: model`` rewards are) or a reward model package folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptflow.errors import InvariantError
from runtime.reward_model import RewardModel
from tasks.rewards import reward_model_folder


def load_judge(reference: str, spec_dir: Path | None = None) -> RewardModel:
    """The reward model ``align.judge`` names, loaded.

    Raises:
        SpecError: No such registered version, or not a reward model.
        RegistryError: A folder that is not a reward model package.
    """
    return RewardModel.from_package(reward_model_folder(reference, "align.judge", spec_dir))


def win_rate(
    judge: RewardModel, prompts: list[str], answers: list[str], opponent: list[str]
) -> float:
    """The share of ``prompts`` where the judge scores ``answers`` above ``opponent``'s."""
    if not prompts:
        return 0.5
    ours = judge.score(prompts, answers)
    theirs = judge.score(prompts, opponent)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs, strict=True))
    return wins / len(prompts)


def answers_file(path: Path) -> tuple[list[str], list[str]]:
    """(prompts, answers) of an ``eval_answers.jsonl`` the evaluate stage wrote."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row["text"] for row in rows], [row["prediction"] for row in rows]


def candidate_win_rate(
    judge_ref: str, spec_dir: Path | None, artifacts: list[str], baseline: list[str]
) -> dict[str, Any]:
    """``{"win_rate": x}`` of the candidate whose evaluation wrote ``artifacts``."""
    path = next((Path(a) for a in artifacts if Path(a).name == "eval_answers.jsonl"), None)
    if path is None:
        raise InvariantError("win_rate needs a generative candidate's eval_answers.jsonl")
    prompts, answers = answers_file(path)
    return {"win_rate": win_rate(load_judge(judge_ref, spec_dir), prompts, answers, baseline)}
