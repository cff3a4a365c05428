"""The escalation ladder and ``method: auto`` end to end (real Prefect, MLflow, DVC, training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "examples"


def _spec(folder: Path, example: str, name: str, target: float, **changes) -> Path:
    spec = yaml.safe_load((EXAMPLES / example / "spec.yaml").read_text())
    spec["name"] = name
    spec["data"]["train"] = str(EXAMPLES / example / spec["data"]["train"])
    spec["target"]["min"] = target
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            spec.setdefault(section, {})[field] = value
        else:
            spec[section] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_ladder_stops_at_the_first_rung_when_the_vote_is_enough(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import models, tracking

    # stdlib docstrings: the nearest-example vote reaches macro-F1 ~0.955, above a 0.90 target
    summary = adapt_pipeline(str(_spec(tmp_path, "stdlib-topics", "ladder-first", 0.90)), "ladder")
    ladder = summary["ladder"]
    assert ladder["planned"] == ["icl", "lora"]
    assert [r["method"] for r in ladder["rungs"]] == ["icl"]
    assert ladder["winner"] == "icl" and ladder["target_met"] and ladder["stopped_early"]
    assert summary["method"] == "icl"
    assert summary["metrics"]["f1_macro"] == pytest.approx(0.955, abs=0.02)
    assert summary["baseline_method"] == "majority class ('math')"  # commonest in train
    assert summary["promoted"] is True and summary["champion_version"] == "1"

    client = tracking.client()
    child = client.get_run(ladder["winner_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == summary["mlflow_run_id"]
    assert child.data.metrics["train.icl_k"] == summary["train"]["k"]
    assert summary["train"]["k"] in (1, 3, 5, 7, 9, 11, 15, 21, 31)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["adaptflow.ladder_winner"] == "icl"
    assert parent.data.metrics["ladder.icl.f1_macro"] == pytest.approx(
        summary["metrics"]["f1_macro"]
    )
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"])}
    assert {"ladder.md", "ladder.png", "advice.json", "report.md"} <= artifacts
    assert models.version_tags("ladder-first", "1")["adaptflow.method"] == "icl"

    # The ICL candidate is a real pyfunc: it serves the same predictions the evaluation saw.
    model = models.load_model("models:/ladder-first@champion")
    eval_rows = [
        json.loads(line) for line in Path(summary["curation"]["eval_file"]).read_text().splitlines()
    ]
    predicted = list(model.predict([row["text"] for row in eval_rows]))
    accuracy = sum(p == row["label"] for p, row in zip(predicted, eval_rows, strict=True))
    assert accuracy / len(eval_rows) == pytest.approx(summary["metrics"]["accuracy"])


@pytest.mark.slow  # climbing is also tested on a generative ladder (test_generative.py)
def test_ladder_climbs_when_the_target_is_higher(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import tracking

    # Unicode names: the vote gets ~0.91, LoRA ~0.94; a 0.92 target needs the second rung.
    summary = adapt_pipeline(
        str(_spec(tmp_path, "unicode-categories", "ladder-climb", 0.92)), "ladder"
    )
    ladder = summary["ladder"]
    icl, lora = ladder["rungs"]
    assert (icl["method"], lora["method"]) == ("icl", "lora")
    assert icl["metrics"]["f1_macro"] == pytest.approx(0.9095, abs=0.02)
    assert icl["met_target"] is False and lora["met_target"] is True
    assert lora["metrics"]["f1_macro"] == pytest.approx(0.936, abs=0.02)
    assert ladder["winner"] == "lora" and ladder["target_met"] and not ladder["stopped_early"]
    # the ICL rung, scored on the same split, is the baseline the winner had to beat
    assert summary["baseline"] == icl["metrics"]
    assert summary["baseline_method"] == "the ladder's icl rung"
    assert summary["promoted"] is True
    assert any("beats baseline (the ladder's icl rung)" in r for r in summary["gate"])
    # both rungs are child runs of the parent, with estimated costs in the comparison
    client = tracking.client()
    for rung in ladder["rungs"]:
        run = client.get_run(rung["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == summary["mlflow_run_id"]
        assert run.info.status == "FINISHED"
    assert lora["estimate"]["train_gpu_hours"] > icl["estimate"]["train_gpu_hours"]
    table = Path(ladder["table"]).read_text()
    assert "| 1 | icl |" in table and "| 2 | lora |" in table


def test_no_rung_meets_the_target_registers_a_challenger_and_exits_4(tmp_path: Path) -> None:
    from registry import models, tracking

    # a search space runs on each trainable rung (here: one trial, the default rate)
    space = {"space": {"learning_rate": [0.001]}, "max_trials": 1}
    spec = _spec(tmp_path, "stdlib-topics", "ladder-miss", 0.99, train__epochs=1, search=space)
    # every third docstring: the same verdicts, a third of the training time
    topics = (EXAMPLES / "stdlib-topics" / "data" / "topics.jsonl").read_text()
    (tmp_path / "topics.jsonl").write_text("".join(topics.splitlines(True)[::3]))
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["train"] = str(tmp_path / "topics.jsonl")
    spec.write_text(yaml.safe_dump(raw))
    result = run_cli("run", str(spec), "--ladder", "--json")
    assert result.returncode == 4, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    ladder = summary["ladder"]
    assert [r["method"] for r in ladder["rungs"]] == ["icl", "lora"]
    assert not any(r["met_target"] for r in ladder["rungs"])
    assert ladder["target_met"] is False and summary["target_met"] is False
    best = max(ladder["rungs"], key=lambda r: r["metrics"]["f1_macro"])
    assert ladder["winner"] == best["method"] == "icl"  # one epoch of LoRA is far behind
    assert summary["promoted"] is False
    assert summary["gate"][0].startswith("no rung met the target f1_macro 0.99")
    assert models.champion_version("ladder-miss") is None
    challenger = tracking.client().get_model_version_by_alias("ladder-miss", "challenger")
    assert str(challenger.version) == summary["model_version"] == "1"
    assert "no rung met the target" in result.stderr
    assert "Traceback" not in result.stderr
    client = tracking.client()
    lora_run = ladder["rungs"][1]["mlflow_run_id"]
    assert client.get_run(lora_run).data.metrics["search.best.learning_rate"] == 0.001
    trials = client.search_runs(
        [client.get_run(lora_run).info.experiment_id],
        f"tags.mlflow.parentRunId = '{lora_run}'",
    )
    assert len(trials) == 1  # the rung's trial, a child of the rung's run


def test_auto_runs_the_advisors_pick(tmp_path: Path) -> None:
    # every fourth docstring (191): the advisor's pick is the same, and the run is short
    topics = (EXAMPLES / "stdlib-topics" / "data" / "topics.jsonl").read_text()
    (tmp_path / "topics.jsonl").write_text("".join(topics.splitlines(True)[::4]))
    spec = _spec(tmp_path, "stdlib-topics", "auto-pick", 0.9, needs={"custom_behavior": False})
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["train"] = str(tmp_path / "topics.jsonl")
    spec.write_text(yaml.safe_dump(raw))
    advice = run_cli("recommend", str(spec), "--json")
    assert advice.returncode == 0, advice.stderr
    assert json.loads(advice.stdout)["recommended"] == "icl"
    result = run_cli("run", str(spec), "--method", "auto", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["method"] == "icl"
    assert summary["recommendation"]["recommended_runnable"] == "icl"
    assert summary["ladder"] is None
