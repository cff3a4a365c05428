"""Local servers for ``adaptflow up`` / ``down``: Prefect server, MLflow server, process worker.

Each runs detached (its own session, so it outlives the command and ``down`` can stop the whole
process group) with a pid file and a log under ``ADAPTFLOW_HOME/servers/``. Everything binds to
loopback. The servers keep their state where the embedded default does: Prefect's SQLite
database under ``ADAPTFLOW_HOME/prefect`` and MLflow's ``mlflow/mlflow.db`` and
``mlflow/artifacts``, so runs recorded without servers show up in them and survive ``down``.

Only the standard library is imported here: ``adaptflow up`` needs neither prefect nor mlflow
in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptflow.errors import AdaptflowError, ServiceError
from adaptflow.settings import Settings

HOST = "127.0.0.1"
POOL = "adaptflow-process"
#: Start order; ``down`` stops them in reverse (the worker first, so no run is left orphaned).
SERVICES = ("prefect", "mlflow", "worker")
STATE_FILE = "up.json"


@dataclass(frozen=True)
class Service:
    """One background process ``up`` starts: how to run it and how to tell it is healthy."""

    name: str
    port: int
    url: str  # what clients use (the Prefect API URL, the MLflow tracking URI)
    health_url: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the caller's environment
    marker: str = ""  # a word every process of this service has in its command line

    def as_dict(self) -> dict[str, Any]:
        """The service's description as it is stored in ``up.json``."""
        return {"port": self.port, "url": self.url, "health_url": self.health_url}


def servers_dir(settings: Settings) -> Path:
    """Folder of the pid files, logs and ``up.json``."""
    return settings.home / "servers"


def pid_file(settings: Settings, name: str) -> Path:
    """The pid file of service ``name``."""
    return servers_dir(settings) / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    """The log of service ``name`` (appended to at every start)."""
    return servers_dir(settings) / f"{name}.log"


def _tool(name: str) -> str:
    """The console script ``name`` of this Python environment (the versions adaptflow pins)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def prefect_api_url(port: int) -> str:
    """The API URL of a Prefect server on loopback ``port``."""
    return f"http://{HOST}:{port}/api"


def mlflow_uri(port: int) -> str:
    """The tracking URI of an MLflow server on loopback ``port``."""
    return f"http://{HOST}:{port}"


def build_services(
    settings: Settings, repo: Path, prefect_port: int, mlflow_port: int, worker_port: int
) -> list[Service]:
    """The three services for ``settings.home``, in start order.

    Args:
        settings: Where state lives (``ADAPTFLOW_HOME``).
        repo: The checkout with ``prefect.yaml``; the worker's flow runs start there.
        prefect_port: Port of the Prefect server (API and UI).
        mlflow_port: Port of the MLflow server.
        worker_port: Port of the worker's health endpoint.
    """
    api = prefect_api_url(prefect_port)
    tracking = mlflow_uri(mlflow_port)
    prefect_env = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    store = f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"
    return [
        Service(
            name="prefect",
            port=prefect_port,
            url=api,
            health_url=f"{api}/health",
            command=[_tool("prefect"), "server", "start", "--host", HOST]
            + ["--port", str(prefect_port)],
            env=prefect_env,
            marker="prefect",
        ),
        Service(
            name="mlflow",
            port=mlflow_port,
            url=tracking,
            health_url=f"{tracking}/health",
            command=[_tool("mlflow"), "server", "--host", HOST, "--port", str(mlflow_port)]
            + ["--workers", "1", "--backend-store-uri", store]
            + ["--artifacts-destination", str(settings.mlflow_artifacts)],
            # The job runner (GenAI scorers, trace rollups) adds eight processes adaptflow never
            # uses; a user who wants it sets the variable to true.
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
            marker="mlflow",
        ),
        Service(
            name="worker",
            port=worker_port,
            url=POOL,
            health_url=f"http://{HOST}:{worker_port}/health",
            command=[_tool("prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
            + ["--with-healthcheck"],
            env=prefect_env
            | {
                "PREFECT_WORKER_WEBSERVER_HOST": HOST,
                "PREFECT_WORKER_WEBSERVER_PORT": str(worker_port),
                # what the flow runs it starts read (they inherit the worker's environment)
                "ADAPTFLOW_HOME": str(settings.home),
                "MLFLOW_TRACKING_URI": tracking,
                "ADAPTFLOW_REPO": str(repo),
            },
            marker="prefect",
        ),
    ]


# --- processes -------------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    """The pid in ``path``, or None when the file is missing or not a pid."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from ``/proc``, or None where there is no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return fields[0], int(fields[2])


def pid_alive(pid: int, marker: str = "") -> bool:
    """True when ``pid`` runs, is no zombie, and (on Linux) its command line has ``marker``.

    The marker guards against a recycled pid: a stale pid file must never make ``down``
    signal somebody else's process.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return False
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return True  # no /proc: the signal check is all there is
        return marker in cmdline
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group ``pgid``; falls back to the leader without /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid] if pid_alive(pgid) else []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def stop_group(pgid: int, timeout: float) -> str:
    """SIGTERM the process group ``pgid``; SIGKILL what is left after ``timeout`` seconds.

    Returns:
        ``"SIGTERM"`` or ``"SIGKILL"``: the signal that ended the group.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return "SIGTERM"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_members(pgid):
            return "SIGTERM"
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return "SIGTERM"
    deadline = time.monotonic() + 5
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return "SIGKILL"


# --- network ---------------------------------------------------------------------------------


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers HTTP 2xx within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """A port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def worker_online(api_url: str, pool: str = POOL) -> bool:
    """True when the Prefect server at ``api_url`` lists an ONLINE worker in ``pool``.

    The worker's own health endpoint answers OK from its first second; this says the worker
    reached the server and polls the pool.
    """
    body = json.dumps({"workers": {"status": {"any_": ["ONLINE"]}}, "limit": 10, "offset": 0})
    request = urllib.request.Request(
        f"{api_url}/work_pools/{pool}/workers/filter",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return bool(json.loads(response.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --- state -----------------------------------------------------------------------------------


def read_state(settings: Settings) -> dict[str, Any]:
    """``up.json``: each service's port and URLs as last started, or ``{}``."""
    try:
        state = json.loads((servers_dir(settings) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def service_status(settings: Settings, name: str, marker: str) -> int | None:
    """The pid of service ``name`` when its pid file names a live process of it, else None."""
    pid = read_pid(pid_file(settings, name))
    return pid if pid is not None and pid_alive(pid, marker) else None


def running_prefect_url(settings: Settings) -> str | None:
    """The API URL of the Prefect server ``adaptflow up`` runs for this home, if it runs."""
    return running_url(settings, "prefect")


def running_url(settings: Settings, name: str) -> str | None:
    """The URL of service ``name`` (``prefect``, ``mlflow``) ``adaptflow up`` runs, if it runs."""
    url = read_state(settings).get(name, {}).get("url")
    if url and service_status(settings, name, name) and healthy(f"{url}/health"):
        return str(url)
    return None


# --- up / down -------------------------------------------------------------------------------


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _spawn(service: Service, settings: Settings, cwd: Path, env: Mapping[str, str]) -> int:
    log = log_file(settings, service.name)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(service.command)}\n")
        handle.flush()
        process = subprocess.Popen(  # noqa: S603 - our own fixed command line
            service.command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**env, **service.env},
            start_new_session=True,  # own process group: outlives `up`, `down` stops it whole
        )
    pid_file(settings, service.name).write_text(f"{process.pid}\n")
    return process.pid


def _wait_healthy(
    service: Service, settings: Settings, pid: int, timeout: float, extra: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    log = log_file(settings, service.name)
    while time.monotonic() < deadline:
        if not pid_alive(pid, service.marker):
            raise ServiceError(
                f"{service.name} exited while starting; last lines of {log}:\n{_log_tail(log)}"
            )
        if healthy(service.health_url) and extra():
            return
        time.sleep(0.5)
    raise ServiceError(
        f"{service.name} did not become healthy at {service.health_url} within {timeout:.0f} s; "
        f"see {log}"
    )


def _always() -> bool:
    return True


def up(
    settings: Settings,
    repo: Path,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    worker_port: int = 0,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Start whatever of the three services is not running yet and wait until all are healthy.

    A service whose pid file names a live, healthy process is left alone (``up`` is
    idempotent); a stale pid file is replaced. When a service fails to start, the ones this
    call started are stopped again.

    Args:
        settings: Where state lives.
        repo: The checkout with ``prefect.yaml`` (``ADAPTFLOW_REPO`` for the worker's runs).
        prefect_port: Prefect server port; ignored when it already runs.
        mlflow_port: MLflow server port; ignored when it already runs.
        worker_port: Worker health port; 0 picks a free one.
        timeout: Seconds to wait for each service to become healthy.
        env: Environment the services start from (default: this process's).
        log: Receives one line per service as it is found or started.

    Returns:
        ``prefect_api_url``, ``prefect_ui_url``, ``mlflow_tracking_uri``, ``pids``, ``logs``,
        ``started`` and ``already_running`` (service names), and ``exports`` (shell lines).

    Raises:
        ServiceError: A port is taken by something else, or a service did not become healthy.
    """
    base_env = dict(os.environ if env is None else env)
    folder = servers_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    state = read_state(settings)
    ports = {"prefect": prefect_port, "mlflow": mlflow_port, "worker": worker_port}
    running: dict[str, int] = {}
    for name in SERVICES:
        marker = "mlflow" if name == "mlflow" else "prefect"
        pid = service_status(settings, name, marker)
        if pid is not None and name in state:
            running[name] = pid
            ports[name] = int(state[name]["port"])  # keep the port it runs on
        else:
            pid_file(settings, name).unlink(missing_ok=True)  # stale
    if "worker" in running and not {"prefect", "mlflow"} <= set(running):
        # The worker's environment names both servers; a server starting anew may get a new port.
        stop_group(running.pop("worker"), 10)
        pid_file(settings, "worker").unlink(missing_ok=True)
        ports["worker"] = worker_port
    if not ports["worker"]:
        ports["worker"] = free_port()
    services = build_services(settings, repo, ports["prefect"], ports["mlflow"], ports["worker"])
    for service in services:
        if service.name not in running and not port_free(service.port):
            raise ServiceError(
                f"port {service.port} on {HOST} is in use by another program; choose another "
                f"with --{service.name}-port"
            )
    started: dict[str, int] = {}
    by_name = {service.name: service for service in services}
    api = by_name["prefect"].url
    checks: dict[str, Callable[[], bool]] = {"worker": lambda: worker_online(api)}
    try:
        # The servers start side by side; the worker needs the Prefect API, so it goes last.
        for names in (("prefect", "mlflow"), ("worker",)):
            for name in names:
                if name not in running:
                    started[name] = _spawn(by_name[name], settings, repo, base_env)
                    log(f"{name}: started (pid {started[name]})")
            for name in names:
                pid = started.get(name) or running[name]
                _wait_healthy(by_name[name], settings, pid, timeout, checks.get(name, _always))
                if name in running:
                    log(f"{name}: already running (pid {pid})")
    except BaseException:
        for name, pid in started.items():
            stop_group(pid, 5)
            pid_file(settings, name).unlink(missing_ok=True)
        raise
    already = [name for name in SERVICES if name in running]
    state = {service.name: service.as_dict() for service in services}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return summary(settings, services, running | started, list(started), already)


def summary(
    settings: Settings,
    services: list[Service],
    pids: dict[str, int],
    started: list[str],
    already: list[str],
) -> dict[str, Any]:
    """The result of ``up``: URLs, pids, logs and the shell lines that point clients at them."""
    by_name = {service.name: service for service in services}
    api, tracking = by_name["prefect"].url, by_name["mlflow"].url
    return {
        "prefect_api_url": api,
        "prefect_ui_url": api.removesuffix("/api"),
        "mlflow_tracking_uri": tracking,
        "worker_pool": POOL,
        "pids": {name: pids[name] for name in SERVICES if name in pids},
        "logs": {name: str(log_file(settings, name)) for name in SERVICES},
        "started": started,
        "already_running": already,
        "exports": [
            f"export ADAPTFLOW_HOME={settings.home}",
            f"export PREFECT_API_URL={api}",
            f"export MLFLOW_TRACKING_URI={tracking}",
        ],
    }


def down(settings: Settings, timeout: float = 15.0) -> dict[str, Any]:
    """Stop the services ``up`` started for this home (worker first) and remove the pid files.

    Returns:
        ``stopped``: ``{name: {"pid", "signal"}}`` for each service that was running;
        ``not_running``: the names with no live process (stale pid files are removed).
    """
    stopped: dict[str, dict[str, Any]] = {}
    not_running: list[str] = []
    for name in reversed(SERVICES):
        path = pid_file(settings, name)
        pid = read_pid(path)
        marker = "mlflow" if name == "mlflow" else "prefect"
        if pid is None or not pid_alive(pid, marker):
            not_running.append(name)
        else:
            stopped[name] = {"pid": pid, "signal": stop_group(pid, timeout)}
        path.unlink(missing_ok=True)
    (servers_dir(settings) / STATE_FILE).unlink(missing_ok=True)
    return {"stopped": stopped, "not_running": not_running}


def find_repo(env: Mapping[str, str] | None = None) -> Path:
    """The checkout whose ``prefect.yaml`` the worker serves.

    ``ADAPTFLOW_REPO`` when set; otherwise the checkout this package is installed from
    (editable installs), otherwise the current folder.

    Raises:
        AdaptflowError: When the folder found has no ``prefect.yaml``.
    """
    env = os.environ if env is None else env
    if env.get("ADAPTFLOW_REPO"):
        repo = Path(env["ADAPTFLOW_REPO"]).expanduser().resolve()
    else:
        installed = Path(__file__).resolve().parents[1]
        repo = installed if (installed / "prefect.yaml").is_file() else Path.cwd().resolve()
    if not (repo / "prefect.yaml").is_file():
        raise AdaptflowError(
            f"{repo} has no prefect.yaml; set ADAPTFLOW_REPO to the adaptflow checkout"
        )
    return repo
