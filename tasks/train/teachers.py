"""``compress.teacher``: the model a ``prune`` or ``distill`` candidate is made from or imitates.

A registered version (fetched once under ``ADAPTFLOW_HOME/work/teachers``, pinned to its
version number for the run), a package folder, or, for generative ``distill`` only, a base
model (catalogue alias, model folder or hub id): a base model has no head for a classification
task and nothing to prune away that was trained.
"""

from __future__ import annotations

from pathlib import Path

from adaptflow.catalogue import is_package

#: What ``compress.teacher`` may be, per task family (package kinds).
CLASSIFIER_KINDS = ("encoder-classifier",)
GENERATOR_KINDS = ("causal-lm", "seq2seq-lm")


def teacher_kinds(task: str) -> tuple[str, ...]:
    """The package kinds a teacher for ``task`` may be."""
    return CLASSIFIER_KINDS if task == "classification" else GENERATOR_KINDS


def _need(task: str) -> str:
    if task == "classification":
        return "compress.teacher needs a trained encoder classifier (lora, dora, ia3 or prune)"
    return "compress.teacher needs a trained generator (a causal-lm or seq2seq-lm package)"


def teacher_folder(reference: str, task: str = "classification") -> Path:
    """The local package of ``compress.teacher`` (a registered version, fetched once, or a folder).

    Raises:
        SpecError: No such version or folder, or not a trained model of the task's kind.
        ServiceError: The registry could not be read.
    """
    from adaptflow.catalogue import registered_reference
    from adaptflow.errors import RegistryError, SpecError
    from adaptflow.settings import load_settings
    from registry.models import registered_package
    from runtime.manifest import read_raw

    kinds, need = teacher_kinds(task), _need(task)
    if registered_reference(reference) is not None:
        root = load_settings().work_dir / "teachers"
        folder = registered_package(reference, root, "compress.teacher", kinds, need)
        return _not_quantized(reference, folder)
    folder = Path(reference)
    try:
        raw = read_raw(folder)
    except RegistryError as error:
        raise SpecError(f"compress.teacher: {error}") from None
    trained = (folder / "weights").is_dir() or (folder / "adapter").is_dir()
    if raw["kind"] not in kinds or not trained:
        raise SpecError(f"compress.teacher: {folder} is a '{raw['kind']}' package; {need}")
    return _not_quantized(reference, folder)


def teacher_source(reference: str, task: str) -> Path | str:
    """The teacher as a package folder, or as the base model reference it names.

    Raises:
        SpecError: As ``teacher_folder``.
    """
    return teacher_folder(reference, task) if is_package(reference) else reference


def _not_quantized(reference: str, folder: Path) -> Path:
    """``folder``, unless its package is int8: its blocks cannot train, nor quantize again.

    Raises:
        SpecError: The teacher is an int8 package.
    """
    from adaptflow.errors import SpecError
    from runtime.manifest import read_raw

    if (read_raw(folder).get("options") or {}).get("quantize"):
        raise SpecError(
            f"compress.teacher: {reference} is an int8-quantized package; compression starts "
            "from full-precision weights: name the version it was made from"
        )
    return folder


def pinned_teacher(reference: str, task: str = "classification") -> str:
    """``compress.teacher`` pinned: an alias as ``models:/NAME/N`` (fetched and checked).

    A package folder is returned resolved; a base model as it is.
    """
    from adaptflow.catalogue import registered_reference

    if not is_package(reference):
        return reference
    folder = teacher_folder(reference, task)
    if registered_reference(reference) is None:
        return str(folder)
    return f"models:/{folder.parent.name}/{folder.name}"
