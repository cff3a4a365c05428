"""MLflow pyfunc for a RAG package: question in, ranked passages with sources (and a prompt) out.

Logged as "models from code" like the other packages; the package (embedder reference, Chroma
collection and index version, retriever settings, prompt template, generator reference) arrives
as the ``package`` artifact. When the package names a generator, each question's entry also
holds the generated ``answer``. Search and generation are adaptflow's own
(``runtime.rag.RagRetriever``), so served and evaluated rankings and answers match. The
vectors live in Chroma: the store the package names, or the server at ``ADAPTFLOW_CHROMA_URL``
when that is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class RagRetrieverModel(PythonModel):
    """Questions in; per question the ranked passages, the prompt and (with a generator) answer."""

    def load_context(self, context: Any) -> None:
        """Open the collection and the embedder once per process."""
        from runtime.predictor import open_predictor

        self.model = open_predictor(Path(context.artifacts["package"]))

    def predict(
        self, context: Any, model_input: list[str], params: Any = None
    ) -> list[dict[str, Any]]:
        """One ``{"passages": [...], "prompt": ...}`` per question (+ ``"answer"``, generator)."""
        return self.model.predict(list(model_input))


mlflow.models.set_model(RagRetrieverModel())
