"""A spec mistake about the model stops a run before curation, not minutes into it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli, write_jsonl

from adaptflow.errors import SpecError


def _spec(folder: Path, name: str, base: str, task: str, method: str, extra: str) -> Path:
    rows = [{"id": str(i), "text": f"Say {i}", "target": f"{i}", "label": "a"} for i in range(8)]
    write_jsonl(folder / "train.jsonl", rows)
    fields = "" if task == "classification" else "  target_field: target\n"
    label = "  label_field: label\n" if task == "classification" else ""
    path = folder / "spec.yaml"
    path.write_text(
        f"name: {name}\ntask: {task}\nbase_model: {base}\nmethod: {method}\n"
        f"data:\n  train: train.jsonl\n{fields}{label}{extra}"
    )
    return path


def test_a_target_module_the_base_lacks_stops_the_run_before_curation(
    tmp_path: Path, adaptflow_home: Path
) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import adapt_pipeline

    spec = _spec(tmp_path, "early-targets", "tiny-gpt", "instruction", "lora",
                 "train:\n  target_modules: [q_proj, v_proj]\n")  # fmt: skip
    with pytest.raises(SpecError) as raised:
        adapt_pipeline(spec_path=str(spec))
    error = str(raised.value)
    # tiny-gpt is GPT-2 shaped: its attention is one fused c_attn (Conv1D)
    assert error.startswith("train.target_modules: 'q_proj', 'v_proj' match no layer of this "
                            "'gpt2' model")  # fmt: skip
    assert "c_attn" in error
    # stopped before anything ran: no MLflow run, no curated data
    assert MlflowClient().get_experiment_by_name("early-targets") is None
    assert not (adaptflow_home / "curated" / "early-targets").exists()


@pytest.mark.parametrize(
    ("base", "task", "method", "extra", "message"),
    [
        # the reward model's adapter (align.adapter) is what target_modules names
        ("tiny-gpt", "instruction", "reward", "align:\n  adapter: dora\n", "'wq' matches no layer"),
        ("minilm", "classification", "lora", "", "'wq' matches no layer of this 'bert' model"),
    ],
)
def test_early_check_covers_adapters_of_every_kind(
    tmp_path: Path, base: str, task: str, method: str, extra: str, message: str
) -> None:
    from adaptflow.catalogue import base_family
    from adaptflow.spec import load_spec
    from flows.pipeline import adapter_of
    from tasks.train.methods import check_target_modules

    spec = load_spec(_spec(tmp_path, "early", base, task, method,
                           extra + "train:\n  target_modules: [wq]\n"))  # fmt: skip
    adapter = adapter_of(spec, method)
    with pytest.raises(SpecError, match=message):
        check_target_modules(spec.base_model, base_family(base), adapter, ["wq"])
    # names the base has, or all-linear, or an adapter without target modules: no error
    check_target_modules(spec.base_model, base_family(base), adapter, "all-linear")
    check_target_modules(spec.base_model, base_family(base), "ia3", ["wq"])
    real = ["c_attn"] if base == "tiny-gpt" else ["query", "value"]
    check_target_modules(spec.base_model, base_family(base), adapter, real)


def test_a_model_folder_without_a_tokenizer_is_refused_by_name(tmp_path: Path) -> None:
    from adaptflow.catalogue import base_family
    from adaptflow.tiny_families import build_family

    folder = build_family("qwen2", tmp_path / "qwen2")
    assert base_family(str(folder)) == "decoder"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(SpecError) as raised:
        base_family(str(folder))
    assert str(raised.value).startswith(f"base_model: {folder} holds a model but no tokenizer")
    assert f"tokenizer.save_pretrained('{folder}')" in str(raised.value)


def test_the_cli_stops_a_target_module_typo_before_any_flow_run(tmp_path: Path) -> None:
    import json
    import os
    import sqlite3

    from flows.embedded import _default_database

    spec = _spec(tmp_path, "early-cli", "minilm", "classification", "lora",
                 "train:\n  target_modules: [wq]\n")  # fmt: skip
    done = run_cli("run", str(spec), "--json")
    assert done.returncode == 2, done.stderr[-2000:]
    error = json.loads(done.stdout)
    assert error["kind"] == "SpecError"
    assert error["error"].startswith("train.target_modules: 'wq' matches no layer of this 'bert'")
    # checked by the CLI before it waited for the embedded Prefect server: no flow run at all
    # (the flow's own check, which the UI's runs still get, fails a run it has started)
    database = _default_database(dict(os.environ))
    assert database is not None and database.is_file()
    with sqlite3.connect(database) as db:
        query = "SELECT count(*) FROM flow_run WHERE parameters LIKE ?"
        assert db.execute(query, (f"%{spec}%",)).fetchone() == (0,)
