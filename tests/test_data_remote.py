"""DVC for a team: every curated version pushed to ``ADAPTFLOW_DVC_REMOTE``, and pulled back.

A local-folder remote (the same code path as S3, GCS, Azure or SSH: DVC's remote filesystem).
A registered version is made from this session's home; a second, empty home (another machine
that shares only the MLflow registry and the remote) pulls the version's exact curated files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

from adaptflow.errors import DataError, ServiceError, SpecError
from adaptflow.samples import write_tiny_icl_spec
from tasks.curate.version import pull_dataset, version_with_dvc


def _files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_a_version_pushed_to_a_folder_remote_pulls_back_byte_identical(tmp_path: Path) -> None:
    repo, remote = tmp_path / "home", tmp_path / "remote"
    data = repo / "curated" / "x"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"id": "1", "text": "a"}\n')
    (data / "eval.jsonl").write_text('{"id": "2", "text": "b"}\n')
    (data / "report.md").write_text("derived: not part of the version\n")
    digest = version_with_dvc(data, repo, remote=str(remote))
    assert digest.endswith(".dir") and any(remote.rglob("*"))
    pulled = pull_dataset(digest, tmp_path / "pulled", str(remote), tmp_path / "scratch")
    assert [p.name for p in pulled] == ["eval.jsonl", "train.jsonl"]
    assert _files(tmp_path / "pulled") == _files(data, skip=("report.md",))
    # a hash the remote never received; a destination that holds files
    with pytest.raises(DataError, match="does not hold the data of DVC hash 0+.dir"):
        pull_dataset("0" * 32 + ".dir", tmp_path / "p2", str(remote), tmp_path / "scratch")
    with pytest.raises(DataError, match="is not an empty folder"):
        pull_dataset(digest, tmp_path / "pulled", str(remote), tmp_path / "scratch")


def test_a_push_that_fails_is_an_error_naming_the_remote(tmp_path: Path) -> None:
    data = tmp_path / "home" / "curated" / "y"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("{}\n")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the remote's folder should be")
    with pytest.raises(ServiceError, match=r"ADAPTFLOW_DVC_REMOTE=.*blocked/remote") as raised:
        version_with_dvc(data, tmp_path / "home", remote=str(blocked / "remote"))
    assert "local cache only" in str(raised.value)


@pytest.mark.integration
def test_another_home_pulls_the_exact_data_of_a_registered_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptflow.settings import load_settings
    from flows.pipeline import adapt_pipeline

    remote = tmp_path / "remote"
    monkeypatch.setenv("ADAPTFLOW_DVC_REMOTE", str(remote))
    spec = write_tiny_icl_spec(tmp_path / "spec", "team-data")
    result = adapt_pipeline(str(spec))
    version = result["model_version"]
    curated = Path(result["curation"]["train_file"]).parent
    # the other machine: its own empty home, the shared registry and the remote
    env = os.environ.copy() | {
        "ADAPTFLOW_HOME": str(tmp_path / "other-home"),
        "MLFLOW_TRACKING_URI": load_settings().mlflow_tracking_uri,
        "ADAPTFLOW_DVC_REMOTE": str(remote),
    }
    dest = tmp_path / "pulled"
    done = _cli(env, "data", "pull", f"models:/team-data/{version}", str(dest), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["data_hash"] == result["curation"]["data_hash"] and out["version"] == version
    assert set(out["files"]) >= {"train.jsonl", "eval.jsonl", "dropped.jsonl", "quarantine.jsonl"}
    assert _files(dest) == _files(curated, skip=("report.md", "funnel.png"))
    assert not any((tmp_path / "other-home" / "curated").rglob("*"))  # nothing curated there
    # without a remote configured: one clear message, exit 2
    unset = {k: v for k, v in env.items() if k != "ADAPTFLOW_DVC_REMOTE"}
    done = _cli(unset, "data", "pull", f"models:/team-data/{version}", str(tmp_path / "again"))
    assert done.returncode == 2 and "ADAPTFLOW_DVC_REMOTE is not set" in done.stderr


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adaptflow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


def test_input_lineage_tags_for_git_and_dvc_tracked_inputs(tmp_path: Path) -> None:
    import hashlib

    from dvc.repo import Repo

    from adaptflow.provenance import input_lineage
    from adaptflow.spec import Spec
    from flows.steps import provenance

    repo = tmp_path / "git"
    repo.mkdir()
    data = repo / "train.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "add", "train.jsonl")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "data")
    head = git("rev-parse", "HEAD")
    assert input_lineage("train", data) == {
        "adaptflow.input.train.git_commit": head,
        "adaptflow.input.train.git_clean": "true",
    }
    spec = Spec.model_validate(
        {"name": "lineage", "task": "classification", "method": "icl",
         "data": {"train": str(data), "label_field": "label"}}
    )  # fmt: skip
    assert provenance(spec, "icl")["adaptflow.input.train.git_commit"] == head
    data.write_text('{"text": "b", "label": "x"}\n')  # edited after the commit
    assert input_lineage("train", data)["adaptflow.input.train.git_clean"] == "false"

    dvc_repo = tmp_path / "dvc"
    dvc_repo.mkdir()
    tracked = dvc_repo / "pairs.jsonl"
    tracked.write_text('{"text": "c"}\n')
    Repo.init(str(dvc_repo), no_scm=True)
    with Repo(str(dvc_repo)) as dvc:
        dvc.add(str(tracked))
    md5 = hashlib.md5(tracked.read_bytes()).hexdigest()
    assert input_lineage("eval", tracked) == {
        "adaptflow.input.eval.dvc_md5": md5,
        "adaptflow.input.eval.dvc_matches": "true",
    }
    tracked.write_text('{"text": "d"}\n')  # changed since `dvc add`: the tag says so
    assert input_lineage("eval", tracked)["adaptflow.input.eval.dvc_matches"] == "false"
    loose = tmp_path / "loose.jsonl"
    loose.write_text("{}\n")
    assert input_lineage("train", loose) == {}


@pytest.fixture()
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-compatible server (moto's) on loopback; yields its endpoint URL."""
    import shutil
    import socket
    import time

    import httpx

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed (the dev extra installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        # DVC's S3 filesystem reads the endpoint and the credentials from botocore's variables
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_s3_compatible_remote_round_trip(s3_server: str, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="team")
    repo = tmp_path / "home"
    data = repo / "curated" / "s3"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"id": "1", "text": "over S3"}\n')
    digest = version_with_dvc(data, repo, remote="s3://team/adaptflow")
    keys = sorted(o.key for o in boto3.resource("s3").Bucket("team").objects.all())
    assert f"adaptflow/files/md5/{digest[:2]}/{digest[2:]}" in keys and len(keys) == 2
    pull_dataset(digest, tmp_path / "pulled", "s3://team/adaptflow", tmp_path / "scratch")
    assert _files(tmp_path / "pulled") == _files(data)
    with pytest.raises(ServiceError, match="s3://no-such-bucket"):  # the bucket does not exist
        version_with_dvc(data, repo, remote="s3://no-such-bucket/x")


def _git_dvc_project(folder: Path, remote: Path | None) -> None:
    for command in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        *(
            [[sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(remote)]]
            if remote
            else []
        ),
    ):
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


@pytest.mark.integration
def test_version_in_project_versions_the_data_in_the_users_own_dvc_repository(
    tmp_path: Path, adaptflow_home: Path
) -> None:
    import yaml
    from mlflow import MlflowClient

    from adaptflow.spec import load_spec
    from flows.curate import data_homes
    from flows.pipeline import adapt_pipeline

    project, store = tmp_path / "project", tmp_path / "team-store"
    project.mkdir()
    _git_dvc_project(project, store)
    spec = write_tiny_icl_spec(project / "specs", "own-repo")
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["version_in"] = "project"
    spec.write_text(yaml.safe_dump(raw))
    result = adapt_pipeline(str(spec))
    curated = project / "curated" / "own-repo"
    assert Path(result["curation"]["train_file"]) == curated / "train.jsonl"
    dvc_file = project / "curated" / "own-repo.dvc"
    assert result["curation"]["dvc_file"] == str(dvc_file)
    recorded = yaml.safe_load(dvc_file.read_text())["outs"][0]
    assert recorded["md5"] == result["curation"]["data_hash"] and recorded["path"] == "own-repo"
    # the data is git-ignored (DVC's own .gitignore), the .dvc file is for the user to commit
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "curated/own-repo/train.jsonl"], cwd=project, timeout=30
    )
    assert ignored.returncode == 0
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=project, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "curated/own-repo.dvc" in status and "curated/own-repo/" not in status
    # pushed to the project's own default remote, whose configuration is left as it was
    assert any(p.is_file() for p in store.rglob("*"))
    config = (project / ".dvc" / "config").read_text()
    assert "team" in config and "adaptflow" not in config
    assert not (adaptflow_home / "curated" / "own-repo").exists()
    version = MlflowClient().get_model_version("own-repo", result["model_version"])
    assert version.tags["adaptflow.data_dvc_file"] == str(dvc_file)
    assert version.tags["adaptflow.data_hash"] == recorded["md5"]
    # outside any DVC repository the option is a spec error naming it
    loose = write_tiny_icl_spec(tmp_path / "loose", "loose")
    raw = yaml.safe_load(loose.read_text())
    raw["data"]["version_in"] = "project"
    loose.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="data.version_in: project .* there is none at or above"):
        data_homes(load_spec(loose))
