"""Which methods this version can run for which task, and what ``auto`` and ``ladder`` mean.

``auto`` runs the advisor's best suitable method among the runnable ones; ``ladder`` climbs
the advisor's suitable, runnable methods cheapest first (see ``adaptflow.advisor``). Anything
not runnable yet fails before any work with a clear error.
"""

from __future__ import annotations

from typing import Any

from adaptflow.errors import SpecError

#: Generative tasks train through ``tasks.train.sft`` with any of these methods.
GENERATIVE = (
    "lora",
    "dora",
    "ia3",
    "prefix",
    "prompt-tuning",
    "p-tuning",
    "qlora",
    "freeze",
    "full",
)
#: Preference tuning (through TRL, ``tasks.train.align``): pairs (dpo, orpo, simpo) or answers
#: labelled good or bad (kto). They train a decoder, on preference data only.
PAIRED_METHODS = ("dpo", "orpo", "simpo")
ALIGNMENT_METHODS = (*PAIRED_METHODS, "kto")
#: Reinforcement learning from the spec's ``rewards`` (through TRL's GRPO trainer).
RL_METHODS = ("grpo",)
TRL_METHODS = ALIGNMENT_METHODS + RL_METHODS
#: A reward model: a scalar head on a decoder or an encoder, trained on preference pairs
#: (``tasks.train.reward``); a judge of answers and a reward for ``grpo``.
REWARD_METHODS = ("reward",)
#: Compression of a trained model (``tasks.train.compress``): never chosen by auto or the ladder.
COMPRESS_METHODS = ("prune", "distill")
RUNNABLE: dict[str, tuple[str, ...]] = {
    "classification": ("icl", "lora", "dora", "ia3", *COMPRESS_METHODS),
    "retrieval-qa": ("rag",),
    "instruction": GENERATIVE + TRL_METHODS + REWARD_METHODS + COMPRESS_METHODS,
    "qa": GENERATIVE + TRL_METHODS + REWARD_METHODS + COMPRESS_METHODS,
    "summarization": GENERATIVE + TRL_METHODS + REWARD_METHODS + COMPRESS_METHODS,
    "language-modeling": ("cpt",),
}
#: Tasks whose candidates generate text (scored by ``tasks.evaluate.generation``).
GENERATIVE_TASKS = ("instruction", "qa", "summarization")
#: Tasks scored by next-token perplexity on held-out text (``tasks.evaluate.forgetting``).
LM_TASKS = ("language-modeling",)
CHOSEN_BY_ADVISOR = ("auto", "ladder")
#: Methods that train nothing (no hyperparameters to search).
UNTRAINED = ("icl", "rag")
#: Tasks with more than one runnable rung to climb (generative: lora -> freeze -> full).
LADDER_TASKS = ("classification", *GENERATIVE_TASKS)


#: Tasks whose methods train a language model head: an encoder-only base cannot run them.
NEEDS_A_GENERATOR = (*GENERATIVE_TASKS, *LM_TASKS)


def runnable_methods(task: str, family: str | None = None) -> tuple[str, ...]:
    """Methods this version can run for ``task`` on a base of ``family`` (empty when none).

    Args:
        task: The spec's task.
        family: The base model's family (``adaptflow.catalogue.base_family``), or None when
            unknown: then only the task decides.
    """
    if family == "encoder" and task in GENERATIVE_TASKS:
        return REWARD_METHODS  # an encoder cannot generate, but it can judge answers
    if family == "encoder" and task in NEEDS_A_GENERATOR:
        return ()
    return RUNNABLE.get(task, ())


def check_method(task: str, requested: str, family: str | None = None) -> None:
    """Fail early when ``requested`` cannot run for ``task`` (on a base of ``family``).

    Raises:
        SpecError: When the task or the method is not runnable yet, or not on this base.
    """
    encoder_generating = family == "encoder" and task in NEEDS_A_GENERATOR
    if encoder_generating and requested not in REWARD_METHODS:
        judge = "; an encoder can be a reward model (method reward)" * (task in GENERATIVE_TASKS)
        raise SpecError(
            f"task '{task}' needs a decoder or encoder-decoder base model (e.g. tiny-gpt, "
            f"tiny-t5): the spec's base_model is an encoder, which cannot generate text, so no "
            f"method fits{' (method: auto found none)' if requested == 'auto' else ''}{judge}"
        )
    if task in RUNNABLE and not runnable_methods(task, family):
        raise SpecError(
            f"task '{task}' needs a decoder or encoder-decoder base model (e.g. tiny-gpt, "
            f"tiny-t5): the spec's base_model is an encoder, which cannot generate text, so no "
            f"method fits{' (method: auto found none)' if requested == 'auto' else ''}"
        )
    runnable = runnable_methods(task, family)
    if not runnable:
        raise SpecError(
            f"task '{task}' cannot run in this version yet; runnable tasks: {', '.join(RUNNABLE)}"
        )
    if requested not in runnable and requested not in CHOSEN_BY_ADVISOR:
        raise SpecError(
            f"method '{requested}' is not available for task '{task}' in this version; "
            f"available: {', '.join(CHOSEN_BY_ADVISOR + runnable)}"
        )
    if requested == "ladder" and task not in LADDER_TASKS:
        raise SpecError(
            f"method 'ladder' is not available for task '{task}' in this version (it climbs "
            f"for {', '.join(LADDER_TASKS)}); use method: auto or one of {', '.join(runnable)}"
        )


def resolve_method(
    task: str, requested: str, advice: dict[str, Any] | None = None, family: str | None = None
) -> str:
    """Turn the spec's (or ``--method``'s) method into one this version can run.

    Args:
        task: The spec's task.
        requested: A method name, or ``auto``.
        advice: The advisor's JSON (``recommend --json``); needed for ``auto``.
        family: The base model's family, when known (an encoder runs no generative method).

    Raises:
        SpecError: When the method cannot run, or the advisor found nothing suitable to run.
    """
    check_method(task, requested, family)
    if requested != "auto":
        return requested
    chosen = (advice or {}).get("recommended_runnable")
    if chosen is None:
        raise SpecError(
            f"method 'auto': the advisor found no suitable method this version can run for task "
            f"'{task}' (see 'adaptflow recommend SPEC' for the reasons)"
        )
    return str(chosen)
