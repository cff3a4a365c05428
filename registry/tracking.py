"""MLflow tracking: experiments, runs, params, metrics and artifacts.

Every call names its run id explicitly (no fluent "active run"), so tasks running in Prefect's
worker threads never log into the wrong run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from adaptflow.settings import load_settings


def mlflow_key(name: str) -> str:
    """``name`` in MLflow's key alphabet: ``recall@5`` is logged as ``recall_at_5``.

    MLflow allows only alphanumerics, ``_-. :/`` in metric, param and tag keys; adaptflow's
    metric names (the spec's ``target.metric``, the summary's ``metrics``) keep their ``@``.
    """
    return name.replace("@", "_at_")


def client() -> Any:
    """An MLflow client on the configured tracking and registry URI."""
    from mlflow.tracking import MlflowClient

    uri = load_settings().mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str) -> str:
    """Return the id of experiment ``name``, creating it when missing.

    On the embedded store its artifacts go under ``ADAPTFLOW_HOME``; a server decides itself.
    """
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    settings = load_settings()
    location = settings.mlflow_artifacts.as_uri() if settings.uses_embedded_mlflow else None
    return str(mlflow_client.create_experiment(name, artifact_location=location))


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create a run in ``experiment`` and return its id."""
    experiment_id = ensure_experiment(experiment)
    run = client().create_run(experiment_id, run_name=run_name, tags=tags)
    return str(run.info.run_id)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log params (values are stringified; MLflow caps them at 6000 characters)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    client().log_batch(run_id, params=items)


def log_metrics(run_id: str, metrics: dict[str, float], prefix: str = "", step: int = 0) -> None:
    """Log a dict of metrics, each name prefixed with ``prefix``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(mlflow_key(prefix + k), float(v), now, step) for k, v in sorted(metrics.items())
    ]
    client().log_batch(run_id, metrics=items)


def log_series(run_id: str, key: str, points: list[tuple[int, float]]) -> None:
    """Log a metric history (for example the training loss per step)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, int(step)) for step, value in points]
    for start in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics
        client().log_batch(run_id, metrics=items[start : start + 1000])


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    """Set run tags."""
    from mlflow.entities import RunTag

    items = [RunTag(mlflow_key(k), str(v)) for k, v in sorted(tags.items())]
    client().log_batch(run_id, tags=items)


def log_artifact(run_id: str, path: Path | str, artifact_path: str | None = None) -> None:
    """Upload a file or folder to the run's artifacts."""
    path = Path(path)
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    else:
        client().log_artifact(run_id, str(path), artifact_path)


def log_json(run_id: str, obj: Any, artifact_file: str) -> None:
    """Store ``obj`` as a JSON artifact."""
    client().log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Store ``text`` as an artifact."""
    client().log_text(run_id, text, artifact_file)


def end_run(run_id: str, succeeded: bool) -> None:
    """Close the run as FINISHED or FAILED."""
    client().set_terminated(run_id, "FINISHED" if succeeded else "FAILED")
