"""Promotion under concurrency: the registry's promotion lock, re-decision, retries, idempotency.

The race runs real OS processes (one Python interpreter each) against the embedded SQLite store
and against a real ``mlflow server`` on loopback; each worker there gets its own
``ADAPTFLOW_HOME``, so only the server-side lease (not the local file lock) keeps them apart,
as for workers on different machines.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptflow.errors import RegistryError
from registry import lease, models, tracking

REPO = Path(__file__).resolve().parents[1]
NAME = "race-model"
METRICS = [0.50 + i / 100 for i in range(8)]  # f1 0.50 .. 0.57
random.Random(7).shuffle(METRICS)  # the best is not the newest version

WORKER = r"""
import json, sys, time
from pathlib import Path

name, version, start = sys.argv[1], sys.argv[2], Path(sys.argv[3])
from registry import models

models.champion_version(name)  # connect (and warm up) before the start signal
(start.parent / f"ready-{version}").touch()
while not start.exists():
    time.sleep(0.005)
try:
    result = models.promote(name, version, expected_current=None, metric="f1")
    outcome = {"outcome": "promoted", "previous": result["previous"], "reason": result["reason"]}
except models.PromotionRefused as refused:
    outcome = {"outcome": "refused", "reason": refused.reason, "champion": refused.champion_version}
except Exception as exc:
    outcome = {"outcome": "error", "reason": f"{type(exc).__name__}: {exc}"}
print(json.dumps({"version": version, **outcome}))
"""


def _register(name: str, metrics: list[float], data_hash: str = "same-data") -> list[str]:
    versions = []
    for value in metrics:
        run_id = tracking.start_run("promotion-race", "candidate", {})
        tags = {"metric.f1": f"{value:.6f}", "adaptflow.data_hash": data_hash}
        versions.append(
            models.register_candidate(name, f"runs:/{run_id}/model", run_id, tags, "test")
        )
    return versions


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh embedded MLflow store for this test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _race(tmp_path: Path, env_for: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """Start one process per version, release them together, return their outcomes."""
    start = tmp_path / "barrier" / "start"
    start.parent.mkdir()
    procs = {
        version: subprocess.Popen(
            [sys.executable, "-c", WORKER, NAME, version, str(start)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version, env in env_for.items()
    }
    deadline = time.monotonic() + 120
    while len(list(start.parent.glob("ready-*"))) < len(procs):
        assert time.monotonic() < deadline, "workers did not get ready"
        assert all(p.poll() is None for p in procs.values()), "a worker died before the start"
        time.sleep(0.05)
    start.touch()
    outcomes = []
    for version, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        outcome = json.loads(out.strip().splitlines()[-1])
        assert outcome["version"] == version
        outcomes.append(outcome)
    return outcomes


def _check_race(outcomes: list[dict[str, str]], versions: list[str]) -> None:
    metric = dict(zip(versions, METRICS, strict=True))
    best = max(versions, key=metric.__getitem__)
    assert {o["outcome"] for o in outcomes} <= {"promoted", "refused"}, outcomes
    assert all(o["reason"] for o in outcomes if o["outcome"] == "refused"), outcomes
    # exactly one champion, the best candidate's
    assert models.champion_version(NAME) == best
    # no lost update: the promotions form one chain None -> ... -> best, each replacing the
    # champion it really found, each strictly better than the one before
    promoted = {o["version"]: o["previous"] for o in outcomes if o["outcome"] == "promoted"}
    chain, current = [], None
    following = {previous: version for version, previous in promoted.items()}
    assert len(following) == len(promoted), f"two promotions replaced the same champion: {outcomes}"
    while current in following:
        current = following[current]
        chain.append(current)
    assert chain and chain[-1] == best and sorted(chain) == sorted(promoted), outcomes
    assert all(metric[a] < metric[b] for a, b in zip(chain, chain[1:], strict=False))
    for version, previous in promoted.items():
        assert models.version_tags(NAME, version)[models.PREVIOUS_TAG] == (previous or "")
    for refused in (o for o in outcomes if o["outcome"] == "refused"):
        assert "does not beat" in refused["reason"]


def _worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | extra


@pytest.mark.integration
def test_eight_processes_racing_on_the_embedded_store(tmp_path: Path, store: str) -> None:
    versions = _register(NAME, METRICS)
    began = time.monotonic()
    env = _worker_env(MLFLOW_TRACKING_URI=store)
    outcomes = _race(tmp_path, {v: env for v in versions})
    print(f"8-process race on SQLite: {time.monotonic() - began:.1f} s", outcomes)
    _check_race(outcomes, versions)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real ``mlflow server`` on a free loopback port (SQLite backend), stopped afterwards."""
    from adaptflow.servers import free_port, healthy

    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
        + ["--artifacts-destination", str(tmp_path / "server-artifacts")],
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while not healthy(f"{url}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                # a server that does not start is a failure (no skip: CI turns none into a pass)
                pytest.fail(
                    f"mlflow server did not start within 60 s (exit {proc.poll()}): "
                    + (tmp_path / "mlflow-server.log").read_text()[-2000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.integration
def test_eight_workers_racing_on_a_server(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    versions = _register(NAME, METRICS)
    began = time.monotonic()
    # A separate home per worker: no shared file lock, only the lease on the server.
    # Settle time 2 s: the largest read-to-write gap of 8 processes on a loaded 2-core box.
    envs = {
        v: _worker_env(
            MLFLOW_TRACKING_URI=mlflow_server,
            ADAPTFLOW_HOME=str(tmp_path / f"home-{v}"),
            ADAPTFLOW_PROMOTION_LOCK_SETTLE="2.0",
        )
        for v in versions
    }
    outcomes = _race(tmp_path, envs)
    print(f"8-worker race on an MLflow server: {time.monotonic() - began:.1f} s", outcomes)
    _check_race(outcomes, versions)
    assert lease.LOCK_TAG not in (tracking.client().get_registered_model(NAME).tags or {}), (
        "the lock was not released"
    )


def test_promotion_refused_when_the_champion_changed_underneath(store: str) -> None:
    v1, v2, v3 = _register(NAME, [0.60, 0.55, 0.70])
    (v4,) = _register(NAME, [0.90], data_hash="other-data")
    models.promote(NAME, v1)  # e.g. someone promoted v1 while our gate compared against "none"
    with pytest.raises(models.PromotionRefused) as refused:
        models.promote(NAME, v2, expected_current=None, metric="f1")
    assert "changed from None to 1" in refused.value.reason
    assert "does not beat" in refused.value.reason
    assert refused.value.champion_version == v1
    assert models.champion_version(NAME) == v1
    # without a metric to compare, a changed champion always refuses (no lost update)
    with pytest.raises(models.PromotionRefused, match="no metric given"):
        models.promote(NAME, v3, expected_current=None)
    # evaluated on other data: not comparable, refused
    with pytest.raises(models.PromotionRefused, match="different data"):
        models.promote(NAME, v4, expected_current=None, metric="f1")
    # better than the new champion: promoted, and the real previous champion is recorded
    result = models.promote(NAME, v3, expected_current=None, metric="f1")
    assert result["champion_version"] == v3 and result["previous"] == v1
    assert "beats" in result["reason"]
    # unchanged champion: the caller's gate decision stands
    assert models.promote(NAME, v2, expected_current=v3)["previous"] == v3
    assert models.rollback(NAME)["champion_version"] == v3
    assert models.rollback(NAME)["champion_version"] == v1


def _flaky(monkeypatch: pytest.MonkeyPatch, failures: int, lose_answer: bool) -> list[int]:
    """Make MlflowClient.create_model_version fail transiently ``failures`` times."""
    from mlflow.exceptions import RestException
    from mlflow.tracking import MlflowClient

    original = MlflowClient.create_model_version
    calls: list[int] = []

    def create(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            if lose_answer:  # the server created it, the answer never arrived
                original(self, *args, **kwargs)
            raise RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "restarting"})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", create)
    monkeypatch.setattr(tracking, "RETRY_WAIT_SECONDS", 0.01)
    return calls


@pytest.mark.parametrize("lose_answer", [False, True], ids=["failed", "answer-lost"])
def test_transient_errors_are_retried_and_register_once(
    store: str, monkeypatch: pytest.MonkeyPatch, lose_answer: bool
) -> None:
    calls = _flaky(monkeypatch, failures=2, lose_answer=lose_answer)
    run_id = tracking.start_run("retry", "candidate", {})
    version = models.register_candidate(NAME, f"runs:/{run_id}/model", run_id, {}, "d")
    # a second registration of the same run (a retried task) reuses the version too
    again = models.register_candidate(NAME, f"runs:/{run_id}/model", run_id, {}, "d")
    versions = tracking.client().search_model_versions(f"name='{NAME}'")
    assert [str(v.version) for v in versions] == ["1"] and version == again == "1"
    assert len(calls) == (1 if lose_answer else 3)


def test_permanent_errors_are_not_retried(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException, RestException

    calls = []

    def fails() -> None:
        calls.append(1)
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"})

    with pytest.raises(RestException):
        tracking.retrying(fails)
    assert len(calls) == 1
    assert tracking.is_transient(RestException({"error_code": "REQUEST_LIMIT_EXCEEDED"}))
    assert tracking.is_transient(ConnectionResetError())
    assert tracking.is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not tracking.is_transient(MlflowException("API request failed: Max retries exceeded"))
    # two upserts of one tag racing on the server: the loser's 400 is worth another try
    lost = "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags.key"
    assert tracking.is_transient(RestException({"error_code": "BAD_REQUEST", "message": lost}))
    other = "UNIQUE constraint failed: model_versions.version"
    assert not tracking.is_transient(RestException({"error_code": "BAD_REQUEST", "message": other}))
    with pytest.raises(RegistryError, match="no registered model"):
        models.promote("nothing-here", "1")


def test_subclasses_of_mlflow_errors_are_classified_like_their_class() -> None:
    """Errors were once told apart by class name, so a subclass fell through every check."""
    import sqlite3

    import requests
    from mlflow.exceptions import MlflowException, RestException

    from registry.models import _not_found

    class GatewayRestException(RestException):
        pass

    class PluginError(MlflowException):
        pass

    assert tracking.is_transient(GatewayRestException({"error_code": "TEMPORARILY_UNAVAILABLE"}))
    assert not tracking.is_transient(GatewayRestException({"error_code": "BAD_REQUEST"}))
    assert tracking.is_transient(PluginError("database is locked"))
    assert tracking.is_transient(sqlite3.OperationalError("database is locked"))
    assert tracking.is_transient(requests.exceptions.ReadTimeout("read timed out"))
    assert not tracking.is_transient(ValueError("database is locked"))
    missing = GatewayRestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"})
    assert _not_found(missing)
    assert not _not_found(PluginError("x", error_code="INTERNAL_ERROR"))


@pytest.mark.integration
@pytest.mark.slow  # the race itself is also run on a server (test_eight_workers_racing...)
def test_four_first_runs_at_once_on_a_fresh_home_all_register(tmp_path: Path) -> None:
    """Concurrent first runs once died in MLflow's or Prefect's SQLite migration."""
    data = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"
    (tmp_path / "t.jsonl").write_text("".join(data.read_text().splitlines(True)[:60]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: first-runs\ntask: classification\nbase_model: minilm\n"
        "data: {train: t.jsonl}\nmethod: icl\ntarget: {metric: f1_macro}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "MLFLOW_TRACKING_URI")}
    env["ADAPTFLOW_HOME"] = str(tmp_path / "fresh-home")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "adaptflow", "run", str(spec), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )  # fmt: skip
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    versions = sorted(int(json.loads(out)["model_version"]) for out, _ in outputs)
    assert versions == [1, 2, 3, 4]
