"""End to end on the embedded default: real Prefect flow, MLflow store and registry, DVC, LoRA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration

DATA = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"


def _spec(folder: Path, name: str, **train: float) -> Path:
    spec = yaml.safe_load((REPO / "examples" / "unicode-categories" / "spec.yaml").read_text())
    spec["name"] = name
    spec["data"]["train"] = str(DATA)
    spec["train"].update(train)
    path = folder / f"{name}-{len(list(folder.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One good candidate: becomes version 1 and champion."""
    from flows.pipeline import adapt_pipeline

    folder = tmp_path_factory.mktemp("specs")
    return folder, adapt_pipeline(str(_spec(folder, "e2e-chars")))


def test_first_candidate_is_registered_and_promoted(first_run) -> None:
    from registry import models, tracking

    _, summary = first_run
    assert summary["model_version"] == "1"
    assert summary["promoted"] is True
    assert summary["champion_version"] == "1"
    # Fixed seed, fixed data: macro-F1 measured 0.936 on 2 CPU threads; LoRA must beat the
    # no-training nearest-neighbour vote (0.9095 with k=3, tuned by leave-one-out) on this data.
    assert summary["metrics"]["f1_macro"] == pytest.approx(0.936, abs=0.02)
    assert summary["metrics"]["f1_macro"] > summary["baseline"]["f1_macro"]
    assert summary["baseline"]["f1_macro"] == pytest.approx(0.9095, abs=0.01)
    assert summary["baseline_method"] == "nearest-neighbour vote (k=3, tuned by leave-one-out)"
    cur = summary["curation"]
    assert (cur["input"], cur["kept"], cur["quarantined"]) == (780, 780, 0)
    assert (cur["train_examples"], cur["eval_examples"]) == (624, 156)
    assert cur["data_hash"].endswith(".dir")

    assert models.champion_version("e2e-chars") == "1"
    tags = models.version_tags("e2e-chars", "1")
    assert tags["adaptflow.data_hash"] == cur["data_hash"]
    assert tags["adaptflow.method"] == "lora"
    assert len(tags["adaptflow.spec_hash"]) == 16
    assert tags["adaptflow.flow_run_id"]
    assert tags["adaptflow.mlflow_run_id"] == summary["mlflow_run_id"]

    run = tracking.client().get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["f1_macro"] == pytest.approx(summary["metrics"]["f1_macro"])
    assert run.data.metrics["baseline.f1_macro"] == pytest.approx(summary["baseline"]["f1_macro"])
    assert run.data.params["method"] == "lora"
    artifacts = {a.path for a in tracking.client().list_artifacts(summary["mlflow_run_id"])}
    assert {"confusion_matrix.png", "report.md", "model_card.md", "spec.resolved.json"} <= artifacts


def test_registered_package_is_an_adapter_not_a_copy_of_the_base(first_run) -> None:
    _, summary = first_run
    package = Path(summary["train"]["package_dir"])
    weights = sorted(p.name for p in (package / "adapter").iterdir())
    assert weights == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] or weights == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (package / "adapter" / "adapter_model.safetensors").stat().st_size < 2_000_000
    card = (package / "README.md").read_text()
    assert "## Intended use" in card and summary["curation"]["data_hash"] in card
    assert "beats baseline" in card


def test_predict_from_a_fresh_process(first_run) -> None:
    texts = [
        "LATIN CAPITAL LETTER B",
        "LATIN SMALL LETTER B",
        "DIGIT SEVEN",
        "QUESTION MARK",
    ]
    result = run_cli("predict", "models:/e2e-chars@champion", *texts, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["predictions"] == [
        "uppercase-letter",
        "lowercase-letter",
        "decimal-digit",
        "punctuation",
    ]


def test_worse_candidate_does_not_move_champion_then_promote_and_rollback(first_run) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import models, tracking

    folder, _ = first_run
    # Almost no training: the head stays near its random start.
    worse = adapt_pipeline(str(_spec(folder, "e2e-chars", epochs=0.2, learning_rate=1e-5)))
    assert worse["model_version"] == "2"
    assert worse["promoted"] is False
    assert worse["champion_version"] == "1"
    assert worse["metrics"]["f1_macro"] < 0.5
    assert any("does not beat champion" in reason for reason in worse["gate"])
    assert models.champion_version("e2e-chars") == "1"
    assert models.version_tags("e2e-chars", "2")["adaptflow.method"] == "lora"
    challenger = tracking.client().get_model_version_by_alias("e2e-chars", "challenger")
    assert str(challenger.version) == "2"

    promoted = run_cli("promote", "e2e-chars", "2", "--json")
    assert promoted.returncode == 0, promoted.stderr
    # the contract's keys, plus ``reason`` (None: a human promotion, no re-decision)
    assert json.loads(promoted.stdout) == {
        "name": "e2e-chars",
        "champion_version": "2",
        "previous": "1",
        "reason": None,
    }
    rolled = run_cli("rollback", "e2e-chars", "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout) == {
        "name": "e2e-chars",
        "champion_version": "1",
        "previous": "2",
    }
    assert models.champion_version("e2e-chars") == "1"
    again = run_cli("rollback", "e2e-chars")
    assert again.returncode == 2 and "no earlier champion recorded" in again.stderr


def test_data_problems_fail_cleanly_and_keep_the_quarantine(tmp_path: Path) -> None:
    data = tmp_path / "one-label.jsonl"
    data.write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "x"}\nbroken\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: one-label\ntask: classification\ndata: {{train: {data}}}\n")
    result = run_cli("run", str(spec), "--json")
    assert result.returncode == 2
    assert "a classifier needs at least 2 labels" in json.loads(result.stdout)["error"]
    assert "Traceback" not in result.stderr
    quarantine = Path(os.environ["ADAPTFLOW_HOME"]) / "curated" / "one-label" / "quarantine.jsonl"
    rows = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["line"], r["reason"], r["raw"]) for r in rows] == [
        (3, "invalid JSON: Expecting value", "broken")
    ]
