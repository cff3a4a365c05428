"""MLflow pyfunc for an ICL package: nearest-example vote over an embedded index.

Logged as "models from code" like the trained classifier; the package (manifest with ``k``,
example vectors and examples) arrives as the ``package`` artifact and the base encoder is
loaded from the reference in its manifest. Inference is adaptflow's own (``runtime.knn``),
so served and evaluated predictions match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class KnnClassifier(PythonModel):
    """Text in, label out, by a vote of the nearest labelled examples."""

    def load_context(self, context: Any) -> None:
        """Load the index and the encoder once per process."""
        from runtime.predictor import open_predictor

        self.model = open_predictor(Path(context.artifacts["package"]))

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        """One label per input text."""
        return self.model.predict(list(model_input))


mlflow.models.set_model(KnnClassifier())
