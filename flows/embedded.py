"""The embedded Prefect server of a home, started safely when several runs begin at once.

With no ``PREFECT_API_URL``, each ``adaptflow`` process starts its own server (``Starting``)
on the home's SQLite database, and the server migrates that database and registers block
types as it starts, with no lock: two first runs started together (two terminals, a script)
raced and one died in the migration. The first start of a home happens here under a file
lock; a marker per Prefect version then skips the lock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.metadata import version
from pathlib import Path
from typing import Any

#: Longest wait for another process's first start of the same home.
LOCK_TIMEOUT_SECONDS = 600


#: What the embedded server writes to its database only as it stops. Its task-run recorder and
#: its event persister write in batches (Prefect's defaults: each task-run event as it comes, and
#: every 20 events or 5 s), and each write took SQLite's write lock while the flow's own API
#: calls needed it: a call that met the lock was answered 503 ("database is locked") and
#: Prefect's client retried it after its 2 s back-off. A demo run's next subflow or its training
#: task's concurrency slot waited ~2 s in most runs while task runs were written one by one, and
#: still in about one run in five with events and logs (``LOG_BATCHING``) written as they came
#: (``PREFECT_API_LOG_RETRYABLE_ERRORS=true`` on the server shows the lock). Task runs and events
#: still reach the home's database (the server stops gracefully at exit, or when this process
#: dies: ``SERVER_BOOT``; each service flushes what it holds), where ``adaptflow up``'s UI shows
#: them; events flush earlier past 20,000, below the persister's queue of 50,000.
SERVER_WRITES_AT_STOP = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100000",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "86400",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "20000",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "86400",
}
#: The command's flow-run logs reach its embedded server every 30 s and when the command ends
#: (Prefect's log worker sends what it holds at exit, before the server stops), rather than
#: every 2 s, for the same lock (``SERVER_WRITES_AT_STOP``): a run's first 30 s, where the
#: wait weighed, write no log. Not only at exit: a command stopped by SIGTERM ends without its
#: exit handlers (Prefect re-raises the signal), losing what the worker held. Its UI is off and
#: the console shows the logs as they come; flows run on a shared server (``adaptflow up``,
#: ``PREFECT_API_URL``) keep Prefect's interval, so its UI follows them.
LOG_BATCHING = {"PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "30"}

#: How the server process starts: ``uvicorn``'s own command line (``python -m uvicorn``), after
#: importing Prefect's server with the garbage collector off, then freezing what the import left
#: (the command's own imports do the same: ``adaptflow.cli._imports_then_frozen``). The
#: collections during that import were a fifth of a new home's server start: ready in 3.3 s
#: instead of 4.0-4.2 s on 2 cores, while the command imports on the other core. The server
#: runs in a session of its own (a Ctrl-C in the terminal reaches the command, which still
#: sends its logs and crash states, then stops the server) and watches its parent: when the
#: command dies without stopping it (SIGKILL, or SIGTERM, which Prefect re-raises past the exit
#: handlers), it stops itself as gracefully as ``Starting.stop`` would, within a second,
#: writing what it holds (``SERVER_WRITES_AT_STOP``). Run with ``-P`` (``server_command``): the
#: working directory is not on ``sys.path``, so a ``prefect.py`` there cannot shadow Prefect.
SERVER_BOOT = """
import gc, os, signal, sys, threading, time
parent = os.getppid()
def _stop_when_orphaned():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=_stop_when_orphaned, name="parent-watch", daemon=True).start()
gc.disable()
import prefect.server.api.server
gc.freeze()
gc.enable()
sys.argv[0] = "uvicorn"
import uvicorn.main
uvicorn.main.main()
"""


def server_command(*arguments: str, boot: str = SERVER_BOOT) -> list[str]:
    """The embedded server's command line: this Python, ``-P``, ``boot``, then ``arguments``."""
    import sys

    return [sys.executable, "-P", "-c", boot, *arguments]


class Starting:
    """This process's embedded Prefect server, started at once in the background.

    ``PREFECT_API_URL`` is set to it before Prefect is imported, so this process's flows use
    it as they would any server. It is the same server Prefect's ephemeral mode runs
    (``uvicorn --factory prefect.server.api.server:create_app``, UI off, the ephemeral
    flags; started as ``SERVER_BOOT`` says), spawned here rather than by Prefect because
    Prefect's ``SubprocessASGIServer`` lives in ``prefect.server.api.server``, whose import
    alone costs this process ~4 s on 2 cores, and starts only when the first flow runs.
    Spawned first, the server's start (~3.3 s on a new home: importing Prefect's server,
    opening its database, restored from the migrated template, and answering the first
    request) overlaps with the command's own imports, checks and the MLflow store's set-up on
    the other core (``benchmarks/bench_pipeline_overhead.py``). A home's first start happens under
    the file lock (see the module docstring). The server stops when the process exits, as
    Prefect's does.
    """

    def __init__(self, prefect_home: Path) -> None:
        import atexit
        import os
        import threading

        prefect_home.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._process: Any = None
        self._failure: BaseException | None = None
        #: Whether this start created the home's database from the template (a new home).
        self.restored = False
        self._env = (
            {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            | {
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            }
            | SERVER_WRITES_AT_STOP
        )
        os.environ["PREFECT_API_URL"] = self.api_url  # read when Prefect is imported
        for name, value in LOG_BATCHING.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("PREFECT_UI_URL", "")  # its UI is off: no "View at" links
        self._thread = threading.Thread(
            target=self._run, args=(prefect_home,), name="prefect-server-start", daemon=True
        )
        self._thread.start()
        atexit.register(self.stop)

    def _run(self, prefect_home: Path) -> None:
        from filelock import FileLock

        from adaptflow.sqlite_templates import restore

        try:
            marker = prefect_home / f".adaptflow-ready-{version('prefect')}"
            if marker.exists():
                self._spawn_and_wait()
                return
            lock = FileLock(str(prefect_home / ".adaptflow-init.lock"))
            with lock.acquire(timeout=LOCK_TIMEOUT_SECONDS):
                if (database := _default_database(self._env)) is not None:
                    # a new database starts migrated (~4 s of a first start's wait)
                    self.restored = restore("prefect", version("prefect"), database)
                self._spawn_and_wait()  # migrations and block types, one home at a time
                marker.touch()
        except BaseException as failure:  # handed to the thread that waits
            self._failure = failure

    def _spawn_and_wait(self) -> None:
        import importlib.util
        import subprocess
        import time
        import urllib.request

        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the prefect package is not installed")
        app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
        self._process = subprocess.Popen(  # noqa: S603 - Prefect's own server, fixed arguments
            server_command("--app-dir", app_dir, "--factory",
                           "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                           "--port", str(self.port), "--log-level", "error", "--lifespan", "on"),
            env=self._env,
            start_new_session=True,  # see SERVER_BOOT
        )  # fmt: skip
        deadline = time.monotonic() + float(
            self._env.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        )
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the embedded Prefect server exited with code {self._process.returncode} "
                    f"while starting on port {self.port}"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        self._first_request()
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the embedded Prefect server did not answer on port {self.port}")

    def _first_request(self) -> None:
        """Ask the new server for its API version, as Prefect's client first does.

        A new server answered its first ``/admin/version`` in 0.2-0.4 s and the next in ~4 ms
        (``/health`` is quick either way), and a process's first flow run starts with that
        request (Prefect's ``raise_for_api_version_mismatch``). Asked here, it is answered on
        the server's core while this process is still importing and checking. Best effort:
        the flow's own request reports a server that cannot answer it.
        """
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.api_url}/admin/version", timeout=10):  # noqa: S310
                pass
        except OSError:
            pass

    def wait(self) -> None:
        """Block until the server answers; raise what made its start fail."""
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop the server (at exit): terminate, then kill if it lingers past 15 s.

        It writes the run's task runs and events as it stops (``SERVER_WRITES_AT_STOP``),
        hence the margin.
        """
        import subprocess

        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def without_heartbeats() -> AbstractContextManager[Any]:
    """Prefect settings with flow-run heartbeats off, for a server that ends with this process.

    Prefect sends each flow run's heartbeats from a thread that sleeps in 1 s steps, and joins
    it when the flow ends: every flow and subflow waited ~0.5 s for nothing (2.8 s of a demo
    run's six flows, ``benchmarks/bench_pipeline_overhead.py``). Heartbeats let a long-lived
    server mark a crashed run; an embedded or ephemeral server ends with the process that would
    have sent them, so nobody reads them. A shared server (``PREFECT_API_URL``, ``adaptflow
    up``) keeps them.
    """
    from prefect.settings import temporary_settings

    return temporary_settings(updates={"flows.heartbeat_frequency": None})


def _default_database(env: dict[str, str]) -> Path | None:
    """The server's SQLite file under its Prefect home, unless ``env`` names another database."""
    if any(key.endswith("DATABASE_CONNECTION_URL") for key in env):
        return None
    return Path(env.get("PREFECT_HOME", "~/.prefect")).expanduser() / "prefect.db"


def migrated_database_dump(folder: Path) -> str:
    """The SQL text of an empty database Prefect's server migrated in ``folder``.

    Prefect's own ``create_db`` (every Alembic migration), in a fresh interpreter because
    Prefect reads its database URL once, at import: what ``make templates`` keeps as this
    version's template (``adaptflow.sqlite_templates``).
    """
    import os
    import subprocess
    import sys

    from adaptflow.sqlite_templates import dump

    database = folder / "prefect.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(folder),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
    }
    migrate = (
        "import asyncio\n"
        "from prefect.server.database import provide_database_interface\n"
        "asyncio.run(provide_database_interface().create_db())\n"
    )
    subprocess.run([sys.executable, "-c", migrate], env=env, check=True)  # noqa: S603
    return dump(database)


def write_templates() -> list[Path]:
    """Write this environment's MLflow and Prefect templates (``make templates``)."""
    import tempfile

    from adaptflow.sqlite_templates import template_path
    from registry.tracking import migrated_store_dump

    written = []
    for library, make in (("mlflow", migrated_store_dump), ("prefect", migrated_database_dump)):
        with tempfile.TemporaryDirectory(prefix=f"adaptflow-{library}-template-") as folder:
            text = make(Path(folder))
        path = template_path(library, version(library))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":  # make templates
    for written in write_templates():
        print(written)
