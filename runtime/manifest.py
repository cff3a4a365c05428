"""The model package manifest (``adaptflow_model.json``) and the model families it names.

A package is a folder holding ``adaptflow_model.json`` (kind, method, base-model reference,
labels). A trained classifier (kind ``encoder-classifier``) adds the tokenizer and either a PEFT
adapter (``adapter/``) or full weights (``weights/``), all in safetensors; the base model is
referenced, not copied, when only an adapter is trained. An ICL package (kind
``knn-classifier``, see ``runtime/knn.py``) adds the embedded example index instead. A
generative package (kind ``causal-lm`` or ``seq2seq-lm``) holds the tokenizer and an adapter or
full weights (``runtime/loading.py``); a RAG package (kind ``rag-retriever``) names its
collection (``runtime/rag.py``).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adaptflow.errors import RegistryError

MANIFEST = "adaptflow_model.json"


@dataclass(frozen=True)
class PackageManifest:
    """What a model package is and how to rebuild it."""

    kind: str
    method: str
    base_model: str
    labels: list[str]
    max_length: int
    trainable_params: int = 0
    total_params: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific settings (ICL: k)

    def write(self, folder: Path) -> None:
        """Write the manifest into ``folder``."""
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> PackageManifest:
        """Read the manifest of the package in ``folder``.

        Raises:
            RegistryError: When the package is of a kind with another manifest (a RAG package
                names its collection instead of weights), or the manifest is not one at all.
        """
        raw = read_raw(folder)
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        odd = sorted(set(raw) - names) + sorted(required - set(raw))
        if odd:
            raise RegistryError(
                f"{folder}: a '{raw['kind']}' package without a trained model's manifest (fields "
                f"{', '.join(odd)}); this needs one of kinds {', '.join(TRAINED_KINDS)}"
            )
        return cls(**raw)


#: Kinds whose manifest is a ``PackageManifest`` (a RAG package's is ``runtime.rag``'s).
TRAINED_KINDS = (
    "encoder-classifier",
    "knn-classifier",
    "causal-lm",
    "seq2seq-lm",
    "reward-model",
)


def read_raw(folder: Path) -> dict[str, Any]:
    """The manifest of the package in ``folder`` as stored, whatever its kind.

    Raises:
        RegistryError: When there is no readable manifest naming a ``kind``.
    """
    path = folder / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not a readable model package manifest: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise RegistryError(f"{path}: the manifest names no package kind")
    return raw


KINDS = {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}


def family_of(kind_or_config: Any) -> str:
    """``decoder`` or ``encoder-decoder``, from a package kind or a model config."""
    if isinstance(kind_or_config, str):
        return "decoder" if kind_or_config == "causal-lm" else "encoder-decoder"
    return "encoder-decoder" if getattr(kind_or_config, "is_encoder_decoder", False) else "decoder"


def auto_class(family: str) -> Any:
    """The transformers auto class of a model family."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForCausalLM if family == "decoder" else AutoModelForSeq2SeqLM
