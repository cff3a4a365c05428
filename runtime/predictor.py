"""One public entry to a registered version's predictor, whatever the package kind.

``open_predictor(folder)`` returns the object that answers for a package: ``Classifier``
(``encoder-classifier``), ``KnnClassifier`` (``knn-classifier``), ``RewardModel``
(``reward-model``: a score per answer), ``Generator`` (``causal-lm``, ``seq2seq-lm``) or
``RagRetriever`` (``rag-retriever``); each has ``predict(list of texts)``.
The MLflow serving wrappers (``registry/serving``) and the gate's re-scoring of the champion
both go through it, so a served version answers exactly as it was scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from adaptflow.errors import RegistryError
from runtime.manifest import read_raw


class Predictor(Protocol):
    """What every package's predictor offers."""

    def predict(self, texts: list[str]) -> list[Any]:
        """One answer (a label, a generated text, ranked passages) per input."""
        ...


def open_predictor(folder: Path) -> Any:
    """The predictor of the package in ``folder``, loaded (weights, index, collection).

    Raises:
        RegistryError: When the manifest names a kind this version has no predictor for.
    """
    kind = read_raw(folder)["kind"]
    if kind == "encoder-classifier":
        from runtime.classifier import Classifier

        return Classifier(folder)
    if kind == "knn-classifier":
        from runtime.knn import KnnClassifier

        return KnnClassifier(folder)
    if kind in ("causal-lm", "seq2seq-lm"):
        from runtime.generate import Generator

        return Generator.from_package(folder)
    if kind == "reward-model":
        from runtime.reward_model import RewardModel

        return RewardModel.from_package(folder)
    if kind == "rag-retriever":
        from runtime.rag import RagRetriever

        return RagRetriever(folder)
    raise RegistryError(f"{folder}: no predictor for package kind '{kind}'")
