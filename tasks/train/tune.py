"""Training settings chosen on a validation part of the training split (``search.auto``).

The constants a spec used to get when it set no ``train`` block (3 epochs, learning rate 5e-4,
LoRA rank 8 on peft's default modules) were picked on this project's own examples; on a real
8-class set nobody here had seen they lost to the project's own no-training vote, and a bare
LoRA script with common settings did better. So when the spec leaves them unset, an encoder
classifier's training settings are chosen on the user's data:

- a validation part is carved out of the training split (``search.validation_fraction``, default
  0.2, stratified; never the eval split the gate uses);
- each candidate trains on the rest for up to ``MAX_EPOCHS`` epochs, is scored on the validation
  part after every epoch, and stops after ``train.patience`` epochs without improvement
  (transformers' early stopping); each is a ``search_trial`` task and an MLflow child run;
- the best candidate on validation (the spec's metric, then the earlier candidate) wins, and
  its epoch count with it; the candidate then trains on the whole training split with them
  and goes on to evaluation and the gate.

Which keys vary, and the fixed values of the others, are ``CANDIDATES`` and ``DEFAULTS`` below,
measured on the development sets (``benchmarks/bench_quality.py``); only keys the spec leaves
unset are touched. Without enough validation examples (``search.min_validation``), or when the
advisor's estimate of the search does not fit ``budget``, the fixed defaults train for
``FALLBACK_EPOCHS`` with no search, and the run says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from adaptflow.advisor import estimate
from adaptflow.spec import Spec

#: Methods whose settings are chosen this way, for task classification (the encoder recipe).
TUNED_METHODS = ("lora", "dora", "ia3")
#: Most epochs a candidate trains for; early stopping usually ends it sooner.
MAX_EPOCHS = 10
#: Epochs of the fixed defaults when there is no validation part to stop on.
FALLBACK_EPOCHS = 6
#: Values of unset keys (the search starts from them; the fallback uses them as they are).
DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"learning_rate": 2e-3, "lora_r": 16, "lora_alpha": 32, "target_modules": "default"},
    "dora": {"learning_rate": 2e-3, "lora_r": 16, "lora_alpha": 32, "target_modules": "default"},
    "ia3": {"learning_rate": 8e-3},
}
#: Values tried on validation for unset keys (each list holds the default).
CANDIDATES: dict[str, dict[str, list[Any]]] = {
    "lora": {"learning_rate": [1e-3, 2e-3]},
    "dora": {"learning_rate": [1e-3, 2e-3]},
    "ia3": {"learning_rate": [3e-3, 8e-3]},
}


@dataclass
class TrainingPlan:
    """How the unset training settings are decided for one run."""

    fixed: dict[str, Any]  # values given to unset keys before any search
    space: dict[str, list[Any]] = field(default_factory=dict)  # tried on validation
    early_stopping: bool = False  # epochs chosen on validation
    reason: str = ""

    @property
    def searches(self) -> bool:
        """Whether candidates train on a validation split."""
        return self.early_stopping or bool(self.space)


def keys_to_choose(spec: Spec, method: str) -> list[str]:
    """The ``train`` keys that ``plan_training`` may set for ``spec`` (logged once set)."""
    tuned = spec.task == "classification" and method in TUNED_METHODS
    if not tuned or not spec.search.auto or spec.search.space:
        return []
    unset = set(spec.train.model_fields) - spec.train.model_fields_set
    return sorted(unset & (set(DEFAULTS[method]) | set(CANDIDATES[method]) | {"epochs"}))


def plan_training(spec: Spec, method: str, train_examples: int) -> TrainingPlan | None:
    """What to choose on validation for ``spec`` trained with ``method``; None: nothing.

    Args:
        spec: The spec (its ``train`` keys set explicitly are never changed).
        method: The resolved method.
        train_examples: Examples in the curated training split.
    """
    unset = set(keys_to_choose(spec, method))
    if not unset:
        return None
    fixed = {k: v for k, v in DEFAULTS[method].items() if k in unset}
    space = {k: v for k, v in CANDIDATES[method].items() if k in unset and len(v) > 1}
    stops = "epochs" in unset
    if not fixed and not space and not stops:
        return None
    validation = round(spec.search.fraction(spec.task) * train_examples)
    fallback = fixed | ({"epochs": FALLBACK_EPOCHS} if stops else {})
    if validation < spec.search.min_validation:
        return TrainingPlan(
            fallback,
            reason=f"too few training examples to choose settings on validation: "
            f"{train_examples} give {validation} (fewer than search.min_validation "
            f"{spec.search.min_validation}); the fixed defaults are used: {fallback}",
        )
    hours, budget = search_hours(spec, method, space, stops)
    if hours is not None and hours > budget:
        return TrainingPlan(
            fallback,
            reason=f"choosing settings on validation would take ~{hours:.2f} h on "
            f"{spec.budget.hardware} (advisor estimate), over the {budget:.2f} h budget; "
            f"the fixed defaults are used: {fallback}",
        )
    return TrainingPlan(fixed | ({"epochs": MAX_EPOCHS} if stops else {}), space, stops)


def search_hours(
    spec: Spec, method: str, space: dict[str, list[Any]], stops: bool
) -> tuple[float | None, float]:
    """The advisor's estimate of the search's training hours, and the budget's hours.

    Upper bound: every candidate trains ``MAX_EPOCHS`` on the part left after validation, then
    the winner trains as long again on the whole split.
    """
    from tasks.advise import spec_facts

    facts = spec_facts(spec)
    trials = 1
    for values in space.values():
        trials *= len(values)
    epochs = MAX_EPOCHS if stops else spec.train.epochs
    fraction = spec.search.fraction(spec.task)
    total = trials * epochs * (1 - fraction) + epochs
    hours = estimate(method, replace(facts, epochs=total, lora_r=16)).train_hours
    return hours, facts.budget_hours
