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
        from runtime.predictor import open_predictor

        self.model = open_predictor(Path(context.artifacts["package"]))

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        """One label per input text."""
        return list(self.model.predict(list(model_input)))


mlflow.models.set_model(EncoderClassifier())
