"""Training settings chosen on a validation part of the training split (``search.auto``).

The constants a spec used to get when it set no ``train`` block (3 epochs, learning rate 5e-4,
LoRA rank 8 on peft's default modules, BERT's query and value) were picked on this project's
own examples; on a real 8-class set nobody here had seen they lost to the project's own
no-training vote, and a bare LoRA script with common settings did better. On the two
development sets of ``benchmarks/quality`` (man-sections, aws-services; validation and eval
macro-F1 after every epoch of five recipes) the old recipe reached 0.56 and 0.82 after ten
epochs, where rank 16 on every linear layer at 1e-3 reached 0.67 and 0.97; 2e-3 was as good on
validation and worse on eval, 3e-3 diverged on one set, and every recipe peaked between epochs
5 and 10. So, for the settings a spec leaves unset:

- ``DEFAULTS`` give rank 16 (alpha 32) on all linear layers at learning rate 1e-3, as one
  recipe: a spec that sets its own learning rate keeps the classic recipe for the keys it
  leaves unset (rank 8, alpha 16, peft's default modules), which its rate was chosen for;
- the epochs are chosen by early stopping: a validation part is carved out of the training
  split (``search.validation_fraction``, default 0.2, stratified; never the eval split the gate
  uses), the candidate trains on the rest for up to ``MAX_EPOCHS`` epochs, is scored on the
  validation part after every epoch and stops after ``train.patience`` epochs without
  improvement (transformers' early stopping); its best epoch is the number of epochs chosen,
  and the chosen settings then train once more on the whole split (validation part included)
  to make the candidate: on man-sections keeping the early-stopped model scored 0.675 on eval,
  the refit 0.697 (``flows/search.py``); the whole choice costs 1.4-1.9x the wall time of a
  run with the fixed defaults on the quality sets (``benchmarks/bench_quality.py``);
- the learning rate is checked by that validation curve: still improving at the last epoch
  means too low, best in the first two epochs and worse after means too high; then one more
  trial runs at twice or half the rate, and it replaces the first only if it is better on
  validation by more than the metric's standard error there (sqrt(p(1 - p) / n)): on the
  development sets a two-rate search without that margin picked the rate that was worse on
  eval, from 163 validation examples.

Generative methods (``GENERATIVE_TASKS``, every trained method) have their epochs chosen the
same way: the candidate answers the validation part after every epoch, is scored by the spec's
metric (ROUGE-L, exact match, token F1 or perplexity, exactly as the gate scores) and stops
after ``train.patience`` epochs without improvement; the other settings keep their defaults
(not measured for generation here). See ``GENERATIVE_NOTE``. Continued pre-training
(``language-modeling``, method ``cpt``) chooses its epochs on validation perplexity: the
candidate's perplexity on a validation part of the curated domain documents, scored after every
epoch exactly as the gate scores the eval split (``LM_NOTE``).

Each trial is a ``search_trial`` task and an MLflow child run. Without enough validation
examples (``search.min_validation``), or when the advisor's estimate of the trials does not fit
``budget``, the fixed defaults train for ``FALLBACK_EPOCHS`` with no validation, and the run says
why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from adaptflow.advisor import estimate
from adaptflow.methods import GENERATIVE_TASKS, LM_TASKS
from adaptflow.spec import Spec
from tasks.train.methods import GENERATIVE_METHODS
from tasks.train.peft import best_epoch

#: Methods whose settings are chosen this way, for task classification (the encoder recipe).
TUNED_METHODS = ("lora", "dora", "ia3")
#: Why only the epochs of generative methods are chosen (said in the reason of a run).
GENERATIVE_NOTE = (
    "generative methods choose their epochs on validation; the learning rate and adapter "
    "settings keep their defaults"
)
#: The same for continued pre-training (said in the reason of a run).
LM_NOTE = (
    "continued pre-training chooses its epochs on validation perplexity; the learning rate and "
    "replay share keep their defaults"
)
#: Most epochs a candidate trains for; early stopping usually ends it sooner.
MAX_EPOCHS = 10
#: Epochs of the fixed defaults when there is no validation part to stop on.
FALLBACK_EPOCHS = 8
#: Values of unset keys. IA3 keeps its learning rate (not measured here); its epochs are chosen.
LORA_DEFAULTS = {
    "learning_rate": 1e-3,
    "lora_r": 16,
    "lora_alpha": 32,
    "target_modules": "all-linear",
}
DEFAULTS: dict[str, dict[str, Any]] = {"lora": LORA_DEFAULTS, "dora": LORA_DEFAULTS, "ia3": {}}
#: Epochs of the first trial's best at or under which its learning rate counts as too high.
EARLY_PEAK = 2


@dataclass
class TrainingPlan:
    """How the unset training settings are decided for one run."""

    fixed: dict[str, Any]  # values given to unset keys before any trial
    early_stopping: bool = False  # epochs chosen on validation
    check_learning_rate: bool = False  # a second rate tried when the first curve asks for one
    reason: str = ""
    fallback_epochs: float | None = None  # when the validation curve carries no signal


def keys_to_choose(spec: Spec, method: str) -> list[str]:
    """The ``train`` keys that ``plan_training`` sets for ``spec`` (logged once set)."""
    if spec.search.space:
        return []
    unset = set(spec.train.model_fields) - spec.train.model_fields_set
    if spec.task in GENERATIVE_TASKS and method in GENERATIVE_METHODS:
        return sorted(unset & {"epochs"})
    if spec.task in LM_TASKS and method == "cpt":
        return sorted(unset & {"epochs"})
    if not (spec.task == "classification" and method in TUNED_METHODS):
        return []
    unset = set(spec.train.model_fields) - spec.train.model_fields_set
    if "learning_rate" not in unset:
        # a rate was chosen for a recipe: the keys left unset keep the classic one (rank 8 on
        # peft's default modules); 3e-3, right for those, diverged on all linear layers
        return sorted(unset & {"epochs"})
    return sorted(unset & (set(DEFAULTS[method]) | {"epochs"}))


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
    generative = spec.task in GENERATIVE_TASKS + LM_TASKS
    fixed = {} if generative else {k: v for k, v in DEFAULTS[method].items() if k in unset}
    stops = "epochs" in unset
    check = stops and "learning_rate" in unset and method != "ia3" and not generative
    validation = round(spec.search.fraction(spec.task) * train_examples)
    # generative methods and CPT keep the spec's default epochs (3) without validation
    epochs = spec.train.epochs if generative else FALLBACK_EPOCHS
    fallback = fixed | ({"epochs": epochs} if stops else {})
    if not spec.search.auto:
        return TrainingPlan(fallback, reason=f"search.auto is off: the fixed defaults {fallback}")
    if validation < spec.search.min_validation:
        return TrainingPlan(
            fallback,
            reason=f"too few training examples to choose settings on validation: "
            f"{train_examples} give {validation} (fewer than search.min_validation "
            f"{spec.search.min_validation}); the fixed defaults are used: {fallback}",
        )
    if not stops:
        return TrainingPlan(fixed)
    hours, budget = search_hours(spec, method, 2 if check else 1)
    if hours is not None and hours > budget:
        return TrainingPlan(
            fallback,
            reason=f"choosing settings on validation would take ~{hours:.2f} h on "
            f"{spec.budget.hardware} (advisor estimate), over the {budget:.2f} h budget; "
            f"the fixed defaults are used: {fallback}",
        )
    return TrainingPlan(fixed | {"epochs": MAX_EPOCHS}, True, check, fallback_epochs=epochs)


def search_hours(spec: Spec, method: str, trials: int) -> tuple[float | None, float]:
    """The advisor's estimate of the trials' training hours, and the budget's hours.

    Upper bound: each trial trains ``MAX_EPOCHS`` on the part left after validation, and the
    chosen settings then train once more on the whole split (at most ``MAX_EPOCHS`` again).
    """
    from tasks.advise import spec_facts

    facts = spec_facts(spec)
    epochs = trials * MAX_EPOCHS * (1 - spec.search.fraction(spec.task)) + MAX_EPOCHS
    hours = estimate(method, replace(facts, epochs=epochs, lora_r=16)).train_hours
    return hours, facts.budget_hours


def second_learning_rate(
    history: list[tuple[float, float]], learning_rate: float, patience: int
) -> tuple[float, str] | None:
    """Another learning rate to try when a trial's validation curve says its rate was off.

    Args:
        history: The trial's (epoch, validation metric) after every epoch.
        learning_rate: The rate it trained with.
        patience: The early-stopping patience it trained with.

    Returns:
        (the rate to try, why), or None when the curve looks right.
    """
    if not history:
        return None
    best = best_epoch(history)
    last = history[-1][0]
    if best == last and last >= MAX_EPOCHS:
        return learning_rate * 2, f"still improving at epoch {last:g}: {learning_rate:g} too low?"
    if best <= EARLY_PEAK and last >= best + patience:
        return learning_rate / 2, (
            f"best at epoch {best:g}, then worse: {learning_rate:g} too high?"
        )
    return None


def flat(history: list[tuple[float, float]]) -> bool:
    """Whether a validation curve never moved: every epoch scored the same (no signal).

    On a frozen summarization set the tiny T5 answered nothing right after any epoch (ROUGE-L 0
    throughout); early stopping would then pick the first epoch for no reason.
    """
    return len(history) > 1 and len({round(score, 12) for _, score in history}) == 1


def clearly_better(new: float, old: float, examples: int) -> bool:
    """Whether ``new`` beats ``old`` by more than the metric's standard error on ``examples``."""
    spread = (max(old, 0.0) * max(1.0 - old, 0.0) / max(examples, 1)) ** 0.5
    return new > old + spread
