"""MLflow pyfunc for an encoder-classifier package (logged as "models from code").

Logged by file path, so loading runs this file instead of unpickling an object. The package
(adapter or weights, tokenizer, manifest) arrives as the ``package`` artifact; the inference
code is adaptflow's own (``runtime.loading``, ``runtime.classifier``), so served and evaluated
predictions match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class EncoderClassifier(PythonModel):
    """Text in, label out."""

    def load_context(self, context: Any) -> None:
        """Load the base model, the adapter and the tokenizer once per process."""
        from runtime.loading import load_classifier

        self.model, self.tokenizer, self.manifest = load_classifier(
            Path(context.artifacts["package"])
        )

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        """One label per input text."""
        from runtime.classifier import predict_proba

        probs = predict_proba(self.model, self.tokenizer, model_input, self.manifest.max_length)
        return [self.manifest.labels[i] for i in probs.argmax(axis=1)]


mlflow.models.set_model(EncoderClassifier())
