"""The team set-up on real servers: Prefect and MLflow on PostgreSQL, a process worker (issue 7).

One module-scoped stack serves the integration tests: a throwaway PostgreSQL cluster on a
loopback port (databases ``prefect`` and ``mlflow``), ``prefect server start`` on it (asyncpg),
``mlflow server`` on it (psycopg 3; artifacts in a temporary folder), a process worker in pool
``adaptflow-process``, and ``adaptflow deploy``. The commands are the ones ``adaptflow up`` runs
(``servers.build_services``) with the stores moved to PostgreSQL. Runs are triggered through the
Prefect API as the UI's Run button does; the retrain test continues the model of the UI test's
run (a module fixture), the restart test has a model of its own. Every process started here is
stopped by process group, even on failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    REPO,
    PostgresCluster,
    clean_env,
    postgres_cluster,
    trigger_and_wait,
    trigger_run,
    wait_for_run,
)

from adaptflow import servers
from adaptflow.errors import ServiceError
from adaptflow.samples import example_rows, write_tiny_icl_spec
from adaptflow.settings import load_settings
from registry import models

PIPELINE = "adapt-pipeline/adapt-pipeline"
RETRAIN = "scheduled-retrain/scheduled-retrain"
RUN_TIMEOUT = 300.0
START_TIMEOUT = 180.0
#: What urllib3 logs (a warning, so it reaches the flow run's stderr and the worker's log) each
#: time MLflow's HTTP client retries a request.
RETRY_LOG = "Retrying (Retry("


def _with_option(command: list[str], option: str, value: str) -> list[str]:
    """``command`` with the value after ``option`` replaced by ``value``."""
    assert option in command, f"{option} not in {command}"
    changed = list(command)
    changed[changed.index(option) + 1] = value
    return changed


@dataclass
class Stack:
    """The running servers; ``start``/``stop`` one of them by name."""

    postgres: PostgresCluster
    home: Path
    env: dict[str, str]
    services: dict[str, servers.Service]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.services["prefect"].url

    @property
    def tracking(self) -> str:
        return self.services["mlflow"].url

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def spawn(self, name: str) -> None:
        service = self.services[name]
        with self.log(name).open("a") as handle:
            self.processes[name] = subprocess.Popen(
                service.command,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env | service.env,
                start_new_session=True,  # its own group: stop() ends its children too
            )

    def wait_healthy(self, name: str) -> None:
        service, process = self.services[name], self.processes[name]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{name} exited:\n{self.tail(name)}"
            ready = servers.healthy(service.health_url)
            if ready and (name != "worker" or servers.worker_online(self.api)):
                return
            time.sleep(0.5)
        raise AssertionError(f"{name} not healthy in {START_TIMEOUT:.0f} s:\n{self.tail(name)}")

    def stop(self, name: str) -> str:
        process = self.processes.pop(name)
        signal = servers.stop_group(process.pid, timeout=15)
        process.wait(10)
        return signal

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.log(name).read_text(errors="replace")[-chars:]

    def registry(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking, registry_uri=self.tracking)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("pg-stack")
    home, logs = folder / "home", folder / "logs"
    settings = load_settings({"ADAPTFLOW_HOME": str(home)})
    for path in (logs, settings.prefect_home, settings.mlflow_artifacts):
        path.mkdir(parents=True)
    with postgres_cluster(("prefect", "mlflow")) as postgres:
        ports = [servers.free_port() for _ in servers.SERVICES]
        prefect, mlflow, worker = servers.build_services(settings, REPO, *ports)
        database = {
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url("prefect", "postgresql+asyncpg")
        }
        prefect = replace(prefect, env=prefect.env | database)
        # SQLAlchemy 2.1 reads postgresql:// as psycopg 3 (it used to mean psycopg2).
        store = postgres.url("mlflow")
        mlflow = replace(mlflow, command=_with_option(mlflow.command, "--backend-store-uri", store))
        env = clean_env(
            home,
            PREFECT_WORKER_QUERY_SECONDS="2",  # trigger-to-running in seconds
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",  # no cron run during the tests
        )
        stack = Stack(postgres, home, env, {s.name: s for s in (prefect, mlflow, worker)}, logs)
        try:
            for name in ("prefect", "mlflow"):
                stack.spawn(name)
            for name in ("prefect", "mlflow"):
                stack.wait_healthy(name)
            stack.spawn("worker")
            stack.wait_healthy("worker")
            done = subprocess.run(
                [sys.executable, "-m", "adaptflow", "deploy", "--json"],
                capture_output=True,
                text=True,
                env=env | {"PREFECT_API_URL": stack.api},
                cwd=REPO,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            deployed = [d["name"] for d in json.loads(done.stdout)["deployments"]]
            assert PIPELINE in deployed and RETRAIN in deployed
            yield stack
        finally:
            for name in reversed(servers.SERVICES):  # the worker first: no run left orphaned
                if name in stack.processes:
                    stack.stop(name)


def _completed(stack: Stack, run: Any) -> None:
    assert run.state.is_completed(), f"{run.state}\n{stack.tail('worker')}"


def _versions(stack: Stack, name: str) -> list[Any]:
    found = stack.registry().search_model_versions(f"name='{name}'")
    return sorted(found, key=lambda v: int(v.version))


@dataclass(frozen=True)
class Triggered:
    """The ``adapt-pipeline`` run the UI test triggers, which the retrain test continues."""

    spec: Path
    run: Any


@pytest.fixture(scope="module")
def triggered(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Triggered:
    spec = write_tiny_icl_spec(tmp_path_factory.mktemp("pg-ops") / "spec", "pg-ops")
    run, _ = trigger_and_wait(stack.api, PIPELINE, {"spec_path": str(spec)}, RUN_TIMEOUT)
    _completed(stack, run)
    return Triggered(spec, run)


@pytest.mark.integration
def test_ui_triggered_run_registers_the_champion_in_postgres(
    stack: Stack, triggered: Triggered
) -> None:
    run, registry = triggered.run, stack.registry()
    champion = registry.get_model_version_by_alias("pg-ops", "champion")
    assert champion.version == "1"
    assert champion.tags["adaptflow.flow_run_id"] == str(run.id)
    assert champion.tags["adaptflow.method"] == "icl"
    assert len(champion.tags["adaptflow.data_hash"]) > 32
    assert registry.get_model_version_by_alias("pg-ops", "challenger").version == "1"
    tracked = registry.get_run(champion.run_id)
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["adaptflow.flow_run_id"] == str(run.id)
    assert "f1_macro" in tracked.data.metrics and "baseline.f1_macro" in tracked.data.metrics

    # The servers really keep this in PostgreSQL.
    aliases = stack.postgres.psql(
        "SELECT alias, version FROM registered_model_aliases WHERE name = 'pg-ops' ORDER BY alias",
        "mlflow",
    )
    assert aliases.split() == ["challenger|1", "champion|1"]
    state = stack.postgres.psql(f"SELECT state_type FROM flow_run WHERE id = '{run.id}'", "prefect")
    assert state.split() == ["COMPLETED"]


@pytest.mark.integration
def test_scheduled_retrain_skips_unchanged_data_and_trains_on_changed_data(
    stack: Stack, triggered: Triggered
) -> None:
    parameters = {"spec_path": str(triggered.spec)}
    (first,) = _versions(stack, "pg-ops")
    data_hash = first.tags["adaptflow.data_hash"]

    run, logs = trigger_and_wait(stack.api, RETRAIN, parameters, RUN_TIMEOUT)
    _completed(stack, run)
    reason = f"data unchanged since champion v1 (hash {data_hash})"
    assert f"pg-ops: skipping training: {reason}" in logs, logs
    assert [v.version for v in _versions(stack, "pg-ops")] == ["1"]

    data = triggered.spec.parent / "data" / "chars.jsonl"
    kept = set(data.read_text().splitlines())
    added = [row for row in example_rows()[:60] if row not in kept]
    data.write_text(data.read_text() + "\n".join(added) + "\n")
    run, logs = trigger_and_wait(stack.api, RETRAIN, parameters, RUN_TIMEOUT)
    _completed(stack, run)
    first, second = _versions(stack, "pg-ops")
    new_hash = second.tags["adaptflow.data_hash"]
    assert new_hash != data_hash
    reason = f"data changed since champion v1 (hash {data_hash} -> {new_hash})"
    assert f"pg-ops: training: {reason}" in logs, logs


def _wait_for_run_with_params(stack: Stack, experiment: str, timeout: float) -> Any:
    """The first MLflow run of ``experiment`` once its params are logged (None at timeout)."""
    registry = stack.registry()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = registry.get_experiment_by_name(experiment)
        runs = registry.search_runs([found.experiment_id]) if found else []
        if runs and runs[0].data.params:
            return runs[0]
        time.sleep(0.5)
    return None


@pytest.mark.integration
def test_mlflow_restart_mid_run_completes_and_registers_once(stack: Stack, tmp_path: Path) -> None:
    spec = write_tiny_icl_spec(tmp_path / "spec", "pg-restart")
    flow_run_id = trigger_run(stack.api, PIPELINE, {"spec_path": str(spec)})
    # The pipeline opened its MLflow run and logged its params; curation, the candidate, the
    # baseline, the model and its registration are still to be written.
    tracked = _wait_for_run_with_params(stack, "pg-restart", RUN_TIMEOUT)
    assert tracked is not None, stack.tail("worker")
    worker_log_offset = stack.log("worker").stat().st_size
    assert stack.stop("mlflow") == "SIGTERM"
    stopped = time.monotonic()
    # Stay down until the pipeline has tried to reach the server (so the outage hits a call in
    # flight, not a quiet moment), then start it again on the same port and database.
    retried = ""
    while not retried and time.monotonic() - stopped < 60:
        time.sleep(0.5)
        with stack.log("worker").open(errors="replace") as log:
            log.seek(worker_log_offset)
            retried = next((line for line in log if RETRY_LOG in line), "")
    stack.spawn("mlflow")
    stack.wait_healthy("mlflow")
    downtime = time.monotonic() - stopped
    assert retried, f"no MLflow call during the {downtime:.0f} s outage"

    run, logs = wait_for_run(stack.api, flow_run_id, RUN_TIMEOUT)
    _completed(stack, run)
    registry = stack.registry()
    from_run = registry.search_model_versions(
        f"name='pg-restart' and run_id='{tracked.info.run_id}'"
    )
    assert [v.version for v in from_run] == ["1"], "registered more or less than once"
    assert [v.version for v in _versions(stack, "pg-restart")] == ["1"]
    assert registry.get_model_version_by_alias("pg-restart", "champion").version == "1"
    finished = registry.get_run(tracked.info.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["adaptflow.flow_run_id"] == str(flow_run_id)
    assert "f1_macro" in finished.data.metrics and "baseline.f1_macro" in finished.data.metrics
    experiment = registry.get_experiment_by_name("pg-restart")
    assert len(registry.search_runs([experiment.experiment_id])) == 1  # no run created twice


def test_an_unreadable_registry_is_an_error_not_no_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once MLflow's retries are spent, "could not read" must not pass for "no champion"."""
    dead = servers.mlflow_uri(servers.free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not in 4 minutes
    with pytest.raises(
        ServiceError, match=f"the champion of 'gone' from the MLflow registry at {dead}"
    ):
        models.champion_version("gone")
    with pytest.raises(ServiceError, match="could not read registered model 'gone'"):
        models.promote("gone", "1")
    with pytest.raises(ServiceError, match="Connection refused"):
        models.rollback("gone")
