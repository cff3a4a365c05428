"""GRPO's rewards (runtime/rewards.py) and the spec's ``rewards`` block: values and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adaptflow.errors import SpecError
from adaptflow.spec import parse_spec
from runtime.rewards import build_rewards, reward_metrics

PROMPTS = ["q1", "q2", "q3"]
ANSWERS = ["The Paris.", "It is Lyon, I think", "rome!"]
REFERENCES: list[str | None] = ["paris", "Lyon", "Madrid"]


def test_each_reference_check_scores_as_documented() -> None:
    specs = [
        {"kind": "exact_match"},
        {"kind": "contains"},
        {"kind": "token_f1"},
        {"kind": "regex", "pattern": r"^[A-Z]"},
    ]
    rewards = build_rewards(specs)
    scores = {r.name: r.score(PROMPTS, ANSWERS, REFERENCES) for r in rewards}
    assert scores["exact_match"] == [1.0, 0.0, 0.0]  # SQuAD-normalised: article, case, dot
    assert scores["contains"] == [1.0, 1.0, 0.0]
    assert scores["token_f1"] == pytest.approx([1.0, 2 * (1 / 5) * 1 / (1 / 5 + 1), 0.0])
    assert scores["regex"] == [1.0, 1.0, 0.0]


def test_the_total_is_the_weighted_sum_averaged_and_repeats_are_numbered() -> None:
    specs = [
        {"kind": "exact_match", "weight": 2.0},
        {"kind": "regex", "pattern": "!$", "weight": 0.5},
        {"kind": "regex", "pattern": "^It", "weight": 1.0},
    ]
    metrics = reward_metrics(build_rewards(specs), PROMPTS, ANSWERS, REFERENCES)
    assert metrics["reward_mean.exact_match"] == pytest.approx(1 / 3)
    assert metrics["reward_mean.regex"] == pytest.approx(1 / 3)
    assert metrics["reward_mean.regex_2"] == pytest.approx(1 / 3)
    # per answer: 2*1 + 0 + 0, 0 + 0 + 1, 0 + 0.5 + 0
    assert metrics["reward_mean"] == pytest.approx((2 + 1 + 0.5) / 3)


def test_a_python_reward_is_imported_from_the_spec_folder_and_checked(tmp_path: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions, references):\n"
        "    return [len(c) / 10 for c in completions]\n"
        "def words(prompts, completions, references):\n"
        "    return ['many' for c in completions]\n"
        "def short(prompts, completions, references):\n"
        "    return [1.0]\n"
        "def flags(prompts, completions, references):\n"
        "    return [True for c in completions]\n",
        encoding="utf-8",
    )
    (length,) = build_rewards([{"kind": "python", "function": "my_rewards:length"}], tmp_path)
    assert length.score(PROMPTS, ANSWERS, REFERENCES) == pytest.approx([1.0, 1.9, 0.5])
    for name, message in (
        ("words", "rewards[0]: function 'my_rewards:words' returned a non-number at position 0"),
        ("short", "rewards[0]: function 'my_rewards:short' returned 1 scores for 3 completions"),
        ("flags", "returned a non-number at position 0: True"),
    ):
        (reward,) = build_rewards([{"kind": "python", "function": f"my_rewards:{name}"}], tmp_path)
        with pytest.raises(SpecError, match=re.escape(message)):
            reward.score(PROMPTS, ANSWERS, REFERENCES)
    with pytest.raises(SpecError, match="rewards\\[0\\]: function 'nowhere:f' does not import"):
        build_rewards([{"kind": "python", "function": "nowhere:f"}], tmp_path)
    with pytest.raises(SpecError, match="module 'my_rewards' has no function 'missing'"):
        build_rewards([{"kind": "python", "function": "my_rewards:missing"}], tmp_path)


def test_a_reference_check_without_references_says_so() -> None:
    (reward,) = build_rewards([{"kind": "exact_match"}])
    with pytest.raises(SpecError, match="1 record\\(s\\) have none"):
        reward.score(PROMPTS, ANSWERS, ["paris", None, "rome"])


def _spec(tmp_path: Path, **fields: object) -> dict[str, object]:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a", "target": "b"}\n', encoding="utf-8")
    return {
        "name": "rl",
        "task": "instruction",
        "base_model": "tiny-gpt",
        "data": {"train": str(data), "target_field": "target"},
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "grpo"}, "method 'grpo' needs rewards"),
        ({"method": "lora", "rewards": [{"kind": "exact_match"}]}, "rewards apply to method"),
        ({"method": "grpo", "rewards": [{"kind": "regex"}]}, "kind 'regex' needs 'pattern'"),
        (
            {"method": "grpo", "rewards": [{"kind": "regex", "pattern": "("}]},
            "is not a regular expression",
        ),
        (
            {"method": "grpo", "rewards": [{"kind": "python", "function": "no colon"}]},
            "function must be 'module:function'",
        ),
        (
            {"method": "grpo", "rewards": [{"kind": "exact_match", "pattern": "x"}]},
            "'pattern' applies to kind 'regex'",
        ),
        (
            {"method": "grpo", "rewards": [{"kind": "exact_match"}], "train": {"batch_size": 6}},
            "train.batch_size 6 must be a multiple of it",
        ),
        ({"method": "lora", "target": {"metric": "reward_mean"}}, "scores method 'grpo'"),
        (
            {"method": "grpo", "rewards": [{"kind": "model", "model": "models:/judge@"}]},
            "names no registered model version",
        ),
    ],
)
def test_bad_reward_specs_name_the_field(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(_spec(tmp_path, **fields), tmp_path, "spec.yaml")


def test_a_grpo_spec_targets_the_mean_reward_by_default(tmp_path: Path) -> None:
    spec = parse_spec(
        _spec(tmp_path, method="grpo", rewards=[{"kind": "contains", "weight": 2}]),
        tmp_path,
        "spec.yaml",
    )
    assert spec.metric == "reward_mean"
    assert spec.rewards[0].weight == 2.0
