"""Operations: scheduled retraining's decision, `adaptflow up/down/deploy`, and the UI path.

The unit tests need no server. The integration test starts real servers with `adaptflow up` on
free loopback ports in a temporary ADAPTFLOW_HOME, deploys prefect.yaml, triggers deployments
through the Prefect API as the UI does, and checks the MLflow server's registry.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import clean_env, trigger_and_wait

from adaptflow import servers
from adaptflow.errors import AdaptflowError, ServiceError
from adaptflow.samples import write_tiny_icl_spec
from adaptflow.settings import load_settings
from tasks.retrain import retrain_decision

REPO = Path(__file__).resolve().parents[1]
ADAPTFLOW = [sys.executable, "-m", "adaptflow"]
HASH_A, HASH_B = "a" * 32 + ".dir", "b" * 32 + ".dir"


# --- the retrain decision ----------------------------------------------------------------------


def test_unchanged_data_skips_with_the_reason() -> None:
    decision = retrain_decision(HASH_A, "3", HASH_A)
    assert not decision.retrain
    assert decision.reason == f"data unchanged since champion v3 (hash {HASH_A})"


def test_force_trains_on_unchanged_data() -> None:
    decision = retrain_decision(HASH_A, "3", HASH_A, force=True)
    assert decision.retrain and decision.reason.endswith("; force=True")
    assert "data unchanged since champion v3" in decision.reason


def test_changed_data_trains() -> None:
    decision = retrain_decision(HASH_B, "3", HASH_A)
    assert decision.retrain
    assert decision.reason == f"data changed since champion v3 (hash {HASH_A} -> {HASH_B})"


def test_no_champion_or_untagged_champion_trains() -> None:
    assert retrain_decision(HASH_A, None, None).retrain
    untagged = retrain_decision(HASH_A, "2", None)
    assert untagged.retrain and "adaptflow.data_hash" in untagged.reason
    assert untagged.as_dict() == {"retrain": True, "reason": untagged.reason}


# --- up / down without servers -----------------------------------------------------------------


def _settings(home: Path) -> Any:
    return load_settings({"ADAPTFLOW_HOME": str(home)})


def _sleeper(*marker: str, ignore_term: bool = False) -> subprocess.Popen[bytes]:
    """A process in its own group whose command line carries ``marker`` (like a service)."""
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(120)\n"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *marker], start_new_session=True, stdout=subprocess.PIPE
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_read_pid(tmp_path: Path) -> None:
    assert servers.read_pid(tmp_path / "missing.pid") is None
    (tmp_path / "bad.pid").write_text("not a pid\n")
    assert servers.read_pid(tmp_path / "bad.pid") is None
    (tmp_path / "ok.pid").write_text("1234\n")
    assert servers.read_pid(tmp_path / "ok.pid") == 1234


def test_pid_alive_checks_marker_and_zombies() -> None:
    process = _sleeper("mlflow")
    try:
        assert servers.pid_alive(process.pid, "mlflow")
        assert not servers.pid_alive(process.pid, "prefect")  # a recycled pid is not ours
    finally:
        process.kill()
    time.sleep(0.2)
    assert not servers.pid_alive(process.pid)  # a zombie until waited for
    process.wait()
    assert not servers.pid_alive(process.pid)


def test_stop_group_terms_then_kills() -> None:
    polite, stubborn = _sleeper(), _sleeper(ignore_term=True)
    assert servers.stop_group(polite.pid, timeout=5) == "SIGTERM"
    assert servers.stop_group(stubborn.pid, timeout=0.5) == "SIGKILL"
    assert polite.wait(5) == -signal.SIGTERM and stubborn.wait(5) == -signal.SIGKILL


class _FakeServers(BaseHTTPRequestHandler):
    """Answers like healthy Prefect, MLflow and worker endpoints, and lists one ONLINE worker."""

    def do_GET(self) -> None:
        self._answer(200 if self.path.endswith("/health") else 404, b"true")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.path.endswith("/workers/filter")
        self._answer(200 if ok else 404, b'[{"name": "w", "status": "ONLINE"}]')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_servers() -> Iterator[int]:
    server = ThreadingHTTPServer((servers.HOST, 0), _FakeServers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_health_and_ports(fake_servers: int) -> None:
    assert servers.healthy(f"http://{servers.HOST}:{fake_servers}/api/health")
    assert not servers.healthy(f"http://{servers.HOST}:{fake_servers}/nothing")
    assert servers.worker_online(servers.prefect_api_url(fake_servers))
    assert not servers.port_free(fake_servers)
    port = servers.free_port()
    assert servers.port_free(port)
    assert not servers.healthy(f"http://{servers.HOST}:{port}/health")
    assert not servers.worker_online(servers.prefect_api_url(port))


def test_up_is_idempotent_when_everything_runs(tmp_path: Path, fake_servers: int) -> None:
    settings = _settings(tmp_path / "home")
    folder = servers.servers_dir(settings)
    folder.mkdir(parents=True)
    processes = {"prefect": _sleeper("prefect"), "mlflow": _sleeper("mlflow")}
    processes["worker"] = _sleeper("prefect", "worker")
    try:
        for name, process in processes.items():
            servers.pid_file(settings, name).write_text(f"{process.pid}\n")
        state = {name: {"port": fake_servers} for name in servers.SERVICES}
        (folder / servers.STATE_FILE).write_text(json.dumps(state))
        lines: list[str] = []
        result = servers.up(settings, REPO, prefect_port=1, mlflow_port=2, log=lines.append)
        assert result["started"] == []
        assert result["already_running"] == list(servers.SERVICES)
        assert result["pids"] == {name: p.pid for name, p in processes.items()}
        assert result["prefect_api_url"] == f"http://127.0.0.1:{fake_servers}/api"
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{fake_servers}" in result["exports"]
        assert all("already running" in line for line in lines) and len(lines) == 3
        assert servers.running_prefect_url(settings) == result["prefect_api_url"]
        stopped = servers.down(settings, timeout=5)
        assert set(stopped["stopped"]) == set(servers.SERVICES)
        assert not any(servers.pid_file(settings, name).exists() for name in servers.SERVICES)
        assert not (folder / servers.STATE_FILE).exists()
        for process in processes.values():
            assert process.wait(5) == -signal.SIGTERM
    finally:
        for process in processes.values():
            process.kill()
            process.wait()


def test_up_refuses_a_port_in_use_before_starting_anything(
    tmp_path: Path, fake_servers: int
) -> None:
    settings = _settings(tmp_path / "home")
    with pytest.raises(ServiceError, match=f"port {fake_servers} .* --prefect-port"):
        servers.up(settings, REPO, prefect_port=fake_servers, mlflow_port=servers.free_port())
    assert not list(servers.servers_dir(settings).glob("*.pid"))


def test_down_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    servers.servers_dir(settings).mkdir(parents=True)
    stranger = _sleeper()  # its command line names no service
    try:
        servers.pid_file(settings, "prefect").write_text(f"{stranger.pid}\n")
        servers.pid_file(settings, "mlflow").write_text("999999999\n")
        result = servers.down(settings)
        assert result == {"stopped": {}, "not_running": ["worker", "mlflow", "prefect"]}
        assert stranger.poll() is None
        assert not list(servers.servers_dir(settings).glob("*.pid"))
    finally:
        stranger.kill()
        stranger.wait()


def test_services_bind_loopback_and_share_the_embedded_stores(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home")
    prefect, mlflow, worker = servers.build_services(settings, REPO, 4200, 5000, 4201)
    assert prefect.command[-4:] == ["--host", "127.0.0.1", "--port", "4200"]
    assert prefect.env["PREFECT_HOME"] == str(settings.prefect_home)
    store = mlflow.command[mlflow.command.index("--backend-store-uri") + 1]
    assert store == settings.mlflow_tracking_uri  # the embedded default's database
    artifacts = mlflow.command[mlflow.command.index("--artifacts-destination") + 1]
    assert artifacts == str(settings.mlflow_artifacts)
    assert worker.command[worker.command.index("--pool") + 1] == "adaptflow-process"
    assert worker.env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert worker.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert worker.env["ADAPTFLOW_REPO"] == str(REPO)
    assert worker.env["ADAPTFLOW_HOME"] == str(settings.home)


def test_find_repo(tmp_path: Path) -> None:
    assert servers.find_repo({}) == REPO
    assert servers.find_repo({"ADAPTFLOW_REPO": str(REPO)}) == REPO
    with pytest.raises(AdaptflowError, match="no prefect.yaml"):
        servers.find_repo({"ADAPTFLOW_REPO": str(tmp_path)})


# --- deploy without a server -------------------------------------------------------------------


def test_prefect_yaml_is_what_deploy_applies() -> None:
    from adaptflow.deployments import _schedules, load_project

    config = load_project(REPO)
    retrain = {d["name"]: d for d in config["deployments"]}["scheduled-retrain"]
    assert retrain["parameters"]["force"] is False
    (schedule,) = _schedules(retrain)
    assert schedule.schedule.cron == retrain["schedules"][0]["cron"] and schedule.active


def test_deploy_refuses_what_it_would_ignore(tmp_path: Path) -> None:
    from adaptflow.deployments import load_project

    text = (REPO / "prefect.yaml").read_text()
    (tmp_path / "prefect.yaml").write_text(text + "build:\n  - some.step: {}\n")
    with pytest.raises(AdaptflowError, match="does not apply build"):
        load_project(tmp_path)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADAPTFLOW, *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )


def test_deploy_without_a_server_is_one_message(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home")
    result = run_cli("deploy", "--json", env=env)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "adaptflow up" in json.loads(result.stdout)["error"]
    dead = f"http://127.0.0.1:{servers.free_port()}/api"
    result = run_cli("deploy", env=env | {"PREFECT_API_URL": dead})
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert f"not reachable at {dead}" in result.stderr
    result = run_cli("down", env=env)
    assert result.returncode == 0 and "nothing was running" in result.stderr


# --- the real servers --------------------------------------------------------------------------


def _read_deployment(api_url: str, name: str) -> Any:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(read())


GPU_PROBE = """
import json, time
from prefect import flow, task

@task(tags=["gpu"])  # the tag our training tasks carry
def train():
    start = time.time()
    time.sleep(2)
    return start, time.time()

@flow
def two_trainings():
    return [future.result() for future in [train.submit(), train.submit()]]

print(json.dumps(two_trainings()))
"""


def _assert_gpu_tasks_never_overlap(api_url: str, env: dict[str, str]) -> None:
    """Two `gpu`-tagged tasks submitted together run one after the other (the deployed limit)."""
    env = env | {
        "PREFECT_API_URL": api_url,
        "PREFECT_TASK_RUN_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", GPU_PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (first, second) = sorted(json.loads(done.stdout.strip().splitlines()[-1]))
    assert first[1] <= second[0], f"gpu tasks overlapped: {first} {second}"


@pytest.mark.integration
def test_up_deploy_trigger_retrain_down(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    home = tmp_path / "home"
    spec = write_tiny_icl_spec(tmp_path / "spec", "ops-tiny")
    # A 2 s poll keeps trigger-to-running short; no cron schedule may fire during the test.
    env = clean_env(
        home,
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    )
    prefect_port, mlflow_port = servers.free_port(), servers.free_port()
    ports = ("--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port))
    settings = _settings(home)
    worker_log = servers.log_file(settings, "worker")
    pids: dict[str, int] = {}
    try:
        result = run_cli("up", *ports, "--json", env=env)
        assert result.returncode == 0, result.stderr
        up = json.loads(result.stdout)
        pids = up["pids"]
        api, tracking = up["prefect_api_url"], up["mlflow_tracking_uri"]
        assert (api, tracking) == (
            f"http://127.0.0.1:{prefect_port}/api",
            f"http://127.0.0.1:{mlflow_port}",
        )
        assert set(pids) == set(servers.SERVICES) and up["started"] == list(servers.SERVICES)
        assert servers.healthy(f"{api}/health") and servers.healthy(f"{tracking}/health")
        again = run_cli("up", *ports, env=env)
        assert again.returncode == 0 and f"export PREFECT_API_URL={api}" in again.stdout
        assert again.stderr.count("already running") >= 3

        result = run_cli("deploy", "--json", env=env)  # finds the server `up` started
        assert result.returncode == 0, result.stderr
        deployed = json.loads(result.stdout)
        assert deployed["work_pools"] == {"adaptflow-process": "exists"}  # the worker made it
        assert deployed["concurrency_limit"] == {"tag": "gpu", "limit": 1, "created": True}
        assert [d["name"] for d in deployed["deployments"]] == [
            "adapt-pipeline/adapt-pipeline",
            "adapt-pipeline/adapt-ladder",
            "scheduled-retrain/scheduled-retrain",
            "index-refresh/index-refresh",
            "harvest-and-retrain/harvest-and-retrain",
        ]
        redeployed = json.loads(run_cli("deploy", "--json", env=env).stdout)
        assert redeployed["concurrency_limit"]["created"] is False
        assert [d["id"] for d in redeployed["deployments"]] == [
            d["id"] for d in deployed["deployments"]
        ]
        retrain = _read_deployment(api, "scheduled-retrain/scheduled-retrain")
        assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * 1"]
        assert "force" in retrain.parameter_openapi_schema["properties"]

        _assert_gpu_tasks_never_overlap(api, env | {"PREFECT_HOME": str(home / "prefect")})

        registry = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        run, _ = trigger_and_wait(
            api, "adapt-pipeline/adapt-pipeline", {"spec_path": str(spec)}, timeout=240
        )
        assert run.state.is_completed(), f"{run.state}\n{worker_log.read_text()[-3000:]}"
        champion = registry.get_model_version_by_alias("ops-tiny", "champion")
        assert champion.version == "1"
        assert champion.tags["adaptflow.flow_run_id"] == str(run.id)
        data_hash = champion.tags["adaptflow.data_hash"]

        run, logs = trigger_and_wait(
            api, "scheduled-retrain/scheduled-retrain", {"spec_path": str(spec)}, 240
        )
        assert run.state.is_completed(), f"{run.state}\n{worker_log.read_text()[-3000:]}"
        reason = f"data unchanged since champion v1 (hash {data_hash})"
        assert f"ops-tiny: skipping training: {reason}" in logs, "\n".join(logs)
        assert len(registry.search_model_versions("name='ops-tiny'")) == 1

        run, logs = trigger_and_wait(
            api, "scheduled-retrain/scheduled-retrain", {"spec_path": str(spec), "force": True}, 240
        )
        assert run.state.is_completed(), f"{run.state}\n{worker_log.read_text()[-3000:]}"
        assert f"ops-tiny: training: {reason}; force=True" in logs, "\n".join(logs)
        versions = registry.search_model_versions("name='ops-tiny'")
        assert sorted(v.version for v in versions) == ["1", "2"]
    finally:
        result = run_cli("down", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["stopped"]) == set(servers.SERVICES)
    for name, pid in pids.items():
        assert not servers.pid_alive(pid), name
        assert not servers.pid_file(settings, name).exists()
    assert not servers.healthy(f"http://127.0.0.1:{prefect_port}/api/health")
    assert not servers.healthy(f"http://127.0.0.1:{mlflow_port}/health")
