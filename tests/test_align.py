"""Preference tuning and RL through TRL (tasks/train/align.py) and their metrics.

The metrics are tasks/evaluate/preference.py's and runtime/rewards.py's.
Tiny-gpt, a separable preference set (calm answers chosen over angry ones), fixed seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.generate import Generator, answer_logps
from tasks.evaluate.preference import preference_metrics
from tasks.train.align import AlignOptions, preference_rows, setup, train_aligned
from tasks.train.peft import Hyper

TRAIN_WORDS = [
    "apple", "river", "stone", "cloud", "maple", "tiger", "violin", "copper", "lantern",
    "meadow", "harbor", "pencil", "garden", "candle", "mirror", "basket", "falcon", "thunder",
]  # fmt: skip
HELD_OUT_WORDS = ["orchard", "glacier", "compass", "ember", "willow", "saddle"]
HYPER = Hyper(epochs=2, learning_rate=5e-3, batch_size=8, max_length=64, seed=7)


def pairs(words: list[str], repeat: int = 1) -> list[dict[str, Any]]:
    """Curated preference rows: a calm description chosen over an angry one."""
    return [
        {
            "id": f"{w}-{i}",
            "text": f"Describe the {w}, take {i}.",
            "target": f"A calm and quiet {w}.",
            "rejected": f"An angry, loud {w}!!",
        }
        for i in range(repeat)
        for w in words
    ]


def kto_rows(words: list[str], repeat: int = 1) -> list[dict[str, Any]]:
    """KTO rows: every pair's two answers, labelled."""
    out = []
    for row in pairs(words, repeat):
        common = {"text": row["text"]}
        out.append(common | {"id": row["id"] + "+", "target": row["target"], "label": "desirable"})
        bad = {"id": row["id"] + "-", "target": row["rejected"], "label": "undesirable"}
        out.append(common | bad)
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base() -> str:
    from adaptflow.catalogue import resolve_base_model

    return resolve_base_model("tiny-gpt")


def test_dpo_lora_raises_preference_accuracy_on_held_out_pairs(base: str, tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", pairs(TRAIN_WORDS, 2))
    result = train_aligned(
        train, base, "dpo", HYPER, AlignOptions(), tmp_path / "pkg", tmp_path / "ck"
    )
    held_out = pairs(HELD_OUT_WORDS)
    before = preference_metrics(Generator.from_base(base, 64, 8), held_out, 0.1)
    after = preference_metrics(Generator.from_package(Path(result.package_dir)), held_out, 0.1)
    assert before["reward_margin"] == 0.0  # the starting model is its own reference
    # the base ranks some pairs wrong (how many depends on the CPU's kernels, which trained it);
    # the tuned model ranks every one right
    assert before["preference_accuracy"] < 1.0
    assert after["preference_accuracy"] == pytest.approx(1.0, abs=1e-9)
    assert after["reward_margin"] > 1.0
    # the package holds an adapter (TRL trained our peft config), its trainable count exact:
    # LoRA r=8 on GPT-2's fused c_attn (128 -> 384) in 4 blocks: 4 * 8 * (128 + 384)
    assert (Path(result.package_dir) / "adapter" / "adapter_model.safetensors").is_file()
    assert result.trainable_params == 4 * 8 * (128 + 384)
    assert result.steps == 10  # 36 pairs, batches of 8 (5 per epoch), 2 epochs
    assert result.loss_history[0][1] > result.loss_history[-1][1]


def test_the_reference_policy_is_the_base_with_the_adapter_disabled(
    base: str, tmp_path: Path
) -> None:
    from tasks.train.align import _trainer

    model, tokenizer, peft = setup(base, "dpo", HYPER, AlignOptions())
    records = preference_rows(tokenizer, pairs(TRAIN_WORDS), "dpo")
    arguments = {
        "output_dir": str(tmp_path),
        "max_steps": 3,
        "learning_rate": 5e-3,
        "per_device_train_batch_size": 8,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "bf16": False,  # TRL's configs default to bf16 autocast, on CPU too (the recipe sets it)
    }
    trainer = _trainer("dpo", model, tokenizer, records, arguments, AlignOptions(), peft)
    # no second model, and no "ref" copy of the adapter: the reference is the disabled adapter
    assert trainer.ref_model is None
    assert list(trainer.model.peft_config) == ["default"]
    trainer.train()
    trained = trainer.model.eval()
    triples = [(r["text"], r["target"], None) for r in pairs(HELD_OUT_WORDS)]
    with trained.disable_adapter():
        disabled = answer_logps(trained, tokenizer, triples, "decoder", 64)
    enabled = answer_logps(trained, tokenizer, triples, "decoder", 64)
    fresh = Generator.from_base(base, 64, 8)
    original = answer_logps(fresh.model, fresh.tokenizer, triples, "decoder", 64)
    assert disabled == pytest.approx(original, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(enabled, original, strict=True)) > 1e-2


@pytest.mark.parametrize("method", ["kto", "orpo", "simpo"])
def test_each_preference_method_moves_the_model_towards_the_chosen_answers(
    method: str, base: str, tmp_path: Path
) -> None:
    rows = kto_rows(TRAIN_WORDS) if method == "kto" else pairs(TRAIN_WORDS, 2)
    train = write(tmp_path / "train.jsonl", rows)
    result = train_aligned(
        train, base, method, HYPER, AlignOptions(), tmp_path / "pkg", tmp_path / "ck"
    )
    held_out = kto_rows(HELD_OUT_WORDS) if method == "kto" else pairs(HELD_OUT_WORDS)
    candidate = Generator.from_package(Path(result.package_dir))
    after = preference_metrics(candidate, held_out, 0.1)
    before = preference_metrics(Generator.from_base(base, 64, 8), held_out, 0.1)
    # the base ranks some pairs wrong (how many depends on the CPU's kernels, which trained it);
    # the tuned model ranks every one right
    assert before["preference_accuracy"] < 1.0
    assert after["preference_accuracy"] == pytest.approx(1.0, abs=1e-9)
    assert after["reward_margin"] > 0.1


def test_rows_of_the_wrong_kind_are_refused_with_the_record(base: str) -> None:
    from adaptflow.errors import SpecError

    _, tokenizer, _ = setup(base, "dpo", HYPER, AlignOptions())
    with pytest.raises(SpecError, match="record a-0 has no rejected answer"):
        preference_rows(tokenizer, [{"id": "a-0", "text": "x", "target": "y"}], "dpo")
    with pytest.raises(SpecError, match="record b has none"):
        preference_rows(tokenizer, [{"id": "b", "text": "x", "target": "y"}], "kto")


COLOURS = [
    {"id": str(i), "text": f"Say the colour {c}.", "target": c}
    for i, c in enumerate(["red", "blue", "green"] * 8)
]


def test_grpo_raises_an_exact_match_reward_from_an_sft_start(base: str, tmp_path: Path) -> None:
    import shutil

    from tasks.evaluate.generation import score_generative
    from tasks.train.sft import train_generator

    data = write(tmp_path / "colours.jsonl", COLOURS)
    short = Hyper(epochs=4, learning_rate=3e-3, batch_size=8, max_length=48, max_new_tokens=4)
    sft = tmp_path / "sft"
    train_generator(data, base, "full", short, sft, tmp_path / "ck")
    # the SFT package's weights with its tokenizer: a base folder (as a registered version is)
    for item in (sft / "tokenizer").iterdir():
        shutil.copy(item, sft / "weights" / item.name)
    rewards = [{"kind": "exact_match", "weight": 1.0}]
    before = score_generative(Generator.from_package(sft), COLOURS, None, rewards)["metrics"]
    fast = Hyper(**{**short.__dict__, "learning_rate": 2e-3})
    options = AlignOptions(num_generations=4, max_new_tokens=4, beta=0.0)
    rl = train_aligned(
        data,
        str(sft / "weights"),
        "grpo",
        fast,
        options,
        tmp_path / "rl",
        tmp_path / "ck",
        rewards=rewards,
    )
    after = score_generative(Generator.from_package(Path(rl.package_dir)), COLOURS, None, rewards)
    # SFT learnt the format and one colour for every prompt; RL, rewarded for the exact colour,
    # learns a second one
    assert before["reward_mean"] == pytest.approx(1 / 3, abs=1e-9)
    assert after["metrics"]["reward_mean"] >= 0.6
    assert after["metrics"]["reward_mean.exact_match"] == after["metrics"]["exact_match"]
    assert rl.steps == 48  # 24 prompts x 4 samples / batches of 8, 4 epochs
    manifest = json.loads((Path(rl.package_dir) / "adaptflow_model.json").read_text())
    assert manifest["method"] == "grpo" and manifest["options"]["rewards"] == rewards
