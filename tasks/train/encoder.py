"""The encoder-classifier model package: how a trained classifier is saved, loaded and run.

A package is a folder holding ``adaptflow_model.json`` (kind, method, base-model reference,
labels). A trained package (kind ``encoder-classifier``) adds the tokenizer and either a PEFT
adapter (``adapter/``) or full weights (``weights/``), all in safetensors; the base model is
referenced, not copied, when only an adapter is trained. An ICL package (kind
``knn-classifier``, see ``tasks/icl/knn.py``) adds the embedded example index instead.
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


def load_classifier(folder: Path) -> tuple[Any, Any, PackageManifest]:
    """Load a saved classifier package for inference.

    Args:
        folder: A package folder written by a training recipe.

    Returns:
        (model in eval mode, tokenizer, manifest).
    """
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adaptflow.catalogue import resolve_base_model
    from tasks.train.lm import weights_arguments

    manifest = PackageManifest.read(folder)
    labels = manifest.labels
    label_maps: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    if (folder / "weights").is_dir():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder / "weights"), use_safetensors=True, **label_maps
        )
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(manifest.base_model),
            **weights_arguments(bool(manifest.options.get("allow_pickle", False))),
            **label_maps,
        )
        model = PeftModel.from_pretrained(base, str(folder / "adapter"))
    model.eval()
    return model, tokenizer, manifest


def predict_proba(
    model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64
) -> Any:
    """Class probabilities for ``texts`` as a (n, num_labels) numpy array."""
    import numpy as np
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**batch).logits
            chunks.append(torch.softmax(logits.float(), dim=-1).numpy())
    if not chunks:
        return np.zeros((0, len(model.config.id2label)))
    return np.concatenate(chunks)


def predict_labels(folder: Path, texts: list[str]) -> list[str]:
    """Load the package in ``folder`` (any kind) and return one label per text."""
    if PackageManifest.read(folder).kind == "knn-classifier":
        from tasks.icl.knn import KnnClassifier

        return KnnClassifier(folder).predict(texts)
    model, tokenizer, manifest = load_classifier(folder)
    probs = predict_proba(model, tokenizer, texts, manifest.max_length)
    return [manifest.labels[i] for i in probs.argmax(axis=1)]
