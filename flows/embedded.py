"""The embedded Prefect server of a home, started safely when several runs begin at once.

With no ``PREFECT_API_URL``, each ``adaptflow`` process starts Prefect's ephemeral server on
the home's SQLite database, and the server migrates that database and registers block types
as it starts, with no lock: two first runs started together (two terminals, a script) raced
and one died in the migration. The first start of a home happens here under a file lock; a
marker per Prefect version then skips the lock. The server started here is the one the
process's flows use (Prefect keeps one ephemeral server per process), so this costs nothing.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

#: Longest wait for another process's first start of the same home.
LOCK_TIMEOUT_SECONDS = 600


def start_embedded_prefect(prefect_home: Path) -> None:
    """Start this process's ephemeral Prefect server; the first time per home under a lock."""
    from filelock import FileLock

    prefect_home.mkdir(parents=True, exist_ok=True)
    marker = prefect_home / f".adaptflow-ready-{version('prefect')}"
    if marker.exists():
        return
    with FileLock(str(prefect_home / ".adaptflow-init.lock"), timeout=LOCK_TIMEOUT_SECONDS):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as prefect:
            failure = prefect.api_healthcheck()  # starts the server: migrations, block types
        if failure is not None:
            raise failure
        marker.touch()
