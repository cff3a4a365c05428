"""Where MLflow, Prefect, Chroma, DVC and curated data live.

The embedded default keeps everything under ``ADAPTFLOW_HOME`` (default ``./.adaptflow``):
Prefect's home with its ephemeral SQLite server, the MLflow SQLite store and artifacts, the
Chroma persistent store, curated datasets and the DVC cache. The usual variables switch to real
servers with no code change: ``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, ``ADAPTFLOW_CHROMA_URL``;
``ADAPTFLOW_DVC_REMOTE`` (any URL DVC supports) shares every versioned dataset through a remote.
Tiny base models built here live in ``ADAPTFLOW_HOME/models`` (or ``ADAPTFLOW_MODELS_DIR``).
Curation shards run on a local Dask cluster of ``ADAPTFLOW_CURATION_WORKERS`` processes (default:
one per core) when there are several, or on the cluster at ``ADAPTFLOW_DASK_ADDRESS``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from adaptflow.errors import SettingsError


@dataclass(frozen=True)
class Settings:
    """Resolved locations of every piece of state adaptflow reads or writes."""

    home: Path
    mlflow_tracking_uri: str
    prefect_api_url: str | None
    chroma_url: str | None
    dask_address: str | None = None  # a Dask scheduler for curation shards
    curation_workers: int = 1  # local Dask workers for curation when there are several shards
    models_dir_override: Path | None = None  # ADAPTFLOW_MODELS_DIR
    interactions_url_override: str | None = None  # ADAPTFLOW_INTERACTIONS_URL
    dvc_remote: str | None = None  # ADAPTFLOW_DVC_REMOTE: where versioned data is pushed

    @property
    def interactions_url(self) -> str:
        """SQLAlchemy URL of the served models' interaction log (SQLite here by default)."""
        return (
            self.interactions_url_override or f"sqlite:///{self.home / 'serve' / 'interactions.db'}"
        )

    @property
    def models_dir(self) -> Path:
        """Base models built here (``tiny-gpt``, ``tiny-t5``); shareable between homes."""
        return self.models_dir_override or self.home / "models"

    @property
    def prefect_home(self) -> Path:
        """Prefect's home (profiles, the ephemeral server's SQLite database)."""
        return self.home / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        """Folder of the embedded MLflow store (SQLite database and artifacts)."""
        return self.home / "mlflow"

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifact root used when adaptflow creates experiments on the embedded store."""
        return self.mlflow_dir / "artifacts"

    @property
    def curated_dir(self) -> Path:
        """Curated datasets, one folder per spec name; tracked by DVC."""
        return self.home / "curated"

    @property
    def harvest_dir(self) -> Path:
        """Datasets harvested from served interactions, one folder per model; tracked by DVC."""
        return self.home / "harvest"

    @property
    def work_dir(self) -> Path:
        """Scratch space for training outputs before they are logged to MLflow."""
        return self.home / "work"

    @property
    def chroma_dir(self) -> Path:
        """Chroma persistent store used when no Chroma server is configured."""
        return self.home / "chroma"

    @property
    def bm25_cache_dir(self) -> Path:
        """Built BM25 indexes, one folder per collection, keyed by the chunks' content."""
        return self.home / "cache" / "bm25"

    @property
    def uses_embedded_mlflow(self) -> bool:
        """True when MLflow is the local SQLite store rather than a server."""
        return self.mlflow_tracking_uri.startswith("sqlite:")


def load_settings(env: MutableMapping[str, str] | None = None) -> Settings:
    """Read settings from the environment.

    Args:
        env: The environment to read; defaults to ``os.environ``.

    Returns:
        The resolved settings; paths are absolute.
    """
    env = os.environ if env is None else env
    home = Path(env.get("ADAPTFLOW_HOME") or ".adaptflow").expanduser().resolve()
    default_tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    return Settings(
        home=home,
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or default_tracking,
        prefect_api_url=env.get("PREFECT_API_URL") or None,
        chroma_url=env.get("ADAPTFLOW_CHROMA_URL") or None,
        dask_address=env.get("ADAPTFLOW_DASK_ADDRESS") or None,
        curation_workers=_positive_int(env, "ADAPTFLOW_CURATION_WORKERS", os.cpu_count() or 1),
        models_dir_override=Path(env["ADAPTFLOW_MODELS_DIR"]).expanduser().resolve()
        if env.get("ADAPTFLOW_MODELS_DIR")
        else None,
        interactions_url_override=env.get("ADAPTFLOW_INTERACTIONS_URL") or None,
        dvc_remote=env.get("ADAPTFLOW_DVC_REMOTE") or None,
    )


def _positive_int(env: MutableMapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def apply_settings(settings: Settings | None = None) -> Settings:
    """Create the state folders and export the variables the libraries read at import.

    Must run before prefect or mlflow is imported: both read their settings at import time.
    User-set variables always win (``setdefault``).

    Args:
        settings: Settings to apply; read from the environment when omitted.

    Returns:
        The applied settings.
    """
    settings = settings or load_settings()
    for folder in (settings.prefect_home, settings.mlflow_artifacts, settings.curated_dir):
        # Prefect does not create missing parents of its home and then fails to start.
        folder.mkdir(parents=True, exist_ok=True)
    env = os.environ
    env.setdefault("PREFECT_HOME", str(settings.prefect_home))
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    # This machine class has no route to telemetry endpoints; failed sends only add noise.
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    # The ephemeral server migrates its database on first start; a cold 2-core CI box needs time.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return settings
