"""MLflow pyfunc for a reward-model package (method ``reward``; logged as "models from code").

Logged by file path, so loading runs this file instead of unpickling an object. The package
(adapter or weights, tokenizer, manifest) arrives as the ``package`` artifact; scoring is
adaptflow's own (``runtime.reward_model``), so served and evaluated scores match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class RewardModelScorer(PythonModel):
    """Text in (an answer), its reward out."""

    def load_context(self, context: Any) -> None:
        """Load the base model with its head, and the adapter, once per process."""
        from runtime.predictor import open_predictor

        self.model = open_predictor(Path(context.artifacts["package"]))

    def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[float]:
        """One score per input text (read as an answer to an empty prompt)."""
        return list(self.model.predict(list(model_input)))


mlflow.models.set_model(RewardModelScorer())
