"""Reachability checks for configured servers, run before any work starts."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from adaptflow.errors import ServiceError
from runtime.index import check_chroma

__all__ = ["check_chroma", "check_mlflow", "check_prefect"]


def _probe(url: str, what: str, hint: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - user's own server
            if response.status >= 400:
                raise ServiceError(f"{what} at {url} answered HTTP {response.status}. {hint}")
    except urllib.error.HTTPError as exc:
        raise ServiceError(f"{what} at {url} answered HTTP {exc.code}. {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceError(f"{what} is not reachable at {url} ({reason}). {hint}") from None


def check_mlflow(tracking_uri: str) -> None:
    """Fail fast with one clear message when the MLflow tracking server is down.

    Without this, the MLflow client retries with back-off for minutes before failing.
    """
    if tracking_uri.startswith(("http://", "https://")):
        _probe(
            tracking_uri.rstrip("/") + "/health",
            "MLflow tracking server",
            "Start it, or unset MLFLOW_TRACKING_URI to use the embedded store.",
        )
    elif tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def check_prefect(api_url: str | None) -> None:
    """Fail fast when ``PREFECT_API_URL`` points at a Prefect server that is down."""
    if api_url:
        _probe(
            api_url.rstrip("/") + "/health",
            "Prefect server",
            "Start it, or unset PREFECT_API_URL to use the embedded ephemeral server.",
        )
