"""`adapt-pipeline`'s parameters: ``spec_path`` or an inline ``spec``, and the form Prefect renders.

The schema checks use Prefect's own machinery: ``parameter_schema`` (what a deployment stores
and the UI renders as the run form) and the server's validator for a run's parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from adaptflow.errors import SpecError
from adaptflow.samples import write_tiny_icl_spec
from adaptflow.spec import Method, Task

SPEC_FIELDS = {
    "name", "task", "base_model", "method", "data", "needs", "budget", "target", "seed",
    "train", "curation", "retrieval", "search", "cpt", "forgetting",
}  # fmt: skip


def _schema() -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import adapt_pipeline

    return parameter_schema(adapt_pipeline).model_dump()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_parameter_schema_renders_the_spec_as_a_form() -> None:
    schema = _schema()
    props = schema["properties"]
    assert list(props) == ["spec_path", "method", "spec", "overrides"]
    assert [props[k]["position"] for k in props] == [0, 1, 2, 3]
    # dotted spec keys set over the spec's (adaptflow run --set, dvc exp run -S): a JSON object
    assert props["overrides"]["anyOf"][0]["type"] == "object"
    assert schema["required"] == []  # exactly-one-of is checked in the flow, with a message
    assert props["spec_path"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    # the method override is a select of the spec's method names, not free text
    assert props["method"]["anyOf"] == [
        {"enum": list(get_args(Method)), "type": "string"},
        {"type": "null"},
    ]
    assert props["spec"]["anyOf"] == [{"$ref": "#/definitions/Spec"}, {"type": "null"}]
    assert "relative data paths resolve against the flow's working directory" in " ".join(
        props["spec"]["description"].split()
    )

    definitions = schema["definitions"]
    spec = definitions["Spec"]
    assert set(spec["properties"]) >= SPEC_FIELDS
    assert spec["required"] == ["name", "task", "data"]
    assert spec["additionalProperties"] is False  # unknown keys stay errors
    assert spec["properties"]["task"]["enum"] == list(get_args(Task))  # a select in the form
    assert spec["properties"]["method"]["enum"] == list(get_args(Method))
    assert spec["properties"]["data"] == {"$ref": "#/definitions/DataSpec"}
    assert spec["properties"]["target"]["$ref"] == "#/definitions/Target"
    assert definitions["DataSpec"]["properties"]["train"]["anyOf"][0] == {
        "format": "path",
        "type": "string",
    }
    # The UI resolves refs under #/definitions only: each one must land there.
    refs = _refs(schema)
    assert refs and all(ref.startswith("#/definitions/") for ref in refs)
    assert {ref.removeprefix("#/definitions/") for ref in refs} <= set(definitions)
    assert "$defs" not in json.dumps(schema)


def test_the_server_accepts_what_the_form_sends_and_names_bad_fields() -> None:
    from prefect.utilities.schema_tools.validation import is_valid_schema, validate

    schema = _schema()
    is_valid_schema(schema)  # what a deployment's parameter_openapi_schema must pass
    inline = {"name": "x", "task": "classification", "data": {"train": "data/x.jsonl"}}
    assert validate({"spec_path": None, "method": None, "spec": inline}, schema) == []
    assert validate({"spec_path": "examples/unicode-categories/spec.yaml"}, schema) == []
    errors = validate({"spec": inline | {"task": "sorting", "colour": "red"}}, schema)
    assert errors  # an enum outside Task, an unknown key
    assert "sorting" in " ".join(e.message for e in errors)
    errors = validate({"spec_path": "s.yaml", "method": "lora-please"}, schema)
    assert [e.path[-1] for e in errors] == ["method"]  # a typed method is refused up front


def test_scheduled_retrain_offers_the_same_method_select() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.retrain import scheduled_retrain

    props = parameter_schema(scheduled_retrain).model_dump()["properties"]
    assert props["method"]["anyOf"][0]["enum"] == list(get_args(Method))
    assert list(props) == ["spec_path", "force", "method"]
    assert props["spec_path"]["type"] == "string" and props["force"]["default"] is False


def test_exactly_one_of_spec_path_and_spec() -> None:
    from flows.pipeline import adapt_pipeline

    with pytest.raises(SpecError, match="exactly one of spec_path .* and spec .*; neither given"):
        adapt_pipeline.fn()
    spec = {"name": "x", "task": "classification", "data": {}}
    with pytest.raises(SpecError, match="; both given. In the Prefect UI's run form, clear"):
        adapt_pipeline.fn("some/spec.yaml", spec=spec)  # type: ignore[arg-type]


def test_inline_spec_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import adapt_pipeline

    data = write_tiny_icl_spec(tmp_path, "x").parent / "data" / "chars.jsonl"
    monkeypatch.chdir(tmp_path)
    inline = {"name": "x", "task": "classification", "data": {"train": "data/chars.jsonl"}}
    # What the engine runs on a flow run's parameters before the flow body
    checked = adapt_pipeline.validate_parameters({"spec": inline})
    assert checked["spec"].data.train == data.resolve()
    assert checked["spec"].target.metric == "f1_macro"  # defaults filled as from a file
    with pytest.raises(ParameterTypeError) as caught:
        adapt_pipeline.validate_parameters(
            {"spec": inline | {"task": "sorting", "data": {"train": "missing.jsonl"}}}
        )
    message = str(caught.value)
    assert "spec.task: Input should be 'classification'" in message
    assert f"spec.data.train: Value error, not found: {tmp_path / 'missing.jsonl'}" in message


@pytest.mark.integration
def test_inline_spec_runs_like_the_spec_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast ICL spec, once as a file and once inline (relative data path, from its folder)."""
    from flows.pipeline import adapt_pipeline
    from registry import models

    path = write_tiny_icl_spec(tmp_path, "params-tiny")
    raw = yaml.safe_load(path.read_text())
    from_file = adapt_pipeline(str(path))
    monkeypatch.chdir(path.parent)  # the inline spec's data.train is relative: data/chars.jsonl
    inline = adapt_pipeline(spec=raw | {"name": "params-tiny-inline"})

    assert set(inline) == set(from_file)
    assert (inline["name"], from_file["name"]) == ("params-tiny-inline", "params-tiny")
    assert inline["method"] == from_file["method"] == "icl"
    assert inline["metrics"] == from_file["metrics"]  # same data, same seed
    counts = ("input", "kept", "quarantined", "train_examples", "eval_examples")
    assert [inline["curation"][k] for k in counts] == [from_file["curation"][k] for k in counts]
    assert [from_file["curation"][k] for k in counts] == [48, 48, 0, 36, 12]
    assert inline["model_version"] == from_file["model_version"] == "1"
    assert inline["promoted"] and models.champion_version("params-tiny-inline") == "1"
    tags = models.version_tags("params-tiny-inline", "1")
    assert tags["adaptflow.method"] == "icl" and tags["adaptflow.spec_hash"]


def test_overrides_apply_to_a_spec_file_and_to_an_inline_spec(tmp_path: Path) -> None:
    from adaptflow.samples import write_tiny_icl_spec
    from adaptflow.spec import load_spec
    from flows.pipeline import _the_spec

    path = write_tiny_icl_spec(tmp_path, "overrides")
    changes = {"train.learning_rate": 0.02, "target.min": 0.3}
    from_file = _the_spec(str(path), None, changes)
    assert (from_file.train.learning_rate, from_file.target.min) == (0.02, 0.3)
    inline = _the_spec(None, load_spec(path), changes)
    assert (inline.train.learning_rate, inline.target.min) == (0.02, 0.3)
    assert inline.data.train == from_file.data.train  # absolute already: cwd does not matter
    assert _the_spec(str(path), None, {}).train.learning_rate != 0.02
