"""The base model is resolved before any work; its family decides what can run (issue 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_jsonl, write_knowledge

from adaptflow.catalogue import base_family
from adaptflow.errors import ServiceError, SpecError
from adaptflow.methods import check_method, resolve_method, runnable_methods
from adaptflow.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]


def _saved_config(folder: Path, kind: str) -> Path:
    from transformers import BertConfig, GPT2Config, T5Config

    config = {"bert": BertConfig, "gpt2": GPT2Config, "t5": T5Config}[kind]()
    config.save_pretrained(str(folder))
    # the family is read from the config alone; a folder must also hold a tokenizer's files
    # (test_early_checks), which is all base_family looks at
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_the_family_comes_from_the_catalogue_or_the_config_alone(tmp_path: Path) -> None:
    assert [base_family(a) for a in ("minilm", "tiny-gpt", "tiny-t5")] == [
        "encoder", "decoder", "encoder-decoder",
    ]  # fmt: skip
    assert not (tmp_path / "models").exists()  # nothing was built to answer
    for kind, family in (("bert", "encoder"), ("gpt2", "decoder"), ("t5", "encoder-decoder")):
        assert base_family(str(_saved_config(tmp_path / kind, kind))) == family
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"base model '.*empty' has no readable config"):
        base_family(str(tmp_path / "empty"))


def test_an_id_the_hub_cannot_resolve_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ServiceError, match="'no-such-org/no-such-model' is not in the local"):
        base_family("no-such-org/no-such-model")
    with pytest.raises(SpecError, match="unknown base model 'not an id'"):
        base_family("not an id")


def test_an_encoder_base_runs_no_generative_method_and_auto_says_none_fits() -> None:
    assert runnable_methods("language-modeling", "encoder") == ()
    assert runnable_methods("instruction", "encoder") == ("reward",)  # a judge, no generator
    assert runnable_methods("language-modeling", "decoder") == ("cpt",)
    assert runnable_methods("classification", "encoder") == (
        "icl",
        "lora",
        "dora",
        "ia3",
        "prune",
        "distill",
    )
    with pytest.raises(SpecError, match="needs a decoder or encoder-decoder base model.*auto"):
        resolve_method("language-modeling", "auto", {"recommended_runnable": "cpt"}, "encoder")
    with pytest.raises(SpecError, match="the spec's base_model is an encoder"):
        check_method("instruction", "lora", "encoder")
    assert resolve_method("language-modeling", "auto", {"recommended_runnable": "cpt"}, "decoder")


def test_auto_on_an_encoder_language_model_is_refused_at_spec_time(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i} about tides"} for i in range(30)])
    raw = {
        "name": "lm-on-encoder", "task": "language-modeling", "base_model": "minilm",
        "data": {"train": "docs.jsonl"}, "cpt": {"replay": 0}, "method": "auto",
    }  # fmt: skip
    with pytest.raises(SpecError, match="which needs a decoder; base model 'minilm' is an encoder"):
        parse_spec(raw, base_dir=tmp_path)


def test_questions_are_needed_where_they_are_used(tmp_path: Path) -> None:
    write_knowledge(tmp_path / "kb")
    raw = {"name": "kb-only", "task": "retrieval-qa", "data": {"knowledge": "kb"}}
    spec = parse_spec(raw, base_dir=tmp_path)  # recommend and index take it as it is
    with pytest.raises(SpecError, match="'retrieval-qa' needs data.questions to curate and to run"):
        spec.require_questions()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"ADAPTFLOW_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "adaptflow", *args], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=300,
    )  # fmt: skip


def test_run_fails_in_seconds_on_an_unresolvable_base_or_missing_questions(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)])
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: typo\ntask: classification\nbase_model: sentence-transformrs/all-MiniLM\n"
        "data: {train: t.jsonl}\nmethod: lora\n"
    )
    result = _cli(tmp_path, "run", str(spec), "--json")
    assert result.returncode == 3, result.stderr[-2000:]
    error = json.loads(result.stdout)["error"]
    assert error.startswith("base model 'sentence-transformrs/all-MiniLM' is not in the local")
    assert "Traceback" not in result.stderr
    curated = tmp_path / "home" / "curated"  # the home's folders exist; no data was curated
    assert not curated.exists() or not any(curated.iterdir())

    write_knowledge(tmp_path / "kb")
    spec.write_text("name: kb-only\ntask: retrieval-qa\ndata: {knowledge: kb}\n")
    result = _cli(tmp_path, "run", str(spec), "--json")
    assert result.returncode == 2
    assert "needs data.questions to curate and to run" in json.loads(result.stdout)["error"]
