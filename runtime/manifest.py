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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
        """Read the manifest of the package in ``folder``."""
        return cls(**json.loads((folder / MANIFEST).read_text()))


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
