"""Training settings chosen on a validation part of the training split (tasks/train/tune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptflow.spec import parse_spec
from tasks.train.tune import (
    DEFAULTS,
    MAX_EPOCHS,
    clearly_better,
    flat,
    keys_to_choose,
    plan_training,
    search_hours,
    second_learning_rate,
)

REPO = Path(__file__).resolve().parents[1]
CHARS = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"
PAIRS = REPO / "examples" / "unicode-lowercase" / "data" / "pairs.jsonl"


def _spec(**changes):
    raw = {"name": "tune", "task": "classification", "method": "lora",
           "data": {"train": str(CHARS)}} | changes  # fmt: skip
    return parse_spec(raw, REPO)


def test_only_unset_keys_are_chosen_and_the_plan_says_how() -> None:
    plan = plan_training(_spec(), "lora", train_examples=600)
    assert plan is not None and plan.early_stopping and plan.check_learning_rate
    assert plan.fixed == DEFAULTS["lora"] | {"epochs": MAX_EPOCHS}
    # a spec's own rate keeps the classic recipe around it; only the epochs are chosen
    own = _spec(train={"learning_rate": 0.01, "lora_r": 4})
    plan = plan_training(own, "lora", train_examples=600)
    assert plan is not None and plan.early_stopping and not plan.check_learning_rate
    assert plan.fixed == {"epochs": MAX_EPOCHS}
    assert keys_to_choose(own, "lora") == ["epochs"]
    epochs_set = plan_training(_spec(train={"epochs": 2}), "lora", 600)
    assert epochs_set is not None and not epochs_set.early_stopping
    assert epochs_set.fixed == DEFAULTS["lora"]  # nothing to stop on: the fixed values
    every = {"epochs": 2, "learning_rate": 0.01, "lora_r": 4, "lora_alpha": 8,
             "target_modules": "all-linear"}  # fmt: skip
    assert plan_training(_spec(train=every), "lora", 600) is None
    fixed = plan_training(_spec(search={"auto": False}), "lora", 600)
    assert fixed is not None and not fixed.early_stopping
    assert fixed.fixed == DEFAULTS["lora"] | {"epochs": 8}
    assert fixed.reason.startswith("search.auto is off: the fixed defaults")
    assert plan_training(_spec(search={"space": {"lora_r": [4, 8]}}), "lora", 600) is None
    assert keys_to_choose(_spec(), "icl") == []  # nothing to train
    assert keys_to_choose(_spec(train={"epochs": 2}), "lora") == [
        "learning_rate", "lora_alpha", "lora_r", "target_modules"
    ]  # fmt: skip


def _generative(**changes):
    data = {"train": str(PAIRS), "target_field": "target"}
    return _spec(task="instruction", base_model="tiny-gpt", data=data, **changes)


def test_generative_methods_choose_only_their_epochs() -> None:
    for method in ("lora", "full", "freeze", "prefix"):
        assert keys_to_choose(_generative(), method) == ["epochs"], method
    plan = plan_training(_generative(), "lora", train_examples=480)
    assert plan is not None and plan.early_stopping and not plan.check_learning_rate
    assert plan.fixed == {"epochs": MAX_EPOCHS}  # learning rate, rank, modules: defaults
    assert plan.fallback_epochs == 3.0  # a flat validation curve keeps the default epochs
    assert flat([(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)]) and not flat([(1.0, 0.0), (2.0, 0.1)])
    assert not flat([(1.0, 0.3)])  # one epoch is not a curve
    classifier = plan_training(_spec(), "lora", train_examples=600)
    assert classifier is not None and classifier.fallback_epochs == 8
    assert plan_training(_generative(train={"epochs": 2}), "full", 480) is None
    few = plan_training(_generative(), "full", train_examples=90)
    assert few is not None and not few.early_stopping
    assert few.fixed == {"epochs": 3.0}  # the spec's default epochs, not the classifiers' 8
    assert few.reason.endswith("the fixed defaults are used: {'epochs': 3.0}")
    off = plan_training(_generative(search={"auto": False}), "full", 480)
    assert off is not None and off.fixed == {"epochs": 3.0} and not off.early_stopping


def test_continued_pretraining_chooses_only_its_epochs() -> None:
    code = REPO / "examples" / "stdlib-code" / "data" / "code.jsonl"
    raw = {"task": "language-modeling", "base_model": "tiny-gpt", "method": "cpt",
           "cpt": {"replay": 0}, "data": {"train": str(code)}}  # fmt: skip
    assert keys_to_choose(_spec(**raw), "cpt") == ["epochs"]
    plan = plan_training(_spec(**raw), "cpt", train_examples=300)
    assert plan is not None and plan.early_stopping and not plan.check_learning_rate
    assert plan.fixed == {"epochs": MAX_EPOCHS} and plan.fallback_epochs == 3.0
    assert plan_training(_spec(**raw, train={"epochs": 2}), "cpt", 300) is None
    few = plan_training(_spec(**raw), "cpt", train_examples=60)  # 12 validation documents
    assert few is not None and not few.early_stopping and few.fixed == {"epochs": 3.0}
    # the sequential plan's CPT stage (an instruction task) keeps cpt.epochs: not chosen here
    assert keys_to_choose(_spec(**raw | {"task": "instruction", "method": "cpt"}), "cpt") == []


def test_the_budget_check_counts_the_refit_on_the_whole_split() -> None:
    """Trials and the refit must fit ``budget``: a budget the trials alone fit falls back."""
    from dataclasses import replace

    from adaptflow.advisor import estimate
    from tasks.advise import spec_facts

    spec = _spec()
    facts = spec_facts(spec)
    trials = 2 * MAX_EPOCHS * 0.8  # two learning rates, on the 80% left after validation

    def hours(epochs: float) -> float:
        estimated = estimate("lora", replace(facts, epochs=epochs, lora_r=16)).train_hours
        assert estimated is not None
        return estimated

    assert search_hours(spec, "lora", 2)[0] == pytest.approx(hours(trials + MAX_EPOCHS))
    between = (hours(trials) + hours(trials + MAX_EPOCHS)) / 2
    plan = plan_training(_spec(budget={"gpu_hours": between}), "lora", train_examples=600)
    assert plan is not None and not plan.early_stopping
    assert plan.reason.startswith("choosing settings on validation would take ~")
    roomy = plan_training(_spec(budget={"gpu_hours": hours(trials + MAX_EPOCHS) * 1.01}),
                          "lora", train_examples=600)  # fmt: skip
    assert roomy is not None and roomy.early_stopping


def test_too_few_examples_or_too_small_a_budget_fall_back_and_say_so() -> None:
    few = plan_training(_spec(), "lora", train_examples=60)
    assert few is not None and not few.early_stopping
    assert few.fixed["epochs"] == 8 and few.fixed["learning_rate"] == 1e-3
    assert few.reason.startswith(
        "too few training examples to choose settings on validation: 60 give 12 (fewer than "
        "search.min_validation 20)"
    )
    poor = plan_training(_spec(budget={"gpu_hours": 0.001}), "lora", train_examples=600)
    assert poor is not None and not poor.early_stopping
    assert "over the 0.00 h budget" in poor.reason and poor.reason.startswith(
        "choosing settings on validation would take ~"
    )


def test_a_second_learning_rate_only_when_the_validation_curve_asks() -> None:
    rising = [(float(e), 0.5 + e / 100) for e in range(1, 11)]  # best at the 10th epoch
    assert second_learning_rate(rising, 1e-3, patience=3) == (
        2e-3, "still improving at epoch 10: 0.001 too low?"
    )  # fmt: skip
    peaked = [(1.0, 0.6), (2.0, 0.8), (3.0, 0.7), (4.0, 0.7), (5.0, 0.65)]
    assert second_learning_rate(peaked, 1e-3, patience=3) == (
        5e-4, "best at epoch 2, then worse: 0.001 too high?"
    )  # fmt: skip
    settled = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.8), (4.0, 0.82), (5.0, 0.81), (6.0, 0.8),
               (7.0, 0.81)]  # fmt: skip
    assert second_learning_rate(settled, 1e-3, patience=3) is None
    # a second rate must win by more than the standard error: sqrt(0.9 * 0.1 / 100) = 0.03
    assert not clearly_better(0.92, 0.90, 100) and clearly_better(0.931, 0.90, 100)


def test_early_stopping_keeps_the_best_epoch_and_never_trains_on_validation(
    tmp_path: Path,
) -> None:
    """The saved package scores on validation exactly what its best epoch scored there."""
    from runtime.classifier import predict_labels
    from tasks.evaluate.classification import classification_metrics
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


def test_generative_early_stopping_scores_answers_and_keeps_the_best_epoch(
    tmp_path: Path,
) -> None:
    """A generative candidate is judged on validation by what it generates, as the gate does."""
    from runtime.generate import Generator, score_generator
    from tasks.train.peft import Hyper
    from tasks.train.sft import train_generator

    rows = [json.loads(line) for line in PAIRS.open()][:126]
    rows = [{"id": r["id"], "text": r["text"], "target": r["target"]} for r in rows]
    fit, validation = rows[:96], rows[96:]
    (tmp_path / "fit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fit))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in validation))
    # batches of 8: from the second or third epoch on, answers score on every CPU's kernels
    # (in batches of 16 one CPU's tiny GPT still answered nothing after three epochs and stopped);
    # whether patience ends it before epoch 6 depends on the CPU: the stop itself is asserted
    # by test_early_stopping_keeps_the_best_epoch_and_never_trains_on_validation
    hyper = Hyper(epochs=6, learning_rate=3e-3, batch_size=8, max_length=64,
                  max_new_tokens=24, patience=2, seed=3)  # fmt: skip
    result = train_generator(
        tmp_path / "fit.jsonl", "tiny-gpt", "full", hyper, tmp_path / "pkg", tmp_path / "ck",
        validation_path=tmp_path / "val.jsonl", metric="rougeL",
    )  # fmt: skip
    history = result.validation_history
    assert [e for e, _ in history] == [float(i) for i in range(1, len(history) + 1)]
    best_epoch, best = max(history, key=lambda item: (item[1], -item[0]))
    assert result.best_epoch == best_epoch and best > 0.05  # the untrained base scores 0
    assert len(history) == min(6, int(best_epoch) + 2)  # patience 2
    assert result.steps == len(history) * 12  # 96 rows in batches of 8 per epoch
    scored = score_generator(Generator.from_package(tmp_path / "pkg"), validation)
    assert scored["metrics"]["rougeL"] == pytest.approx(best, abs=1e-9)  # the best epoch kept
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
