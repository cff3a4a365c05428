"""A canary secret in the environment never reaches MLflow or Prefect's logs.

The canary is the value of ``ADAPTFLOW_CANARY_TOKEN`` and ``HF_TOKEN``, and it is also the name
of the folder holding the training data, so a value the pipeline does log (``data.train``, the
spec, the curation report, the model card) carries it: the test proves the redaction, not only
that nothing dumps the environment.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from registry import tracking

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"
CANARY = "canary-7f3a9c51e2d84b06"

pytestmark = pytest.mark.integration


def test_redact_replaces_secret_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_PASSWORD", "hunter2-long-enough")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to redact safely
    monkeypatch.setenv("PLAIN_SETTING", "hunter2-long-enough-plain")
    text = "x hunter2-long-enough-plain y abc"
    assert tracking.redact(text) == "x ***-plain y abc"


def test_passwords_in_urls_are_redacted_wherever_they_come_from(tmp_path: Path) -> None:
    text = (
        "tracking https://alice:pw-in-url-1@mlflow.example:5000/x, "
        "db postgresql://mlflow:pw2@127.0.0.1:5432/mlflow, "
        "plain http://host:5000/a@b and s3://bucket/key and mail bob@example.com"
    )
    assert tracking.redact(text, secrets=[]) == (
        "tracking https://alice:***@mlflow.example:5000/x, "
        "db postgresql://mlflow:***@127.0.0.1:5432/mlflow, "
        "plain http://host:5000/a@b and s3://bucket/key and mail bob@example.com"
    )
    # uploaded files too: a text file is redacted in a copy, a binary one is left as it is
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.txt").write_text("uri: https://u:pw-in-url-1@h/\n")
    binary = b"\xff\xfe://u:pw@" + bytes(range(256))
    (tmp_path / "run" / "weights.bin").write_bytes(binary)
    with tracking.redacted_copy(tmp_path / "run") as copy:
        assert copy != tmp_path / "run"
        assert (copy / "settings.txt").read_text() == "uri: https://u:***@h/\n"
        assert (copy / "weights.bin").read_bytes() == binary
    assert "pw-in-url-1" in (tmp_path / "run" / "settings.txt").read_text()  # original kept


def _scan(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]


def _prefect_logs() -> list[str]:
    """Every log line the Prefect API holds (explicit limit and offset, as this version needs)."""
    from prefect.client.orchestration import get_client

    lines: list[str] = []
    with get_client(sync_client=True) as prefect:
        while True:
            page = prefect.read_logs(limit=200, offset=len(lines))
            lines += [f"{log.name} {log.message}" for log in page]
            if len(page) < 200:
                return lines


def test_canary_secret_never_reaches_mlflow_or_prefect_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from mlflow.artifacts import download_artifacts
    from prefect.logging.handlers import APILogHandler

    from flows.pipeline import adapt_pipeline

    monkeypatch.setenv("ADAPTFLOW_CANARY_TOKEN", CANARY)
    monkeypatch.setenv("HF_TOKEN", CANARY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = tmp_path / CANARY
    data.mkdir()
    (data / "train.jsonl").write_text("".join(DATA.read_text().splitlines(True)[::4]))
    spec = yaml.safe_load((REPO / "examples" / "unicode-categories" / "spec.yaml").read_text())
    spec |= {"name": "secrets-canary", "method": "icl", "target": {"metric": "f1_macro"}}
    spec["data"]["train"] = f"{CANARY}/train.jsonl"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))

    caplog.set_level(logging.INFO)
    summary = adapt_pipeline(str(spec_path))
    APILogHandler().flush()  # send the queued log batch before reading it back

    client = tracking.client()
    run = client.get_run(summary["mlflow_run_id"])
    assert "***" in run.data.params["data.train"], "the logged field was not redacted"
    hits = [f"param {k}={v}" for k, v in run.data.params.items() if CANARY in k + v]
    hits += [f"tag {k}={v}" for k, v in run.data.tags.items() if CANARY in k + v]
    hits += [f"metric {k}" for k in run.data.metrics if CANARY in k]
    run_files = Path(download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "run")))
    hits += _scan(run_files)
    name, version = summary["name"], summary["model_version"]
    registered = client.get_model_version(name, version)
    hits += [f"version tag {k}={v}" for k, v in registered.tags.items() if CANARY in k + v]
    hits += ["version description"] if CANARY in (registered.description or "") else []
    model_files = Path(
        download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp_path / "m"))
    )
    hits += _scan(model_files)
    assert (model_files / "MLmodel").is_file() and list(run_files.iterdir())
    logs = _prefect_logs() + [r.getMessage() for r in caplog.records]
    assert logs, "no Prefect logs captured"
    hits += [f"log: {line}" for line in logs if CANARY in line]
    out, err = capfd.readouterr()
    hits += ["console output"] if CANARY in out + err else []
    assert not hits, json.dumps(hits, indent=1)


def test_a_rag_package_is_uploaded_redacted_and_kept_whole_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package folder goes through the same redaction as every other artifact."""
    from helpers import write_knowledge
    from mlflow.artifacts import download_artifacts

    from adaptflow.spec import RetrievalSpec
    from registry import models
    from tasks.rag.package import index_knowledge, write_package

    monkeypatch.setenv("ADAPTFLOW_CANARY_TOKEN", CANARY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    home = tmp_path / CANARY / "home"  # the package's chroma_path carries the canary
    retrieval = RetrievalSpec(chunk_tokens=16, overlap=0).model_dump()
    index = index_knowledge(
        "canary-rag", write_knowledge(tmp_path / "kb"), "minilm", retrieval, home, None
    )
    package = write_package(tmp_path / "package", index, retrieval)
    assert CANARY in (package / "adaptflow_model.json").read_text()

    run_id = tracking.start_run("canary-rag", "package", {})
    uri = models.log_model_package(run_id, package, f"# card\n\nhome: {home}\n")
    uploaded = Path(download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "down")))
    manifest = next(uploaded.rglob("adaptflow_model.json"))
    assert json.loads(manifest.read_text())["index"]["chroma_path"] == str(home / "chroma").replace(
        CANARY, "***"
    )
    assert not _scan(uploaded), _scan(uploaded)
    assert CANARY in (package / "adaptflow_model.json").read_text()  # the local package is whole
