"""Which methods this version can run for which task, and what ``auto`` means.

The advisor (adaptflow/advisor.py, its own issue) will rank every method; until then ``auto``
picks the default below, and anything not runnable yet fails before any work with a clear error.
"""

from __future__ import annotations

from adaptflow.errors import SpecError

RUNNABLE: dict[str, tuple[str, ...]] = {
    "classification": ("lora", "dora", "ia3"),
}
AUTO_DEFAULT = {"classification": "lora"}


def resolve_method(task: str, requested: str) -> str:
    """Turn the spec's (or ``--method``'s) method into one this version can run.

    Raises:
        SpecError: When the task or the method is not runnable yet.
    """
    runnable = RUNNABLE.get(task)
    if runnable is None:
        raise SpecError(
            f"task '{task}' cannot run in this version yet; runnable tasks: {', '.join(RUNNABLE)}"
        )
    method = AUTO_DEFAULT[task] if requested == "auto" else requested
    if method not in runnable:
        raise SpecError(
            f"method '{requested}' is not available for task '{task}' in this version; "
            f"available: auto, {', '.join(runnable)}"
        )
    return method
