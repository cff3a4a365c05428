"""User-facing errors: each carries one clear message and is shown without a traceback."""


class AdaptflowError(Exception):
    """A problem the user can fix (bad spec, bad data, unreachable server).

    The CLI prints the message and exits non-zero; no traceback is shown.
    """

    exit_code = 2


class SpecError(AdaptflowError):
    """The use-case spec is missing, malformed or invalid."""


class SettingsError(AdaptflowError):
    """An environment setting (``ADAPTFLOW_*``) has an unusable value."""


class DataError(AdaptflowError):
    """The data cannot be used (nothing valid left, a single label, unreadable file)."""


class ServiceError(AdaptflowError):
    """A server adaptflow was pointed at (MLflow, Prefect, Chroma) is unreachable."""

    exit_code = 3


class CapabilityError(AdaptflowError):
    """The spec asks for something this machine cannot do (a GPU feature, a missing package)."""


class RegistryError(AdaptflowError):
    """A registry operation is not possible (unknown model, version or alias)."""


class InvariantError(RuntimeError):
    """An identity adaptflow guarantees did not hold (a bug in adaptflow, never a user mistake).

    Raised by ``check`` instead of ``assert``, which ``python -O`` removes.
    """


def check(condition: bool, message: str) -> None:
    """Raise ``InvariantError(message)`` unless ``condition`` holds (survives ``python -O``)."""
    if not condition:
        raise InvariantError(message)


#: Exit code of ``adaptflow run`` when the ladder ran and no rung met the spec's target (the
#: best rung is registered as challenger, not promoted). Errors exit 2 (user) or 3 (server).
TARGET_NOT_MET_EXIT = 4
#: Exit code of any command that failed on a bug (an unexpected exception, not a user mistake);
#: with ``--json`` it still prints one ``{"error", "kind": "InternalError"}`` object.
INTERNAL_ERROR_EXIT = 1
