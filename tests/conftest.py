"""Test set-up: every session gets its own ADAPTFLOW_HOME, set before prefect/mlflow import."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="adaptflow-test-home-"))
os.environ["ADAPTFLOW_HOME"] = str(_HOME)
for variable in (
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "ADAPTFLOW_CHROMA_URL",
    "ADAPTFLOW_INTERACTIONS_URL",
    "ADAPTFLOW_SERVE_TOKEN",
):
    os.environ.pop(variable, None)
os.environ.pop("PREFECT_HOME", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

from adaptflow.settings import apply_settings  # noqa: E402
from flows.embedded import SERVER_WRITES_AT_STOP  # noqa: E402

# Prefect's ephemeral server (started with the first flow, from this environment) batches its
# task-run and event writes as the CLI's embedded one does (``flows.embedded``); the session's
# own logs keep Prefect's interval (tests read them back).
os.environ.update(SERVER_WRITES_AT_STOP)

apply_settings()

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _flows_without_heartbeats() -> Iterator[None]:
    """The tests' flows run on Prefect's ephemeral server: no heartbeats, as the CLI's embedded
    one (``flows.embedded.without_heartbeats``; each flow's end waited ~0.5 s for them)."""
    from flows.embedded import without_heartbeats

    with without_heartbeats():
        yield


@pytest.fixture(scope="session")
def adaptflow_home() -> Path:
    """The session's ADAPTFLOW_HOME."""
    return _HOME


def pytest_unconfigure(config: pytest.Config) -> None:
    """Prefect stops its ephemeral server at exit and logs it to a stream pytest has closed."""
    import logging

    logging.raiseExceptions = False
