"""MLflow tracking: experiments, runs, params, metrics and artifacts.

Every call names its run id explicitly (no fluent "active run"), so tasks running in Prefect's
worker threads never log into the wrong run.

Two safeguards live here because this is where everything reaches MLflow:

- **Redaction.** Tokens and keys come from the environment (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
  ``MLFLOW_TRACKING_PASSWORD``, ``PREFECT_API_KEY``, anything ending in ``_TOKEN``, ``_KEY``,
  ``_SECRET``, ``_PASSWORD``...). Nothing adaptflow logs is meant to contain them, but params, tags
  and text artifacts carry user data (paths, model ids, reports) that could embed one by accident
  (a token pasted into a hub URL, a folder named after a key). So every param, tag, text/JSON
  artifact and text file uploaded is scrubbed of the current values of those variables (8
  characters or longer, so short values such as ``1`` do not blank out ordinary text) before it
  leaves the process; they become ``***``.
- **Retries.** :func:`retrying` re-runs a registry call that failed transiently (HTTP 5xx/429, a
  dropped connection, SQLite's "database is locked"), with exponential backoff.

A restart of the tracking server needs nothing from us: MLflow's HTTP layer (a requests session
whose urllib3 ``Retry`` allows every method) re-sends each request, POSTs included, on a refused
or dropped connection and on a 429/5xx answer, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` times (7) with
exponential backoff (``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` 2: waits of 0, 4, 8, ... 120 s, about
4 minutes in all), then raises an ``MlflowException`` naming the URL and "Max retries exceeded".
So the tracking calls below do not go through :func:`retrying` too: that would multiply the
bound (4 attempts of 4 minutes) and cover nothing more. The variables tune the bound;
``tests/test_postgres_servers.py`` restarts the server in the middle of a pipeline run.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from adaptflow.secrets import secret_values  # the secret policy lives with the secrets
from adaptflow.settings import load_settings

T = TypeVar("T")

REDACTED = "***"
#: Text files larger than this are uploaded as they are (model weights, indexes): scanning them
#: would cost more than it protects, and nothing adaptflow writes that large embeds settings.
MAX_SCANNED_BYTES = 20 * 1024 * 1024


#: The password of a URL's user info (``postgresql://user:PASSWORD@host/db``), wherever it came
#: from: a tracking URI, a Chroma URL or a database URL typed into a spec or a parameter.
URL_PASSWORD = re.compile(r"(?<=://)([^\s/?#@:]*):([^\s/?#@]+)@")


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with secrets replaced by ``***``.

    The secrets are the values of secret-looking environment variables, and every password in
    a URL's user info.
    """
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    return URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)


def _redact_file(path: Path, secrets: list[str]) -> bytes | None:
    """The redacted bytes of ``path`` when it holds a secret, else None (upload as is)."""
    if path.stat().st_size > MAX_SCANNED_BYTES:
        return None
    original = data = path.read_bytes()
    for value in secrets:
        data = data.replace(value.encode(), REDACTED.encode())
    # URL passwords in text files only: a pattern over weights' bytes could corrupt them
    with contextlib.suppress(UnicodeDecodeError):
        data = URL_PASSWORD.sub(rf"\1:{REDACTED}@", data.decode("utf-8")).encode("utf-8")
    return None if data == original else data


@contextmanager
def redacted_copy(path: Path) -> Iterator[Path]:
    """``path`` itself, or a redacted copy of it (file or folder) when it contains a secret."""
    secrets = secret_values()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    changed = {f: data for f in files if (data := _redact_file(f, secrets)) is not None}
    if not changed:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="adaptflow-redacted-") as tmp:
        target = Path(tmp) / path.name
        if path.is_file():
            target.write_bytes(changed[path])
        else:
            shutil.copytree(path, target)
            for original, data in changed.items():
                (target / original.relative_to(path)).write_bytes(data)
        yield target


def is_transient(exc: BaseException) -> bool:
    """True for registry errors worth retrying: HTTP 5xx/429, dropped connections, busy SQLite.

    Classified with ``isinstance``, so a subclass (a plugin's or a newer MLflow's) is treated
    like the class it refines.
    """
    import sqlite3

    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):  # an answer from an MLflow server
        code = exc.get_http_status_code()
        return bool(code == 429 or code >= 500) or _concurrent_tag_write(str(exc))
    if isinstance(
        exc, MlflowException | sqlite3.OperationalError | sqlalchemy.exc.OperationalError
    ):
        # The embedded store reports a busy SQLite file as a plain error; only the message
        # tells. "Max retries exceeded" is deliberately not here: MLflow's HTTP layer has then
        # already spent its own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, minutes of backoff).
        return _looks_transient(str(exc))
    return isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | requests.exceptions.ConnectionError
        | requests.exceptions.Timeout,
    )


def _concurrent_tag_write(message: str) -> bool:
    """Whether the server lost a race between two upserts of one tag.

    It checks, then inserts, and answers 400 with the database's unique-constraint error.
    Setting a tag again is safe.

    Seen with 8 processes taking the promotion lease on one server (SQLite backend).
    """
    message = message.lower()
    unique = "unique constraint failed" in message or "violates unique constraint" in message
    return unique and "_tags" in message


def _looks_transient(message: str) -> bool:
    message = message.lower()
    return any(
        text in message
        for text in ("database is locked", "database table is locked", "temporarily unavailable")
    )


#: Attempts and backoff of :func:`retrying` (module attributes so tests can shorten them).
RETRY_ATTEMPTS = 4
RETRY_WAIT_SECONDS = 0.5
RETRY_MAX_WAIT_SECONDS = 8.0


def retrying(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient registry errors with backoff.

    Only calls that are safe to repeat go through here (reads, alias and tag writes; version
    creation only after checking it did not already happen). MLflow's own HTTP layer already
    retries connection failures and 429/5xx answers request by request; this covers what still
    surfaces as an exception (a 5xx/429 once those retries are spent, a locked SQLite file, a
    raw connection error) at the granularity of one registry call.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    retryer = Retrying(
        stop=stop_after_attempt(RETRY_ATTEMPTS),
        wait=wait_exponential(multiplier=RETRY_WAIT_SECONDS, max=RETRY_MAX_WAIT_SECONDS),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    return retryer(fn, *args, **kwargs)


def mlflow_key(name: str) -> str:
    """``name`` in MLflow's key alphabet: ``recall@5`` is logged as ``recall_at_5``.

    MLflow allows only alphanumerics, ``_-. :/`` in metric, param and tag keys; adaptflow's
    metric names (the spec's ``target.metric``, the summary's ``metrics``) keep their ``@``.
    """
    return name.replace("@", "_at_")


#: Embedded store URIs this process has seen initialised.
_READY_STORES: set[str] = set()


def _init_sqlite_store(uri: str) -> None:
    """Create an embedded (SQLite) store's tables once, under a file lock beside it.

    MLflow migrates a new SQLite store on first use with no lock of its own: two processes
    opening a fresh home at once (two terminals, a worker taking two flow runs) raced, and one
    died in the migration (``table _alembic_tmp_experiments already exists``). A marker per
    MLflow version beside the store skips the lock once the tables exist.

    A new store starts from the migrated template of this MLflow version
    (``adaptflow.sqlite_templates``: ~10 ms instead of ~2 s of migrations); MLflow then opens
    it as its own (checks the schema revision, creates its default experiment).
    """
    from importlib.metadata import version

    from filelock import FileLock

    from adaptflow.sqlite_templates import restore

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    mlflow_version = version("mlflow")
    marker = database.with_name(f"{database.name}.ready-{mlflow_version}")
    if marker.exists():
        return
    with FileLock(str(database.with_name(database.name + ".init.lock")), timeout=600):
        if marker.exists():
            return
        restore("mlflow", mlflow_version, database)
        from mlflow.tracking import MlflowClient

        store = MlflowClient(tracking_uri=uri, registry_uri=uri)
        store.search_experiments(max_results=1)  # the tracking tables and their migrations
        store.search_registered_models(max_results=1)  # the registry's
        marker.touch()


def migrated_store_dump(folder: Path) -> str:
    """The SQL text of an empty store MLflow itself created and migrated in ``folder``.

    MLflow's own initialisation of a new SQLite store (its initial tables, then every Alembic
    migration), before it adds its default experiment: what ``make templates`` keeps as this
    version's template (``adaptflow.sqlite_templates``).
    """
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    from adaptflow.sqlite_templates import dump

    database = folder / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        _initialize_tables(engine)  # what SqlAlchemyStore runs on a database without tables
    finally:
        engine.dispose()
    return dump(database)


def client() -> Any:
    """An MLflow client on the configured tracking and registry URI.

    An embedded store is initialised first, once per process (see ``_init_sqlite_store``).
    """
    from mlflow.tracking import MlflowClient

    uri = load_settings().mlflow_tracking_uri
    if uri.startswith("sqlite:///") and uri not in _READY_STORES:
        _init_sqlite_store(uri)
        _READY_STORES.add(uri)
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
    secrets = secret_values()
    tags = {k: redact(str(v), secrets) for k, v in tags.items()}
    run = client().create_run(experiment_id, run_name=run_name, tags=tags)
    return str(run.info.run_id)


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Log params (values are stringified; MLflow caps them at 6000 characters)."""
    from mlflow.entities import Param

    secrets = secret_values()
    items = [Param(k, redact(str(v), secrets)[:6000]) for k, v in sorted(params.items())]
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

    secrets = secret_values()
    items = [RunTag(mlflow_key(k), redact(str(v), secrets)) for k, v in sorted(tags.items())]
    client().log_batch(run_id, tags=items)


def log_artifact(run_id: str, path: Path | str, artifact_path: str | None = None) -> None:
    """Upload a file or folder to the run's artifacts (a redacted copy if it holds a secret)."""
    with redacted_copy(Path(path)) as upload:
        if upload.is_dir():
            client().log_artifacts(run_id, str(upload), artifact_path)
        else:
            client().log_artifact(run_id, str(upload), artifact_path)


def log_json(run_id: str, obj: Any, artifact_file: str) -> None:
    """Store ``obj`` as a JSON artifact."""
    client().log_text(run_id, redact(json.dumps(obj, indent=2, default=str)), artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    """Store ``text`` as an artifact."""
    client().log_text(run_id, redact(text), artifact_file)


def end_run(run_id: str, succeeded: bool) -> None:
    """Close the run as FINISHED or FAILED."""
    client().set_terminated(run_id, "FINISHED" if succeeded else "FAILED")
