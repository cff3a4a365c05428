"""``base_model: models:/NAME@ALIAS`` (or ``models:/NAME/N``): a run that starts from a version.

One LoRA version of ``lineage-lower`` (tiny-gpt, 1 epoch on 40 pairs) is trained by the real
pipeline and made champion; a second spec names ``models:/lineage-lower@champion`` as its base.
Its run materializes that version as a plain model folder (the adapter merged into tiny-gpt),
trains a new LoRA adapter on it, and registers version 2 with its lineage. Bad references fail
through the CLI with exit code 2 and one message naming base_model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import REPO, run_cli, write_jsonl

from adaptflow.errors import SpecError
from adaptflow.settings import load_settings

pytestmark = pytest.mark.integration

NAME = "lineage-lower"
ICL_NAME = "lineage-icl"
LOWERCASE = REPO / "examples" / "unicode-lowercase"
PROMPT = "Name the lowercase form of: LATIN CAPITAL LETTER Q"


def _spec(folder: Path, base_model: str, file: str) -> Path:
    spec = yaml.safe_load((LOWERCASE / "spec.yaml").read_text())
    pairs = folder / "pairs.jsonl"
    if not pairs.exists():
        lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:40]
        pairs.write_text("\n".join(lines) + "\n")
    spec |= {"name": NAME, "method": "lora", "base_model": base_model}
    spec["data"]["train"] = str(pairs)
    spec["target"] = {"metric": "rougeL"}
    spec["train"] |= {"epochs": 1, "learning_rate": 0.01, "batch_size": 8, "max_new_tokens": 8}
    path = folder / file
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Version 1 (LoRA on tiny-gpt, champion) and version 2 (LoRA on version 1)."""
    from flows.pipeline import adapt_pipeline
    from registry.models import promote

    folder = tmp_path_factory.mktemp("registered-base")
    first = adapt_pipeline(str(_spec(folder, "tiny-gpt", "first.yaml")))
    assert first["model_version"] == "1"
    if not first["promoted"]:  # one epoch may not beat the base; the test needs a champion
        promote(NAME, "1")
    child = _spec(folder, f"models:/{NAME}@champion", "child.yaml")
    second = adapt_pipeline(str(child))
    return {"first": first, "second": second, "child": child, "folder": folder}


def test_a_run_from_a_registered_version_tags_its_lineage(chain: dict[str, Any]) -> None:
    from registry.models import version_tags
    from registry.tracking import client

    first, second = chain["first"], chain["second"]
    assert second["model_version"] == "2"
    lineage = {
        "adaptflow.parent": f"{NAME}/1",
        "adaptflow.parent_run_id": first["mlflow_run_id"],
        "adaptflow.base_model_uri": f"models:/{NAME}@champion",
    }
    assert lineage.items() <= version_tags(NAME, "2").items()
    run = client().get_run(second["mlflow_run_id"])
    assert lineage.items() <= run.data.tags.items()
    assert not {"adaptflow.parent", "adaptflow.parent_run_id"} & version_tags(NAME, "1").keys()
    # the spec hash is that of the spec as written (naming models:/…), not of the folder
    from adaptflow.spec import load_spec

    assert run.data.tags["adaptflow.spec_hash"] == load_spec(chain["child"]).spec_hash()
    # the new package starts from the materialized folder, which is where the run started
    folder = load_settings().work_dir / "bases" / NAME / "1"
    manifest = json.loads(
        (Path(second["train"]["package_dir"]) / "adaptflow_model.json").read_text()
    )
    assert manifest["base_model"] == str(folder) and manifest["method"] == "lora"
    assert run.data.params["base_model"] == str(folder)


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    batch = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits


def test_the_materialized_folder_is_the_version_merged(
    chain: dict[str, Any], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from registry.models import BASE_RECORD, download_package, materialize_base
    from runtime.generate import Generator
    from runtime.loading import load_base, load_generator

    folder = load_settings().work_dir / "bases" / NAME / "1"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not (folder / "adapter_config.json").exists()  # a plain model, no PEFT left
    assert (
        json.loads((folder / BASE_RECORD).read_text())["run_id"]
        == (chain["first"]["mlflow_run_id"])
    )
    merged = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    package = download_package(f"models:/{NAME}/1", tmp_path / "v1")
    adapted, package_tokenizer, _ = load_generator(package)
    assert tokenizer.get_vocab() == package_tokenizer.get_vocab()
    ours, theirs = _logits(merged, tokenizer), _logits(adapted, package_tokenizer)
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    # prompted as a baseline is (Generator.from_base), it answers as version 1 does
    prompts = [PROMPT, "Name the lowercase form of: GREEK CAPITAL LETTER PI"]
    as_base = Generator.from_base(str(folder), 64, 8).predict(prompts)
    assert as_base == Generator.from_package(package).predict(prompts)
    # the adapter changed the model: agreeing with it is not agreeing with tiny-gpt
    untrained = _logits(load_base("tiny-gpt").eval(), package_tokenizer)
    assert float((untrained - theirs).abs().max()) > 1e-3

    # reused while it holds the same version (nothing rewritten); by number as by alias
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = materialize_base(f"models:/{NAME}/1", folder.parent.parent)
    assert again.folder == folder and (again.name, again.version) == (NAME, "1")
    assert (again.kind, again.method) == ("causal-lm", "lora")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    # the chain goes on: version 2 (an adapter over the folder of version 1) materializes too
    grandchild = materialize_base(f"models:/{NAME}/2", tmp_path / "bases")
    assert grandchild.lineage == {
        "adaptflow.parent": f"{NAME}/2",
        "adaptflow.parent_run_id": chain["second"]["mlflow_run_id"],
    }
    assert (grandchild.folder / "model.safetensors").is_file()


def test_the_baseline_of_the_child_is_the_parent_version(chain: dict[str, Any]) -> None:
    first, second = chain["first"], chain["second"]
    folder = load_settings().work_dir / "bases" / NAME / "1"
    assert second["baseline_method"] == f"base model '{folder}', no training"
    # the same data and seed: the same eval split, so version 1 scored on it is the baseline
    assert second["curation"]["data_hash"] == first["curation"]["data_hash"]
    baseline, parent = second["baseline"], first["metrics"]
    assert baseline.keys() == parent.keys()
    # Greedy answers, so every text metric, are the same (1 epoch leaves them at 0 here; the
    # answers themselves are compared in the test above). Perplexity comes from logits the
    # merge may change in the last bits (W + BA instead of Wx + B(Ax)): measured equal here,
    # it is held to float precision (perplexities are in the hundreds), and it differs from
    # tiny-gpt's, so this baseline really is version 1.
    for key, value in parent.items():
        if key == "perplexity":
            assert baseline[key] == pytest.approx(value, rel=1e-6)
        else:
            assert baseline[key] == pytest.approx(value, abs=1e-6), key
    assert first["baseline"]["perplexity"] != pytest.approx(baseline["perplexity"], rel=0.01)
    # the champion (version 1, served through MLflow) was re-scored on the same split too
    before = second["champion_metrics_before"]
    assert before is not None
    assert before["rougeL"] == pytest.approx(parent["rougeL"], abs=1e-6)


def test_recommend_reads_the_family_of_a_registered_version(chain: dict[str, Any]) -> None:
    done = run_cli("recommend", str(chain["child"]), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    ranking = {row["method"]: row for row in json.loads(done.stdout)["ranking"]}
    assert ranking["lora"]["runnable"] and ranking["full"]["runnable"]


def _icl_version(folder: Path) -> str:
    """Version 1 of ``lineage-icl``: an in-context (knn) classifier, no generative model."""
    from flows.pipeline import adapt_pipeline

    pairs = [("cats", "animal"), ("dogs", "animal"), ("bonds", "money"), ("stocks", "money")]
    rows = [
        {"id": str(i), "text": f"{word} w{i} v{i * 7} u{i * 13} t{i * 17}", "label": label}
        for i, (word, label) in enumerate(pairs * 6)
    ]
    write_jsonl(folder / "icl.jsonl", rows)
    spec = {
        "name": ICL_NAME,
        "task": "classification",
        "base_model": "minilm",
        "method": "icl",
        "data": {"train": str(folder / "icl.jsonl"), "label_field": "label"},
    }
    (folder / "icl.yaml").write_text(yaml.safe_dump(spec))
    return str(adapt_pipeline(str(folder / "icl.yaml"))["model_version"])


def test_bad_registered_bases_exit_2_with_one_message(
    chain: dict[str, Any], tmp_path: Path
) -> None:
    icl = _icl_version(tmp_path)
    cases = {
        "models:/nope@champion": "no registered model named 'nope'",
        f"models:/{NAME}/99": f"registered model '{NAME}' has no version 99",
        f"models:/{NAME}@nosuchalias": f"registered model '{NAME}' has no alias 'nosuchalias'",
        f"models:/{ICL_NAME}/{icl}": (
            f"base_model models:/{ICL_NAME}/{icl} is a knn-classifier package (method icl); "
            "method lora needs a generative (decoder or encoder-decoder) version"
        ),
        "models:/x/abc": "expected models:/NAME@ALIAS",  # the spec's error (more below)
    }
    from adaptflow.spec import load_spec
    from flows.steps import with_registered_base

    # through the command once (exit 2, the JSON error, no traceback); the rest in-process
    # (the same SpecError the command maps to exit 2), a process start each is 6 s
    reference, expected = next(iter(cases.items()))
    done = run_cli("run", str(_spec(tmp_path, reference, "bad.yaml")), "--json")
    assert done.returncode == 2, (reference, done.stderr[-2000:])
    error = json.loads(done.stdout)["error"]
    assert expected in error and "base_model" in error, (reference, error)
    assert "Traceback" not in done.stderr, reference
    for reference, expected in list(cases.items())[1:]:
        with pytest.raises(SpecError) as raised:
            with_registered_base(load_spec(_spec(tmp_path, reference, "bad.yaml")), "lora")
        assert expected in str(raised.value) and "base_model" in str(raised.value), reference
    assert not (load_settings().work_dir / "bases" / ICL_NAME).exists()  # nothing left behind


def test_malformed_references_are_spec_errors_naming_the_field(tmp_path: Path) -> None:
    from adaptflow.spec import load_spec
    from flows.steps import with_registered_base

    malformed = ("models:/x@", "models:/@champion", "models:/x/0", "models:/x", "models:/a/b/c")
    for reference in malformed:
        with pytest.raises(SpecError, match=r"base_model: '.*' names no registered model"):
            load_spec(_spec(tmp_path, reference, "malformed.yaml"))
    for reference in ("models:/x@champion", "models:/x/3"):
        spec = load_spec(_spec(tmp_path, reference, "fine.yaml"))
        assert spec.base_model == reference and spec.lineage == {}
    plain = load_spec(_spec(tmp_path, "tiny-gpt", "plain.yaml"))
    assert with_registered_base(plain, "lora") is plain


def test_dpo_from_the_sft_champion_is_gated_and_registered_with_its_lineage(
    chain: dict[str, Any],
) -> None:
    """SFT champion -> DPO: preference pairs curated, tuned through TRL, gated, version 3.

    Chosen: the character's name as Unicode spells it; rejected: the same name in lower case,
    which the parent version finds more likely on every held-out pair. The gate compares
    preference accuracy with the parent version (the baseline and the champion, both scored on
    the same held-out pairs).
    """
    from flows.pipeline import adapt_pipeline
    from registry.models import version_tags

    folder: Path = chain["folder"]
    lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:100]
    rows = []
    for line in lines:
        pair = json.loads(line)
        answer = pair["target"]
        rows.append({"prompt": pair["text"], "chosen": answer, "rejected": answer.lower()})
    rows.append({"prompt": "same", "chosen": "a  b", "rejected": "a b"})  # equal once normalised
    write_jsonl(folder / "prefs.jsonl", rows)
    spec = {
        "name": NAME,
        "task": "instruction",
        "base_model": f"models:/{NAME}@champion",
        "method": "dpo",
        "data": {"train": str(folder / "prefs.jsonl"), "format": "preference"},
        "curation": {"decontaminate": {"ngram": 12}},
        "train": {"epochs": 4, "learning_rate": 0.01, "batch_size": 8, "max_new_tokens": 8},
    }
    (folder / "dpo.yaml").write_text(yaml.safe_dump(spec))
    result = adapt_pipeline(str(folder / "dpo.yaml"))
    assert result["method"] == "dpo" and result["model_version"] == "3"
    curation = result["curation"]
    assert curation["input"] == 101 and curation["dropped"].get("chosen equals rejected") == 1
    metrics, baseline = result["metrics"], result["baseline"]
    assert baseline["reward_margin"] == 0.0  # the parent is its own reference
    assert baseline["preference_accuracy"] == pytest.approx(0.0)
    assert metrics["preference_accuracy"] >= 0.9
    assert metrics["reward_margin"] > 0.5
    assert result["promoted"] and result["champion_version"] == "3"
    tags = version_tags(NAME, "3")
    champion = chain["second"]["model_version"] if chain["second"]["promoted"] else "1"
    assert tags["adaptflow.parent"] == f"{NAME}/{champion}"
    assert tags["adaptflow.method"] == "dpo"
