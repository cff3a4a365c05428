"""MLflow pyfunc for a generative package (``causal-lm`` or ``seq2seq-lm``): text in, text out.

Logged as "models from code" like the other packages; the package (adapter or weights,
tokenizer, manifest) arrives as the ``package`` artifact. Generation is adaptflow's own
(``runtime.generate.Generator``), so served answers are the answers that were scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class GeneratorModel(PythonModel):
    """Prompts in, greedy answers out."""

    def load_context(self, context: Any) -> None:
        """Load the base model and adapter (or the full weights) once per process."""
        from runtime.predictor import open_predictor

        self.generator = open_predictor(Path(context.artifacts["package"]))

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
        """One answer per input text."""
        return self.generator.predict(list(model_input))


mlflow.models.set_model(GeneratorModel())
