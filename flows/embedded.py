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
        _start()
        return
    with FileLock(str(prefect_home / ".adaptflow-init.lock"), timeout=LOCK_TIMEOUT_SECONDS):
        _start()
        marker.touch()


def _start() -> None:
    """Start the ephemeral server (migrations and block types on a new home) and wait for it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        failure = prefect.api_healthcheck()  # starts the server and waits until it answers
    if failure is not None:
        raise failure


class Starting:
    """The embedded server starting in a background thread; ``wait`` before any flow runs.

    The server is a separate process whose start (importing Prefect's server, opening and,
    on a new home, migrating its database) takes 7-15 s on 2 cores: started first, it overlaps
    with the command's own imports, checks and the MLflow store's set-up instead of following
    them (``benchmarks/bench_pipeline_overhead.py``).
    """

    def __init__(self, prefect_home: Path) -> None:
        import threading

        self._failure: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(prefect_home,), name="prefect-server-start", daemon=True
        )
        self._thread.start()

    def _run(self, prefect_home: Path) -> None:
        try:
            start_embedded_prefect(prefect_home)
        except BaseException as failure:  # handed to the thread that waits
            self._failure = failure

    def wait(self) -> None:
        """Block until the server answers; raise what made its start fail."""
        self._thread.join()
        if self._failure is not None:
            raise self._failure
