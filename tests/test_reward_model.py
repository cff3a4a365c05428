"""Reward models (method ``reward``): training, scoring, the pipeline, serving, GRPO's judge.

A separable preference set (calm answers chosen over angry ones, tests/test_align.py's), tiny
models, fixed seeds. The recipe is TRL's ``RewardTrainer`` (tasks/train/reward.py); scores come
from runtime/reward_model.py, the one path training, the gate, ``/v1/classify`` and GRPO use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Server, run_cli, write_jsonl
from test_align import HELD_OUT_WORDS, TRAIN_WORDS, pairs, write

from adaptflow.errors import SpecError
from runtime.reward_model import RewardModel
from tasks.evaluate.reward import reward_baseline, score_reward_model
from tasks.train.align import AlignOptions
from tasks.train.peft import Hyper
from tasks.train.reward import train_reward_model

HYPER = Hyper(epochs=2, learning_rate=5e-3, batch_size=8, max_length=64, seed=7)
JUDGE = "calm-judge"
#: every weight trains: a smaller step than an adapter takes
FULL = Hyper(epochs=2, learning_rate=1e-4, batch_size=8, max_length=64, seed=7)


@pytest.fixture(scope="module")
def base() -> str:
    from adaptflow.catalogue import resolve_base_model

    return resolve_base_model("tiny-gpt")


def base_model_folder() -> str:
    from adaptflow.catalogue import resolve_base_model

    return resolve_base_model("tiny-gpt")


def test_a_decoder_reward_model_ranks_held_out_pairs(base: str, tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", pairs(TRAIN_WORDS, 2))
    held = write(tmp_path / "held.jsonl", pairs(HELD_OUT_WORDS))
    result = train_reward_model(train, base, HYPER, AlignOptions(), tmp_path / "pkg")
    package = Path(result.package_dir)
    manifest = json.loads((package / "adaptflow_model.json").read_text())
    assert manifest["kind"] == "reward-model" and manifest["options"]["decoder"] is True
    # LoRA r=8 on GPT-2's fused c_attn (128 -> 384) in 4 blocks, plus the new 128 -> 1 head
    assert result.trainable_params == 4 * 8 * (128 + 384) + 128
    assert result.steps == 10  # 36 pairs / 8 per batch -> 5 steps, 2 epochs
    assert result.loss_history[-1][1] < result.loss_history[0][1]
    trained = score_reward_model(RewardModel.from_package(package), pairs(HELD_OUT_WORDS))
    assert trained["metrics"]["preference_accuracy"] == pytest.approx(1.0)
    assert trained["metrics"]["reward_margin"] > 1.0
    # the baseline: the same base with an untrained head drawn from the same seed
    untrained = reward_baseline(base, held, 64, 7)["metrics"]
    # a random head ranks the six pairs anyhow (0 or 4 of 6 right, by the CPU's kernels) and
    # scores both answers of a pair alike
    assert untrained["preference_accuracy"] < 1.0
    assert abs(untrained["reward_margin"]) < 0.2
    # scores are a function of (prompt, answer): the prompt changes them
    model = RewardModel.from_package(package)
    answer = "A calm and quiet ember."
    one, two = model.score(["Describe the ember, take 0.", "Unrelated."], [answer, answer])
    assert one != two


def test_an_encoder_reward_model_with_every_weight_trained(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", pairs(TRAIN_WORDS, 2))
    result = train_reward_model(
        train, "minilm", FULL, AlignOptions(adapter="full"), tmp_path / "pkg"
    )
    package = Path(result.package_dir)
    assert (package / "weights" / "model.safetensors").is_file()
    assert result.trainable_params == result.total_params  # every weight, head included
    model = RewardModel.from_package(package)
    assert model.decoder is False
    scored = score_reward_model(model, pairs(HELD_OUT_WORDS))
    assert scored["metrics"]["preference_accuracy"] > 0.9


def test_reward_specs_are_checked_before_any_work(tmp_path: Path) -> None:
    from adaptflow.spec import Spec

    data = write(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    common = {"name": "r", "task": "instruction", "method": "reward", "data": {"train": data}}
    spec = Spec.model_validate(common | {"base_model": "minilm"})  # an encoder can judge
    assert spec.target.metric == "preference_accuracy"
    with pytest.raises(ValueError, match="encoder-decoder"):
        Spec.model_validate(common | {"base_model": "tiny-t5"})
    with pytest.raises(ValueError, match="trains on preference records"):
        Spec.model_validate(common | {"data": {"train": data, "format": "kto"}})
    with pytest.raises(ValueError, match="generates text"):  # other methods still need a decoder
        Spec.model_validate(common | {"method": "dpo", "base_model": "minilm"})
    with pytest.raises(ValueError, match="set align.judge"):
        Spec.model_validate(
            common | {"method": "lora", "base_model": "tiny-gpt", "target": {"metric": "win_rate"}}
        )
    with pytest.raises(ValueError, match="any method but ladder and reward"):
        Spec.model_validate(common | {"align": {"judge": "models:/j@champion"}})
    judged = common | {"method": "lora", "base_model": "tiny-gpt"}
    judged |= {"align": {"judge": "models:/j@champion"}, "target": {"metric": "win_rate"}}
    assert Spec.model_validate(judged).align.judge == "models:/j@champion"
    reward = {"kind": "model", "model": "models:/judge"}
    with pytest.raises(ValueError, match="names no registered model version"):
        Spec.model_validate(
            common | {"method": "grpo", "base_model": "tiny-gpt", "rewards": [reward]}
        )


def test_a_model_reward_that_is_no_package_is_refused(tmp_path: Path) -> None:
    from runtime.rewards import build_rewards

    with pytest.raises(SpecError, match=r"rewards\[0\]: model 'nowhere' is neither"):
        build_rewards([{"kind": "model", "model": "nowhere"}], tmp_path)


def _preference_file(folder: Path, words: list[str], repeat: int) -> Path:
    rows = [
        {"id": r["id"], "prompt": r["text"], "chosen": r["target"], "rejected": r["rejected"]}
        for r in pairs(words, repeat)
    ]
    return write_jsonl(folder / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Version 1 of ``calm-judge``: a reward model trained by the real pipeline (champion)."""
    from flows.pipeline import adapt_pipeline

    folder = tmp_path_factory.mktemp("judge")
    spec = {
        "name": JUDGE,
        "task": "instruction",
        "method": "reward",
        "base_model": "tiny-gpt",
        "data": {"train": str(_preference_file(folder, TRAIN_WORDS + HELD_OUT_WORDS, 3))},
        "train": {"epochs": 2, "learning_rate": 0.005, "batch_size": 8, "max_length": 64},
        "seed": 7,
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return adapt_pipeline(str(folder / "spec.yaml")) | {"folder": folder}


@pytest.mark.integration
def test_the_pipeline_trains_gates_registers_and_serves_a_reward_model(
    judge: dict[str, Any],
) -> None:
    assert judge["method"] == "reward" and judge["model_version"] == "1"
    assert judge["metrics"]["preference_accuracy"] > 0.9
    assert judge["baseline"]["preference_accuracy"] < judge["metrics"]["preference_accuracy"]
    assert judge["promoted"] and judge["champion_version"] == "1"
    # predict: one score per text (an answer to an empty prompt)
    done = run_cli("predict", f"models:/{JUDGE}@champion", "A calm and quiet owl.", "--json")
    assert done.returncode == 0, done.stderr
    (score,) = json.loads(done.stdout)["predictions"]
    assert isinstance(score, float)
    running = Server(JUDGE, os.environ.copy(), "--no-log")
    try:
        import httpx

        prompt = "Describe the owl, take 0."
        body = {"input": ["A calm and quiet owl.", "An angry, loud owl!!"], "prompt": prompt}
        reply = httpx.post(f"{running.url}/v1/classify", json=body)
        assert reply.status_code == 200, reply.text
        calm, angry = (d["score"] for d in reply.json()["data"])
        assert calm > angry
        assert reply.headers["X-Adaptflow-Version"] == "1"
        bad = httpx.post(f"{running.url}/v1/classify", json=body | {"prompt": ["one"]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
        chat = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": JUDGE, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 400 and "classify" in chat.json()["error"]["message"]
    finally:
        running.stop()


@pytest.mark.integration
def test_grpo_takes_its_reward_from_the_registered_reward_model(
    judge: dict[str, Any], tmp_path: Path
) -> None:
    """RLHF: GRPO with ``rewards: [{kind: model, model: models:/calm-judge@champion}]``."""
    from flows.pipeline import adapt_pipeline
    from registry.models import download_package

    prompts = [
        {"id": f"p{i}", "text": f"Describe the {w}, take 0.", "target": f"A calm {w}."}
        for i, w in enumerate(TRAIN_WORDS[:8] + HELD_OUT_WORDS[:4])
    ]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    spec = {
        "name": "calm-policy",
        "task": "instruction",
        "method": "grpo",
        "base_model": "tiny-gpt",
        "data": {"train": str(data)},
        "rewards": [{"kind": "model", "model": f"models:/{JUDGE}@champion"}],
        # the same judge compares its answers with the starting model's: win_rate
        "align": {"num_generations": 4, "judge": f"models:/{JUDGE}@champion"},
        "target": {"metric": "win_rate"},
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "max_new_tokens": 8,
            "max_length": 64,
            "learning_rate": 0.001,
        },
        "seed": 7,
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = adapt_pipeline(str(tmp_path / "spec.yaml"))
    metrics = result["metrics"]
    # the judge's package was fetched once, to the pipeline's cache of reward models
    from adaptflow.settings import load_settings

    cached = load_settings().work_dir / "reward-models" / JUDGE / "1"
    assert (cached / "adaptflow_model.json").is_file()
    assert metrics["reward_mean"] == pytest.approx(metrics["reward_mean.model"])
    assert "reward_mean.model" in result["baseline"]
    # win_rate: the judge's verdict on the candidate's answers against the base's, recomputed
    assert result["baseline"]["win_rate"] == 0.5  # its own answers: all ties
    from runtime.generate import Generator
    from tasks.evaluate.win_rate import answers_file, win_rate

    answers = Path(result["train"]["package_dir"]).parent / "eval" / "eval_answers.jsonl"
    prompts, ours = answers_file(answers)
    base_answers = Generator.from_base(base_model_folder(), 64, 8).predict(prompts)
    judge_model = RewardModel.from_package(cached)
    assert metrics["win_rate"] == pytest.approx(win_rate(judge_model, prompts, ours, base_answers))
    assert result["promoted"] == (metrics["win_rate"] > 0.5)
    # the version keeps its reward, so it is re-scored by the same judge as a champion
    package = download_package(f"models:/calm-policy/{result['model_version']}", tmp_path / "v")
    options = json.loads((package / "adaptflow_model.json").read_text())["options"]
    # pinned when the run started: the version the alias named, also tagged on the run
    assert options["rewards"] == [{"kind": "model", "weight": 1.0, "model": f"models:/{JUDGE}/1"}]
    from registry.tracking import client

    tags = client().get_run(result["mlflow_run_id"]).data.tags
    assert tags["adaptflow.reward_model.0"] == tags["adaptflow.judge"] == f"models:/{JUDGE}/1"
    # a judge that is not a reward model, or does not exist: refused before any work, naming
    # the reward (a SpecError: exit 2 from the command)
    from adaptflow.spec import load_spec
    from flows.steps import with_registered_base

    for judge, expected in (
        ("models:/calm-policy/1", "needs a reward model (method reward)"),
        ("models:/no-such-judge@champion", "no registered model named 'no-such-judge'"),
    ):
        spec["rewards"] = [{"kind": "model", "model": judge}]
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match=r"rewards\[0\]") as raised:
            with_registered_base(load_spec(tmp_path / "bad.yaml"), "grpo")
        assert expected in str(raised.value)
    # the judge is named as the judge; a folder that is no reward model is refused up front too
    spec["rewards"] = [{"kind": "exact_match"}]
    for judge, expected in (
        ("models:/calm-policy/1", "align.judge: 'models:/calm-policy/1' is version 1"),
        ("no-such-folder", "align.judge: 'no-such-folder' is neither a registered reward model"),
    ):
        spec["align"]["judge"] = judge
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError) as raised:
            with_registered_base(load_spec(tmp_path / "bad.yaml"), "grpo")
        assert expected in str(raised.value)
