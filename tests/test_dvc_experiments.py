"""``dvc exp run -S train.learning_rate=…`` over ``adaptflow run --set``, and ``--set`` itself.

A DVC project of its own (git + DVC in a temporary folder) with the stage the repository's
``dvc.yaml`` uses: params.yaml's train block is set over the spec's with ``--set``, the run's
``--json`` summary is the stage's metrics file, and the MLflow run carries the experiment's name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

from adaptflow.errors import SpecError
from adaptflow.samples import write_tiny_icl_spec
from adaptflow.spec import apply_overrides, load_spec, parse_overrides

BIN = Path(sys.executable).parent


def test_set_parses_yaml_values_and_names_what_is_wrong(tmp_path: Path) -> None:
    assert parse_overrides(["train.learning_rate=3e-4", "train.epochs=2", "method=lora"]) == {
        "train.learning_rate": 0.0003,
        "train.epochs": 2,
        "method": "lora",
    }
    assert parse_overrides(["search.space.lora_r=[4, 8]", "target.min=null"]) == {
        "search.space.lora_r": [4, 8],
        "target.min": None,
    }
    for item, reason in (("train.epochs", "expected KEY=VALUE"), ("a..b=1", "expected KEY=VALUE"),
                         ("train.epochs=[", "the value is not YAML")):  # fmt: skip
        with pytest.raises(SpecError, match=reason):
            parse_overrides([item])
    assert apply_overrides({"train": {"epochs": 3}}, {"train.learning_rate": 0.1}) == {
        "train": {"epochs": 3, "learning_rate": 0.1}
    }
    with pytest.raises(SpecError, match="'name' is not a mapping"):
        apply_overrides({"name": "x"}, {"name.first": 1})
    spec = write_tiny_icl_spec(tmp_path, "set-spec")
    loaded = load_spec(spec, {"train.learning_rate": 0.01, "target.min": 0.2})
    assert loaded.train.learning_rate == 0.01 and loaded.target.min == 0.2
    assert loaded.spec_hash() != load_spec(spec).spec_hash()  # the run says it was changed
    # a typo is the spec's own error, naming the key; on the command line, exit 2
    with pytest.raises(SpecError, match=r"train\.learnin_rate: unknown key"):
        load_spec(spec, {"train.learnin_rate": 0.01})
    done = run_cli("run", str(spec), "--set", "train.epochs=-1", "--json")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "train.epochs" in said and "Traceback" not in said


def _project(folder: Path) -> dict[str, str]:
    """A git + DVC project with a one-stage pipeline around a tiny LoRA spec."""
    spec = write_tiny_icl_spec(folder, "dvc-exp")
    raw = yaml.safe_load(spec.read_text())
    raw |= {
        "method": "lora",
        "train": {"epochs": 1, "learning_rate": 0.003, "batch_size": 16, "max_length": 32},
    }
    spec.write_text(yaml.safe_dump(raw))
    (folder / "params.yaml").write_text(
        yaml.safe_dump({"spec": "spec.yaml", "train": {"learning_rate": 0.003, "epochs": 1}})
    )
    (folder / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "run": {
                        "cmd": "adaptflow run ${spec} --json --set "
                        "train.learning_rate=${train.learning_rate} "
                        "--set train.epochs=${train.epochs} > run.json",
                        "deps": ["${spec}", "data/chars.jsonl"],
                        "params": ["train.learning_rate", "train.epochs"],
                        "metrics": [{"run.json": {"cache": False}}],
                    }
                }
            }
        )
    )
    env = os.environ.copy() | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "spec"],
    ):
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    return env


@pytest.mark.integration
def test_dvc_exp_run_sets_the_learning_rate_and_links_the_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    env = _project(tmp_path)
    done = subprocess.run(
        [str(BIN / "dvc"), "exp", "run", "-S", "train.learning_rate=0.001", "-n", "lr-small"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    shown = subprocess.run(
        [str(BIN / "dvc"), "metrics", "show", "--json"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads(shown.stdout)[""]["data"]["run.json"]["data"]
    run = MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.data.params["train.learning_rate"] == "0.001"  # the experiment's, not the spec's
    assert run.data.params["train.epochs"] == "1.0"
    assert run.data.tags["adaptflow.dvc.exp_name"] == "lr-small"
    assert run.data.metrics["f1_macro"] == pytest.approx(metrics["metrics"]["f1_macro"])
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["learning_rate"] == 0.001
