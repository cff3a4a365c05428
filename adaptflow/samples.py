"""A tiny use case cut from a shipped example: the quickest whole pipeline run.

Smoke runs against real servers (the operations tests and benchmark) need a spec whose full
pipeline takes seconds: ICL on the bundled embedder over a few records per label of the
``unicode-categories`` example. It reads the example from the checkout (``examples/`` is not
part of the installed package).
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptflow.errors import AdaptflowError

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples/unicode-categories/data/chars.jsonl"


def example_rows() -> list[str]:
    """The example's JSON lines, in file order.

    Raises:
        AdaptflowError: Not run from a checkout that has ``examples/``.
    """
    try:
        return EXAMPLE_DATA.read_text().splitlines()
    except OSError:
        raise AdaptflowError(f"{EXAMPLE_DATA} not found: run from an adaptflow checkout") from None


def write_tiny_icl_spec(folder: Path, name: str, per_label: int = 8) -> Path:
    """Write ``folder/spec.yaml`` and ``folder/data/chars.jsonl``: ICL on ``per_label`` records.

    The records are the first ``per_label`` of each label in the example's file (six labels), so
    the data, and hence its DVC hash, is the same at every call.

    Args:
        folder: Where to write (created).
        name: The spec's ``name`` (the registered model and the MLflow experiment).
        per_label: Records per label.

    Returns:
        The spec's path.
    """
    kept: dict[str, list[str]] = {}
    for line in example_rows():
        rows = kept.setdefault(json.loads(line)["label"], [])
        if len(rows) < per_label:
            rows.append(line)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    lines = [line for rows in kept.values() for line in rows]
    (folder / "data" / "chars.jsonl").write_text("\n".join(lines) + "\n")
    spec = folder / "spec.yaml"
    spec.write_text(
        f"name: {name}\ntask: classification\nbase_model: minilm\nmethod: icl\n"
        "data: {train: data/chars.jsonl, id_field: id, text_field: text, label_field: label}\n"
        "target: {metric: f1_macro, min: 0.1}\nseed: 7\n"
    )
    return spec
