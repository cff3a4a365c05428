"""Training settings chosen on a validation part of the training split (tasks/train/tune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptflow.spec import parse_spec
from tasks.train.tune import CANDIDATES, DEFAULTS, MAX_EPOCHS, keys_to_choose, plan_training

REPO = Path(__file__).resolve().parents[1]
CHARS = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"


def _spec(**changes):
    raw = {"name": "tune", "task": "classification", "method": "lora",
           "data": {"train": str(CHARS)}} | changes  # fmt: skip
    return parse_spec(raw, REPO)


def test_only_unset_keys_are_chosen_and_the_plan_says_how() -> None:
    plan = plan_training(_spec(), "lora", train_examples=600)
    assert plan is not None and plan.early_stopping
    assert plan.fixed == DEFAULTS["lora"] | {"epochs": MAX_EPOCHS}
    assert plan.space == {"learning_rate": CANDIDATES["lora"]["learning_rate"]}
    own = _spec(train={"learning_rate": 0.01, "lora_r": 4})
    plan = plan_training(own, "lora", train_examples=600)
    assert plan is not None and plan.space == {} and plan.early_stopping
    assert "learning_rate" not in plan.fixed and "lora_r" not in plan.fixed
    assert plan.fixed["lora_alpha"] == DEFAULTS["lora"]["lora_alpha"]
    every = {"epochs": 2, "learning_rate": 0.01, "lora_r": 4, "lora_alpha": 8,
             "target_modules": "all-linear"}  # fmt: skip
    assert plan_training(_spec(train=every), "lora", 600) is None
    assert plan_training(_spec(search={"auto": False}), "lora", 600) is None
    assert plan_training(_spec(search={"space": {"lora_r": [4, 8]}}), "lora", 600) is None
    assert keys_to_choose(_spec(), "icl") == []  # nothing to train
    assert keys_to_choose(_spec(train={"epochs": 2}), "lora") == [
        "learning_rate", "lora_alpha", "lora_r", "target_modules"
    ]  # fmt: skip


def test_too_few_examples_or_too_small_a_budget_fall_back_and_say_so() -> None:
    few = plan_training(_spec(), "lora", train_examples=60)
    assert few is not None and not few.searches
    assert few.fixed["epochs"] == 6 and few.fixed["learning_rate"] == 2e-3
    assert few.reason.startswith(
        "too few training examples to choose settings on validation: 60 give 12 (fewer than "
        "search.min_validation 20)"
    )
    poor = plan_training(_spec(budget={"gpu_hours": 0.001}), "lora", train_examples=600)
    assert poor is not None and not poor.searches
    assert "over the 0.00 h budget" in poor.reason and poor.reason.startswith(
        "choosing settings on validation would take ~"
    )


def test_early_stopping_keeps_the_best_epoch_and_never_trains_on_validation(
    tmp_path: Path,
) -> None:
    """The saved package scores on validation exactly what its best epoch scored there."""
    from tasks.evaluate.classification import classification_metrics
    from tasks.train.encoder import predict_labels
    from tasks.train.peft import Hyper, train_peft_classifier

    rows = [json.loads(line) for line in CHARS.open()]
    picked = [r for r in rows if r["label"] in ("uppercase-letter", "lowercase-letter")][:96]
    fit, validation = picked[:64], picked[64:]
    (tmp_path / "fit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fit))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in validation))
    hyper = Hyper(epochs=8, learning_rate=3e-3, batch_size=16, max_length=24, lora_r=16,
                  lora_alpha=32, patience=1, seed=5)  # fmt: skip
    result = train_peft_classifier(
        tmp_path / "fit.jsonl", "minilm", "lora", hyper, tmp_path / "pkg",
        validation_path=tmp_path / "val.jsonl",
    )  # fmt: skip
    history = result.validation_history
    assert history and [e for e, _ in history] == [float(i) for i in range(1, len(history) + 1)]
    best_epoch, best = max(history, key=lambda item: (item[1], -item[0]))
    assert result.best_epoch == best_epoch
    # patience 1: training ends one epoch after the last improvement, or at the last epoch
    assert len(history) == min(8, int(best_epoch) + 1)
    assert result.steps == len(history) * 4  # 64 examples in batches of 16 per epoch
    predicted = predict_labels(tmp_path / "pkg", [r["text"] for r in validation])
    kept = classification_metrics([r["label"] for r in validation], predicted)["f1_macro"]
    assert kept == pytest.approx(best, abs=1e-9)
    assert not (tmp_path / "pkg" / "trainer").exists()  # the epoch checkpoints are gone
