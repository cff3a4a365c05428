"""Shared test helpers: data builders (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tasks.curate.pii import luhn_valid
from tasks.curate.records import Record

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON lines (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def built_corpus(seed: int = 7, bases: int = 120) -> list[Record]:
    """Random 100-word documents, each with 0-3 edited copies (some near, some not)."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    records = []
    for b in range(bases):
        words = rng.choices(vocabulary, k=100)
        records.append(Record(id=f"{b}", text=" ".join(words), label=str(b % 3)))
        for c in range(rng.randint(0, 3)):
            copy = list(words)
            for _ in range(rng.choice([1, 2, 8])):  # 1-2 edits: near (J >= 0.8); 8: not
                copy[rng.randrange(len(copy))] = rng.choice(vocabulary)
            records.append(Record(id=f"{b}.{c}", text=" ".join(copy), label=str(b % 3)))
    return records


def _luhn_complete(prefix: str) -> str:
    for last in "0123456789":
        if luhn_valid(prefix + last):
            return prefix + last
    raise AssertionError


def pii_canaries(seed: int = 3, per_type: int = 100) -> list[tuple[str, str]]:
    """(kind, value) canaries in varied but realistic formats."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    alnum = letters + letters.upper() + "0123456789"
    out = []
    for i in range(per_type):
        user = "".join(rng.choices(letters, k=rng.randint(3, 9))) + rng.choice(["", ".x", "_7"])
        domain = "".join(rng.choices(letters, k=rng.randint(3, 8)))
        out.append(("email", f"{user}@{domain}.{rng.choice(['com', 'org', 'co.uk', 'io'])}"))
        d = [str(rng.randint(0, 9)) for _ in range(10)]
        formats = [
            f"({d[0]}{d[1]}{d[2]}) {''.join(d[3:6])}-{''.join(d[6:])}",
            f"+1 {''.join(d[:3])}-{''.join(d[3:6])}-{''.join(d[6:])}",
            f"+44 20 {''.join(d[:4])} {''.join(d[4:8])}",
            f"{''.join(d[:3])}.{''.join(d[3:6])}.{''.join(d[6:])}",
        ]
        out.append(("phone", formats[i % len(formats)]))
        if i % 2:
            ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        else:
            ip = ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))
        out.append(("ip_address", ip))
        card = _luhn_complete(
            rng.choice(["4", "51", "37", "6011"])
            + "".join(
                rng.choices("0123456789", k=15 - len(rng.choice(["4", "51", "37", "6011"])) + 0)
            )
        )
        if i % 3 == 0:
            card = " ".join(card[k : k + 4] for k in range(0, len(card), 4))
        out.append(("card_number", card))
        keys = [
            "sk-" + "".join(rng.choices(alnum, k=40)),
            "ghp_" + "".join(rng.choices(alnum, k=36)),
            "AKIA" + "".join(rng.choices(letters.upper() + "0123456789", k=16)),
            "hf_" + "".join(rng.choices(alnum, k=34)),
        ]
        out.append(("api_key", keys[i % len(keys)]))
    return out


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m adaptflow ARGS`` from the repository root, in this session's environment."""
    return subprocess.run(
        [sys.executable, "-m", "adaptflow", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        input=stdin,
        timeout=600,
        cwd=REPO,
    )


#: A four-document knowledge folder (two .md, two .txt), each with one obvious topic.
KNOWLEDGE = {
    "tea.md": "# Tea\n\nGreen tea is steamed or pan-fired soon after picking.\n\n"
    "Black tea leaves are fully oxidised before drying.",
    "bikes.md": "# Bicycles\n\nA derailleur moves the chain between sprockets.\n\n"
    "Disc brakes clamp a rotor fixed to the wheel hub.",
    "bees.txt": "Honey bees communicate the direction of flowers with a waggle dance.\n\n"
    "A colony has one queen, thousands of workers and a few drones.",
    "tides.txt": "Tides are caused mainly by the gravity of the Moon.\n\n"
    "Spring tides happen when the Sun and Moon line up.",
}


def write_knowledge(folder: Path, documents: dict[str, str] = KNOWLEDGE) -> Path:
    """Write ``documents`` (relative path -> text) under ``folder``; returns ``folder``."""
    for name, text in documents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def missing_dependency(reason: str) -> None:
    """Skip a test whose outside dependency (a Debian package, a browser) is not installed.

    ``.ci/run`` installs those packages and sets ``ADAPTFLOW_REQUIRE_SERVERS=1``: there the
    same condition fails the test, so CI cannot go green by skipping it.
    """
    import pytest

    if os.environ.get("ADAPTFLOW_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason} (ADAPTFLOW_REQUIRE_SERVERS=1: .ci/run should have installed it)")
    pytest.skip(reason)


# --- a throwaway PostgreSQL cluster ------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian layout first), or None."""

    def version(initdb: Path) -> list[int]:
        return [int(part) for part in initdb.parts[-3].split(".") if part.isdigit()]

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass(frozen=True)
class PostgresCluster:
    """A running cluster on ``127.0.0.1:port``: password auth over TCP, trust on its socket."""

    bin_dir: Path
    folder: Path  # data/, the socket, the server log
    port: int
    user: str
    password: str
    as_user: tuple[str, ...]  # ("runuser", "-u", "postgres", "--") when the tests run as root
    host: str = "127.0.0.1"

    def url(self, database: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of ``database`` (``driver`` e.g. ``postgresql+asyncpg``)."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def run(self, *command: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        """Run ``command`` as the cluster's OS user, its libpq variables pointing at the cluster.

        Returns:
            The command's stdout.
        """
        libpq = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
        }
        assignments = [f"{k}={v}" for k, v in (libpq | (env or {})).items()]
        done = subprocess.run(
            [*self.as_user, "env", *assignments, *command],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (unaligned, tuples only) and return its output."""
        return self.run("psql", "-v", "ON_ERROR_STOP=1", "-At", "-d", database, "-c", sql)

    def databases(self) -> set[str]:
        """Names of the cluster's databases."""
        return set(self.psql("SELECT datname FROM pg_database").split())


@contextmanager
def postgres_cluster(
    databases: tuple[str, ...] = (), user: str = "adaptflow"
) -> Iterator[PostgresCluster]:
    """Start a throwaway PostgreSQL cluster on a free loopback port; stop and delete it after.

    ``user`` is the superuser, with a random password (scram-sha-256 over TCP, so other users
    of the machine cannot connect without it). Each name in ``databases`` is created, owned by
    ``user``. Skips the test (fails it in CI) when PostgreSQL is not installed.
    """
    from adaptflow.servers import free_port

    bin_dir = postgres_bin()
    if bin_dir is None or not shutil.which("psql"):
        missing_dependency("PostgreSQL is not installed")
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        if not shutil.which("runuser"):
            missing_dependency("running as root without runuser")
        as_user = ("runuser", "-u", "postgres", "--")
    with tempfile.TemporaryDirectory(prefix="adaptflow-pg-") as tmp:
        folder = Path(tmp)
        if as_user:
            shutil.chown(folder, user="postgres")
        password = secrets.token_hex(16)
        cluster = PostgresCluster(bin_dir, folder, free_port(), user, password, as_user)
        (folder / "pwfile").write_text(password + "\n")
        if as_user:
            shutil.chown(folder / "pwfile", user="postgres")
        data = str(folder / "data")
        cluster.run(
            str(bin_dir / "initdb"), "-D", data, "-U", user, "--pwfile", str(folder / "pwfile"),
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        # -l: the server's output goes to a file, not to the pipe subprocess waits on.
        options = f"-k {folder} -c listen_addresses={cluster.host} -p {cluster.port}"
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", data]
        try:
            cluster.run(*pg_ctl, "-l", str(folder / "log"), "-o", options, "-w", "start")
            for database in databases:
                cluster.psql(f'CREATE DATABASE "{database}" OWNER "{user}"')
            yield cluster
        finally:
            cluster.run(*pg_ctl, "-m", "immediate", "stop", check=False)


# --- servers: environments and the Prefect UI's Run button --------------------------------------


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment minus PREFECT_*/MLFLOW_* settings, ADAPTFLOW_HOME=``home``, + ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {"ADAPTFLOW_HOME": str(home), "ADAPTFLOW_REPO": str(REPO)} | extra


def _on_server(api_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """``await work(client)`` with a Prefect client on the server at ``api_url``."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def session() -> T:
        async with get_client() as client:
            return await work(client)

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(session())


def trigger_run(api_url: str, deployment: str, parameters: dict[str, Any]) -> Any:
    """What the UI's "Run" button does (POST /deployments/{id}/create_flow_run); the run's id."""

    async def trigger(client: Any) -> Any:
        found = await client.read_deployment_by_name(deployment)
        run = await client.create_flow_run_from_deployment(found.id, parameters=parameters)
        return run.id

    return _on_server(api_url, trigger)


def wait_for_run(api_url: str, run_id: Any, timeout: float) -> tuple[Any, list[str]]:
    """Wait until flow run ``run_id`` is final (or ``timeout``); the run and its log messages."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def wait(client: Any) -> tuple[Any, list[str]]:
        run = await client.read_flow_run(run_id)
        deadline = time.monotonic() + timeout
        while not (run.state and run.state.is_final()) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            run = await client.read_flow_run(run_id)
        # The run's process ships its logs in batches, the last ones after the final state.
        messages: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logs = await client.read_logs(  # this server rejects a null limit or offset
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=0,
            )
            messages = [log.message for log in logs]
            if any(m.startswith("Finished in state") for m in messages):
                break
            await asyncio.sleep(1)
        return run, messages

    return _on_server(api_url, wait)


def trigger_and_wait(
    api_url: str, deployment: str, parameters: dict[str, Any], timeout: float
) -> tuple[Any, list[str]]:
    """:func:`trigger_run`, then :func:`wait_for_run`."""
    return wait_for_run(api_url, trigger_run(api_url, deployment, parameters), timeout)


# --- adaptflow serve -----------------------------------------------------------------------------


class Server:
    """``adaptflow serve NAME`` in a child process on a free loopback port, healthy."""

    def __init__(self, name: str, env: dict[str, str], *extra: str) -> None:
        import httpx

        from adaptflow.servers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env["ADAPTFLOW_HOME"]) / f"serve-{name}-{self.port}.log"
        command = [sys.executable, "-m", "adaptflow", "serve", name, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--poll-seconds", "0.5", *extra],
            cwd=REPO,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"server not healthy: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
