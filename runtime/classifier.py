"""Classifying with a classifier package: probabilities and labels (trained or ICL packages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.knn import KnnClassifier
from runtime.loading import load_classifier
from runtime.manifest import PackageManifest


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


class Classifier:
    """A loaded trained classifier package (adapter or weights): text in, label out."""

    def __init__(self, folder: Path) -> None:
        """Load the base model, the adapter (or the full weights) and the tokenizer."""
        self.model, self.tokenizer, self.manifest = load_classifier(folder)

    def predict(self, texts: list[str]) -> list[str]:
        """One label per text."""
        probs = predict_proba(self.model, self.tokenizer, texts, self.manifest.max_length)
        return [self.manifest.labels[i] for i in probs.argmax(axis=1)]

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text: the ``label`` ``predict`` gives and each label's probability."""
        probs = predict_proba(self.model, self.tokenizer, texts, self.manifest.max_length)
        labels = self.manifest.labels
        return [
            {
                "label": labels[int(row.argmax())],
                "scores": dict(zip(labels, map(float, row), strict=True)),
            }
            for row in probs
        ]


def predict_labels(folder: Path, texts: list[str]) -> list[str]:
    """Load the package in ``folder`` (any classifier kind) and return one label per text."""
    if PackageManifest.read(folder).kind == "knn-classifier":
        return KnnClassifier(folder).predict(texts)
    return Classifier(folder).predict(texts)
