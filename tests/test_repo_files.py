"""The repo's pipeline definitions point at real stages, commands and flows."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_dvc_pipeline_parses_and_uses_adaptflow_commands() -> None:
    dvc = Path(sys.executable).parent / "dvc"
    dag = subprocess.run(
        [str(dvc), "dag", "--dot"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert dag.returncode == 0, dag.stderr
    assert '"dataset" -> "curate"' in dag.stdout and '"curate" -> "run"' in dag.stdout
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert (REPO / params["spec"]).is_file()
    assert "adaptflow curate ${spec} --json" in stages["curate"]["cmd"]
    assert "adaptflow run ${spec} --method ${method} --json" in stages["run"]["cmd"]


def test_prefect_deployment_entrypoints_are_our_flows() -> None:
    from adaptflow.spec import Method
    from flows import harvest, pipeline, rag, retrain

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = [d["name"] for d in config["deployments"]]
    assert names == [
        "adapt-pipeline",
        "adapt-ladder",
        "scheduled-retrain",
        "index-refresh",
        "harvest-and-retrain",
    ]
    modules = {
        "flows/pipeline.py": pipeline,
        "flows/rag.py": rag,
        "flows/retrain.py": retrain,
        "flows/harvest.py": harvest,
    }
    flow_names = {
        "adapt_pipeline": "adapt-pipeline",
        "index_refresh": "index-refresh",
        "scheduled_retrain": "scheduled-retrain",
        "harvest_and_retrain": "harvest-and-retrain",
    }
    for deployment in config["deployments"]:
        module, attribute = deployment["entrypoint"].split(":")
        flow = getattr(modules[module], attribute)
        assert flow.name == flow_names[attribute]
        assert set(deployment["parameters"]) <= set(flow.parameters.properties)
        if "spec_path" in deployment["parameters"]:
            assert (REPO / deployment["parameters"]["spec_path"]).is_file()
        assert deployment["parameters"].get("method", "auto") in Method.__args__
