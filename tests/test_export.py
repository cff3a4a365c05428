"""Export: adapters merged into their base, int8 packages, the report and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_cli, write_jsonl

from adaptflow.errors import AdaptflowError
from runtime.generate import Generator
from runtime.int8 import INT8_WEIGHTS, load_int8, quantize_int8, save_int8
from runtime.loading import load_base, load_base_tokenizer
from runtime.manifest import PackageManifest, auto_class
from runtime.prompts import render_prompt
from tasks.train.export import export_package
from tasks.train.peft import Hyper

PROMPTS = [
    "Name the lowercase form of: LATIN CAPITAL LETTER Q",
    "Name the lowercase form of: GREEK CAPITAL LETTER PI",
    "What does len() return?",
    "Repeat: item 7 of the list",
    "Summarise: the fox jumps over the dog.",
]
METRICS = {"exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "perplexity"}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA package trained briefly on tiny-gpt, and an untrained prefix-tuning one."""
    from tasks.train.sft import save, setup, train_generator

    root = tmp_path_factory.mktemp("export")
    rows = [
        {"id": str(i), "text": f"Repeat: item {i} of the list", "target": f"item {i}"}
        for i in range(32)
    ]
    data = write_jsonl(root / "train.jsonl", rows)
    # a high learning rate, so that four steps move the LoRA weights well away from zero
    hyper = Hyper(epochs=1, batch_size=8, learning_rate=1e-2, max_length=64, max_new_tokens=16)
    train_generator(data, "tiny-gpt", "lora", hyper, root / "lora", root / "checkpoints")
    model, tokenizer, family = setup("tiny-gpt", "prefix", Hyper(virtual_tokens=4))
    save(model, tokenizer, root / "prefix", family, "prefix", "tiny-gpt", Hyper())
    return {"lora": root / "lora", "prefix": root / "prefix"}


def _logits(generator: Generator, texts: list[str]) -> torch.Tensor:
    tokenizer = generator.tokenizer
    tokenizer.padding_side = "right"
    prompts = [render_prompt(tokenizer, t) for t in texts]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        logits = generator.model(**batch).logits
    return logits[batch["attention_mask"].bool()]


def test_merged_lora_package_answers_like_base_plus_adapter(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    report = export_package(packages["lora"], out)

    assert (out / "weights" / "model.safetensors").is_file() and not (out / "adapter").exists()
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    manifest = PackageManifest.read(out)
    assert manifest.method == "lora" and manifest.kind == "causal-lm"
    assert manifest.options["merged_from"] == "adapter" and "quantize" not in manifest.options
    adapter, merged = Generator.from_package(packages["lora"]), Generator.from_package(out)
    assert type(merged.model).__name__ == "GPT2LMHeadModel"  # no peft wrapper left
    assert merged.predict(PROMPTS) == adapter.predict(PROMPTS)
    difference = (_logits(merged, PROMPTS) - _logits(adapter, PROMPTS)).abs().max()
    assert float(difference) < 1e-4
    # the adapter did change the model, so agreeing with it is not agreeing with the base
    base = Generator(load_base("tiny-gpt"), load_base_tokenizer("tiny-gpt"), "decoder", 64, 16)
    assert float((_logits(base, PROMPTS) - _logits(adapter, PROMPTS)).abs().max()) > 1e-2

    assert report["merged_from"] == "adapter" and report["quantization"] is None
    assert report["merge"]["prompts"] == 5 and report["merge"]["greedy_agree"] == 5
    assert report["merge"]["max_abs_logit_diff"] < 1e-4
    assert report["size_bytes"]["fp32"] == sum(
        p.stat().st_size for p in out.rglob("*") if p.is_file()
    )
    assert report["latency_ms"] is None and report["metrics"] is None

    # a full-weights package is exported as it is, byte for byte
    again = tmp_path / "again"
    copied = export_package(out, again)
    assert copied["merged_from"] is None and copied["merge"] is None
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_adapter_over_a_bundled_base_merges_without_it(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    import shutil
    from dataclasses import replace

    from adaptflow.catalogue import resolve_base_model

    # a CPT stage's adapter package: the base travels in base/, its reference is gone
    bundled = tmp_path / "bundled"
    shutil.copytree(packages["lora"], bundled)
    shutil.copytree(resolve_base_model("tiny-gpt"), bundled / "base")
    manifest = PackageManifest.read(bundled)
    replace(manifest, base_model=str(tmp_path / "gone")).write(bundled)

    report = export_package(bundled, tmp_path / "out")
    assert report["merge"]["greedy_agree"] == 5 and report["merge"]["max_abs_logit_diff"] < 1e-4
    assert report["size_bytes"]["base"] == (bundled / "base" / "model.safetensors").stat().st_size
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adaptflow_model.json",
        "tokenizer",
        "weights",
    ]
    merged = Generator.from_package(tmp_path / "out")
    assert merged.predict(PROMPTS) == Generator.from_package(packages["lora"]).predict(PROMPTS)


def test_virtual_token_adapters_cannot_be_merged(packages: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(AdaptflowError, match=r"method 'prefix' \(PREFIX_TUNING\) adds virtual"):
        export_package(packages["prefix"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_output(packages: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(AdaptflowError, match="is not empty"):
        export_package(packages["lora"], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# tiny-t5's round trip is the same code on the other family: in make test-all, not make test
@pytest.mark.parametrize("base", ["tiny-gpt", pytest.param("tiny-t5", marks=pytest.mark.slow)])
def test_int8_safetensors_round_trip_is_exact(base: str, tmp_path: Path) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    family = "decoder" if base == "tiny-gpt" else "encoder-decoder"
    model = load_base(base).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 41]])
    inputs = {"input_ids": ids} | ({"decoder_input_ids": ids[:, :3]} if family != "decoder" else {})
    with torch.inference_mode():
        fp32 = model(**inputs).logits
    report = quantize_int8(model)
    with torch.inference_mode():
        quantized = model(**inputs).logits
    save_int8(model, tmp_path)
    loaded = load_int8(tmp_path, auto_class(family)).eval()
    with torch.inference_mode():
        reloaded = loaded(**inputs).logits

    assert torch.equal(reloaded, quantized)  # the saved integers and scales are the model
    assert 0 < float((quantized - fp32).abs().max()) < 0.5  # int8 is close to fp32, not equal
    layers = [m for m in loaded.modules() if isinstance(m, DynamicLinear)]
    assert len(layers) == report["linear_layers"]
    # GPT-2's Conv1D layers become linear first (4 per block); T5's are linear already.
    # Either way the tied output head stays fp32.
    assert report["conv1d_converted"] == (16 if base == "tiny-gpt" else 0)
    assert report["linear_layers"] == (16 if base == "tiny-gpt" else 32)
    assert report["kept_fp32"] == ["lm_head: tied to the input embeddings"]
    assert isinstance(loaded.lm_head, torch.nn.Linear)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "generation_config.json", INT8_WEIGHTS]
    )


def _rows_answered_by(package: Path) -> list[dict[str, Any]]:
    """Eight eval rows: four targets are the package's own answers, four no model gives."""
    texts = [f"Repeat: item {i} of the list" for i in range(40, 48)]
    answers = Generator.from_package(package).predict(texts[:4])
    return [
        {"id": str(i), "text": text, "target": answers[i] if i < 4 else "no model says this"}
        for i, text in enumerate(texts)
    ]


def test_int8_export_reports_size_latency_and_metric_change(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    rows = _rows_answered_by(packages["lora"])
    out = tmp_path / "int8"
    report = export_package(packages["lora"], out, int8=True, eval_rows=rows, repeats=1)

    assert set(report) == {
        "source",
        "output",
        "kind",
        "method",
        "merged_from",
        "merge",
        "quantization",
        "size_bytes",
        "latency_ms",
        "metrics",
    }
    sizes = report["size_bytes"]
    assert set(sizes) == {"source", "base", "fp32", "int8"}
    assert sizes["int8"] < sizes["fp32"]
    assert sizes["int8"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert sizes["fp32"] > sizes["base"] > sizes["source"]  # merged = base + tokenizer
    quant = report["quantization"]
    assert quant["params_int8"] + quant["params_fp32"] == 1_383_168  # tiny-gpt, all of it
    assert quant["prompts"] == 5 and 0 < quant["max_abs_logit_diff"] < 0.5
    latency = report["latency_ms"]
    assert set(latency) == {"fp32", "int8", "new_tokens", "prompts", "repeats", "threads"}
    assert latency["fp32"] > 0 and latency["int8"] > 0

    metrics = report["metrics"]
    assert set(metrics) == {"examples", "source", "fp32", "int8", "change"}
    assert metrics["examples"] == 8
    assert all(set(metrics[k]) == METRICS for k in ("source", "fp32", "int8", "change"))
    for key in METRICS:
        assert metrics["change"][key] == metrics["int8"][key] - metrics["fp32"][key]
        assert metrics["fp32"][key] == pytest.approx(metrics["source"][key], rel=1e-4)
    # half the targets are the adapter's own answers, which the merged model repeats exactly
    assert metrics["fp32"]["exact_match"] == pytest.approx(0.5)

    # the int8 package: safetensors only, loads and answers through the usual path
    manifest = PackageManifest.read(out)
    assert manifest.options["quantize"] == "int8" and manifest.options["merged_from"] == "adapter"
    assert (out / "weights" / INT8_WEIGHTS).is_file()
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    served = Generator.from_package(out)
    answers = served.predict([row["text"] for row in rows])
    exact = sum(a == row["target"] for a, row in zip(answers, rows, strict=True)) / len(rows)
    assert exact == pytest.approx(metrics["int8"]["exact_match"])


def test_cli_exports_a_registered_version_as_json(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    from adaptflow.errors import RegistryError
    from registry.models import download_package, log_model_package, register_candidate
    from registry.tracking import start_run

    run_id = start_run("export-test", "lora", {})
    uri = log_model_package(run_id, packages["lora"], "# export test\n")
    version = register_candidate("export-test", uri, run_id, {"method": "lora"}, "test")
    # a version's package comes back as it was logged
    fetched = download_package(f"models:/export-test/{version}", tmp_path / "fetched")
    files = sorted(p.relative_to(fetched) for p in fetched.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(packages["lora"]) for p in packages["lora"].rglob("*") if p.is_file()
    )
    assert all((fetched / f).read_bytes() == (packages["lora"] / f).read_bytes() for f in files)
    with pytest.raises(RegistryError, match="cannot download model 'models:/no-such-model"):
        download_package("models:/no-such-model@champion", tmp_path / "none")

    rows = _rows_answered_by(packages["lora"])
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows)
    out = tmp_path / "out"
    result = run_cli(
        "export",
        "models:/export-test@challenger",
        str(out),
        "--int8",
        "--eval",
        str(eval_file),
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["source"] == "models:/export-test@challenger" and report["output"] == str(out)
    assert report["merged_from"] == "adapter" and report["merge"]["greedy_agree"] == 5
    assert report["size_bytes"]["int8"] < report["size_bytes"]["fp32"]
    assert report["latency_ms"]["repeats"] == 3
    metrics = report["metrics"]
    assert metrics["fp32"]["exact_match"] == pytest.approx(0.5)
    assert metrics["change"]["rougeL"] == metrics["int8"]["rougeL"] - metrics["fp32"]["rougeL"]
    assert PackageManifest.read(out).options["quantize"] == "int8"

    failed = run_cli("export", str(tmp_path), str(tmp_path / "z"), "--json")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert json.loads(failed.stdout) == {
        "error": f"{tmp_path} is neither a models:/ URI nor a model package folder",
        "kind": "AdaptflowError",
    }
