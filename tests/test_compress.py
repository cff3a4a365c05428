"""``method: prune``: a trained classifier's least influential blocks go; distillation recovers.

A real teacher: MiniLM with a LoRA trained on the Unicode-categories example (180 records). The
student is the teacher with blocks removed (ShortGPT's Block Influence), distilled from it.
``compress.quantize: int8`` stores the student (or, with ``prune.blocks: 0``, the teacher)
dynamically quantized.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO, run_cli, write_jsonl

from adaptflow.errors import SpecError
from adaptflow.spec import CompressSpec, parse_spec
from runtime.int8 import parameter_count
from runtime.loading import load_classifier
from tasks.evaluate.compression import serving_cost
from tasks.evaluate.gate import GateDecision, compression_decision
from tasks.train.compress import (
    PruneOptions,
    block_influence,
    blocks_to_remove,
    distillation_loss,
    prune_and_distill,
    prune_blocks,
    save_student,
    teacher_logits,
)
from tasks.train.peft import Hyper, train_peft_classifier

ROWS = [json.loads(line) for line in (REPO / "examples/unicode-categories/data/chars.jsonl").open()]
#: Texts none of the models trained on: where int8 and fp32 answers are compared.
HELD = [r["text"] for r in ROWS[600:720]]
#: The least share of HELD on which an int8 model must give its fp32 source's label.
AGREEMENT = 0.95


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compress")
    return {
        "train": write_jsonl(folder / "train.jsonl", ROWS[:180]),
        "eval": write_jsonl(folder / "eval.jsonl", ROWS[600:660]),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def teacher(data: dict[str, Path]) -> Path:
    hyper = Hyper(epochs=3, learning_rate=3e-3, batch_size=16, max_length=32, lora_r=16,
                  lora_alpha=32, seed=3)  # fmt: skip
    out = data["folder"] / "teacher"
    train_peft_classifier(data["train"], "minilm", "lora", hyper, out)
    return out


def _kl(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Mean KL(teacher || student) of the class distributions."""
    return float(
        torch.nn.functional.kl_div(
            student.log_softmax(-1), teacher.log_softmax(-1), reduction="batchmean", log_target=True
        )
    )


def test_the_lowest_influence_blocks_go_and_the_pruned_model_reloads(
    teacher: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    model, tokenizer, _ = load_classifier(teacher)
    model = model.merge_and_unload()
    texts = [r["text"] for r in ROWS[:64]]
    influence = block_influence(model, tokenizer, texts, 32)
    assert len(influence) == 6 and all(0 < v < 2 for v in influence)
    lowest = sorted(sorted(range(6), key=lambda i: influence[i])[:3])
    pruned = prune_blocks(model, lowest)
    assert pruned.config.num_hidden_layers == 3 and len(pruned.bert.encoder.layer) == 3
    assert len(model.bert.encoder.layer) == 6  # the teacher is untouched
    kept = [i for i in range(6) if i not in lowest]
    for new, old in enumerate(kept):  # exactly the reported blocks went, the rest in order
        assert torch.equal(
            pruned.bert.encoder.layer[new].attention.self.query.weight,
            model.bert.encoder.layer[old].attention.self.query.weight,
        )
    pruned.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    assert reloaded.config.num_hidden_layers == 3
    batch = tokenizer(texts[:8], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(reloaded(**batch).logits, pruned.eval()(**batch).logits, atol=1e-5)
    assert blocks_to_remove(6, PruneOptions("t", ratio=0.5)) == 3
    assert blocks_to_remove(6, PruneOptions("t", blocks=2)) == 2
    with pytest.raises(ValueError, match="must remove at least 1 and keep at least 1"):
        blocks_to_remove(6, PruneOptions("t", blocks=6))
    with pytest.raises(ValueError, match="must remove at least 1 and keep at least 1"):
        blocks_to_remove(6, PruneOptions("t", blocks=0))  # nothing would change
    assert blocks_to_remove(6, PruneOptions("t", blocks=0, quantize="int8")) == 0


@pytest.fixture(scope="module")
def student(teacher: Path, data: dict[str, Path]) -> tuple[Path, Any]:
    """The teacher less 3 blocks, distilled (fp32 package, and what training reported)."""
    out = data["folder"] / "student"
    # alpha 0: the teacher's distribution alone (the labels would pull elsewhere: this teacher
    # is weak, macro-F1 ~0.6, and a student trained with alpha 0.5 beats it, ~0.74)
    options = PruneOptions(teacher=str(teacher), blocks=3, alpha=0.0, temperature=2.0)
    hyper = Hyper(epochs=4, learning_rate=1e-4, batch_size=16, max_length=32, seed=5)
    return out, prune_and_distill(data["train"], teacher, hyper, options, out)


def test_distillation_moves_the_student_toward_the_teacher(
    teacher: Path, student: tuple[Path, Any]
) -> None:
    out, result = student
    manifest = json.loads((out / "adaptflow_model.json").read_text())
    removed = manifest["options"]["removed_blocks"]
    influence = manifest["options"]["block_influence"]
    assert len(removed) == 3 and removed == sorted(sorted(range(6), key=lambda i: influence[i])[:3])
    assert result.total_params == result.trainable_params < 22_800_000  # 3 of 6 blocks gone
    model, tokenizer, _ = load_classifier(teacher)
    model = model.merge_and_unload()
    held = [r["text"] for r in ROWS[600:660]]
    reference = teacher_logits(model, tokenizer, held, 32)
    undistilled = teacher_logits(prune_blocks(model, removed), tokenizer, held, 32)
    distilled = teacher_logits(load_classifier(out)[0], tokenizer, held, 32)
    before, after = _kl(reference, undistilled), _kl(reference, distilled)
    assert after < 0.5 * before, (before, after)
    # the loss itself: zero KL term when the student already matches the teacher
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([0, 1])
    hard = float(torch.nn.functional.cross_entropy(logits, labels))
    assert float(distillation_loss(logits, logits, labels, 0.5, 2.0)) == pytest.approx(0.5 * hard)


def _modules(model: Any) -> dict[str, int]:
    """How many linear and embedding layers of ``model`` are 8-bit, and how many fp32."""
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    modules = list(model.modules())
    return {
        "linear_int8": sum(isinstance(m, DynamicLinear) for m in modules),
        "linear_fp32": sum(type(m) is torch.nn.Linear for m in modules),
        "embedding_int8": sum(isinstance(m, QuantizedEmbedding) for m in modules),
        "embedding_fp32": sum(type(m) is torch.nn.Embedding for m in modules),
    }


def _labels_in_a_fresh_process(package: Path, texts: list[str]) -> list[str]:
    """``runtime.classifier.predict_labels`` on ``package``, in a new Python process."""
    code = (
        "import json, sys; from pathlib import Path; "
        "from runtime.classifier import predict_labels; "
        "print(json.dumps(predict_labels(Path(sys.argv[1]), json.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(package), json.dumps(texts)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout.splitlines()[-1]))


def _int8_serves_as_its_fp32_source(fp32: Path, int8: Path) -> None:
    """Same answers on HELD (at least AGREEMENT of them), same weight count, >= 2x fewer bytes,
    and the int8 package answers the same in a fresh process."""
    from runtime.classifier import Classifier

    reference, answers = Classifier(fp32).predict(HELD), Classifier(int8).predict(HELD)
    agreement = sum(a == b for a, b in zip(answers, reference, strict=True)) / len(HELD)
    assert agreement >= AGREEMENT, agreement
    fp32_cost, int8_cost = serving_cost(fp32, HELD[:32]), serving_cost(int8, HELD[:32])
    # parameters() leaves out packed int8 weights; serving_cost counts them
    weights = sum(p.numel() for p in load_classifier(fp32)[0].parameters())
    assert int8_cost["params"] == fp32_cost["params"] == weights
    assert int8_cost["size_mb"] * 2 <= fp32_cost["size_mb"], (int8_cost, fp32_cost)
    # the same batch as here: activations are quantized with one scale per batch, so an int8
    # model's answer to a text can change with what it is batched with
    few = HELD[:16]
    assert _labels_in_a_fresh_process(int8, few) == Classifier(int8).predict(few)


def test_the_distilled_student_in_int8_answers_as_the_fp32_one(
    student: tuple[Path, Any], tmp_path: Path
) -> None:
    fp32, _ = student
    model, tokenizer, manifest = load_classifier(fp32)
    int8 = tmp_path / "int8"
    options = manifest.options | {"quantize": "int8"}
    save_student(model, tokenizer, replace(manifest, options=options), int8)  # as the recipe
    saved = json.loads((int8 / "adaptflow_model.json").read_text())["options"]
    assert saved["quantize"] == "int8" and saved["quantization"]["linear_layers"] == 20
    assert sorted(p.name for p in (int8 / "weights").iterdir()) == [
        "config.json",
        "model-int8.safetensors",
    ]
    loaded, _, _ = load_classifier(int8)
    # 3 blocks x 6 linear layers (query, key, value, attention output, intermediate, output),
    # the pooler and the head; word, position and token-type embeddings
    assert _modules(loaded) == {
        "linear_int8": 20,
        "linear_fp32": 0,
        "embedding_int8": 3,
        "embedding_fp32": 0,
    }
    batch = tokenizer(HELD[:8], padding=True, return_tensors="pt")
    with torch.inference_mode():  # the saved integers and scales are the quantized model
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    made = saved["quantization"]
    assert parameter_count(loaded) == made["params_int8"] + made["params_fp32"]
    _int8_serves_as_its_fp32_source(fp32, int8)


@pytest.mark.slow  # the int8 path is in make test above; this adds the no-block case
def test_a_quantize_only_candidate_is_the_teacher_in_int8(
    teacher: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    from tasks.train.teachers import teacher_folder

    int8 = tmp_path / "int8"
    options = PruneOptions(teacher=str(teacher), blocks=0, quantize="int8")
    hyper = Hyper(epochs=4, learning_rate=1e-4, batch_size=16, max_length=32, seed=5)
    result = prune_and_distill(data["train"], teacher, hyper, options, int8)
    assert (result.steps, result.loss_history, result.trainable_params) == (0, [], 0)
    saved = json.loads((int8 / "adaptflow_model.json").read_text())["options"]
    assert saved["removed_blocks"] == [] and saved["kept_blocks"] == [0, 1, 2, 3, 4, 5]
    assert saved["quantize"] == "int8" and saved["distilled"] is False
    loaded, _, _ = load_classifier(int8)
    assert _modules(loaded) == {  # 6 blocks x 6, the pooler, the head
        "linear_int8": 38,
        "linear_fp32": 0,
        "embedding_int8": 3,
        "embedding_fp32": 0,
    }
    # the fp32 reference: the teacher merged, saved as a full-weights package the same way
    model, tokenizer, manifest = load_classifier(teacher)
    fp32 = tmp_path / "fp32"
    save_student(model.merge_and_unload(), tokenizer, replace(manifest, max_length=32), fp32)
    assert result.total_params == parameter_count(load_classifier(fp32)[0])
    _int8_serves_as_its_fp32_source(fp32, int8)
    # an int8 package cannot be a teacher: its blocks cannot train, nor be quantized again
    with pytest.raises(SpecError, match="int8-quantized package"):
        teacher_folder(str(int8))


def test_the_gate_refuses_a_candidate_below_the_stated_trade() -> None:
    passed = GateDecision(
        True, ["f1_macro 0.90 beats baseline (knn) 0.80", "no champion to compare"]
    )
    spec = CompressSpec(min_retained=0.95, min_speedup=1.8)
    ok = compression_decision(passed, {"retained": 0.97, "speedup": 2.1}, spec)
    assert ok.promote and ok.reasons == [
        "f1_macro 0.90 beats baseline (knn) 0.80",
        "retained 0.970 meets compress.min_retained 0.95",
        "speedup 2.100 meets compress.min_speedup 1.8",
    ]
    slow = compression_decision(passed, {"retained": 0.99, "speedup": 1.5}, spec)
    assert not slow.promote and "speedup 1.500 misses compress.min_speedup 1.8" in slow.reasons
    lossy = compression_decision(passed, {"retained": 0.90, "speedup": 3.0}, spec)
    assert not lossy.promote and "retained 0.900 misses compress.min_retained 0.95" in lossy.reasons
    # unset bounds: keep 95% and be no slower
    default = compression_decision(passed, {"retained": 0.94, "speedup": 1.2}, CompressSpec())
    assert (
        not default.promote
        and "retained 0.940 misses compress.min_retained 0.95" in default.reasons
    )


def test_the_spec_names_what_prune_needs(tmp_path: Path) -> None:
    raw = {"name": "p", "task": "classification", "method": "prune", "data": {"train": "x.jsonl"}}
    write_jsonl(tmp_path / "x.jsonl", ROWS[:4])
    with pytest.raises(SpecError, match="method 'prune' needs compress.teacher"):
        parse_spec(raw, tmp_path)
    with pytest.raises(SpecError, match="compress.teacher: .*neither a registered version"):
        parse_spec(raw | {"compress": {"teacher": "no-such-folder"}}, tmp_path)
    with pytest.raises(
        SpecError, match="set one of compress.prune.blocks and compress.prune.ratio"
    ):
        both = {"teacher": "models:/t@champion", "prune": {"blocks": 2, "ratio": 0.5}}
        parse_spec(raw | {"compress": both}, tmp_path)
    teacher = {"teacher": "models:/t@champion"}
    with pytest.raises(SpecError, match="compress.prune.blocks 0 removes no block; without"):
        parse_spec(raw | {"compress": teacher | {"prune": {"blocks": 0}}}, tmp_path)
    with pytest.raises(SpecError, match="compress.quantize"):
        parse_spec(raw | {"compress": teacher | {"quantize": "int4"}}, tmp_path)
    only = parse_spec(raw | {"compress": teacher | {"prune": {"blocks": 0}, "quantize": "int8"}},
                      tmp_path)  # fmt: skip
    assert (only.compress.prune.blocks, only.compress.quantize) == (0, "int8")
    assert parse_spec(raw | {"compress": teacher}, tmp_path).compress.quantize is None
    generative = raw | {"task": "instruction", "base_model": "tiny-gpt",
                        "compress": {"teacher": "models:/t@champion"}}  # fmt: skip
    assert parse_spec(generative, tmp_path).compress.teacher == "models:/t@champion"
    with pytest.raises(SpecError, match="method 'prune' compresses classifiers and generators"):
        parse_spec(generative | {"task": "language-modeling"}, tmp_path)
    needs = "a package folder .*; method 'prune' on task 'instruction'"
    with pytest.raises(SpecError, match=needs):
        parse_spec(generative | {"compress": {"teacher": "tiny-gpt"}}, tmp_path)


@pytest.mark.integration
@pytest.mark.slow  # three pipeline runs (~6 min on 2 busy cores); the parts are tested above
def test_a_registered_teacher_is_pruned_gated_registered_and_predicts(
    data: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow
    import yaml
    from mlflow import MlflowClient

    from flows.pipeline import adapt_pipeline
    from runtime.classifier import predict_labels

    common = {
        "task": "classification", "base_model": "minilm", "seed": 3,
        "data": {"train": str(data["train"]), "eval": str(data["eval"]), "id_field": "id"},
    }  # fmt: skip
    teacher_spec = tmp_path / "teacher.yaml"
    teacher_spec.write_text(yaml.safe_dump(common | {
        "name": "prune-demo", "method": "lora",
        "train": {"epochs": 3, "learning_rate": 3e-3, "batch_size": 16, "max_length": 32,
                  "lora_r": 16, "lora_alpha": 32},
    }))  # fmt: skip
    first = adapt_pipeline(str(teacher_spec))  # registered (promoted or not: named by number)
    prune_spec = tmp_path / "prune.yaml"
    prune_spec.write_text(yaml.safe_dump(common | {
        "name": "prune-demo", "method": "prune",
        "train": {"epochs": 4, "learning_rate": 1e-4, "batch_size": 16, "max_length": 32},
        "compress": {"teacher": f"models:/prune-demo/{first['model_version']}",
                     "prune": {"blocks": 3},
                     "min_retained": 0.5, "min_speedup": 0.5},
    }))  # fmt: skip
    result = adapt_pipeline(str(prune_spec))
    metrics = result["metrics"]
    assert metrics["params"] < 0.8 * 22_700_000
    assert metrics["retained"] == pytest.approx(
        metrics["f1_macro"] / MlflowClient().get_run(result["mlflow_run_id"]).data.metrics[
            "teacher.f1_macro"]
    )  # fmt: skip
    assert metrics["speedup"] > 0 and metrics["latency_p95_ms"] >= metrics["latency_p50_ms"] > 0
    run = MlflowClient().get_run(result["mlflow_run_id"])
    assert run.data.tags["adaptflow.teacher"] == f"models:/prune-demo/{first['model_version']}"
    assert any("compress.min_retained 0.5" in reason for reason in result["gate"])
    assert len(json.loads(run.data.tags["adaptflow.removed_blocks"])) == 3
    # a fresh process loads the registered pruned version and classifies
    done = run_cli("predict", f"models:/prune-demo/{result['model_version']}",
                   "GURMUKHI DIGIT FIVE", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["predictions"] == ["decimal-digit"]
    assert run.data.tags["adaptflow.quantize"] == "none"

    # the teacher itself in int8 (no block removed, nothing trained): a candidate gated alike
    int8_spec = tmp_path / "int8.yaml"
    int8_spec.write_text(yaml.safe_dump(common | {
        "name": "prune-demo", "method": "prune", "train": {"max_length": 32},
        "compress": {"teacher": f"models:/prune-demo/{first['model_version']}",
                     "prune": {"blocks": 0}, "quantize": "int8",
                     "min_retained": 0.5, "min_speedup": 0.5},
    }))  # fmt: skip
    quantized = adapt_pipeline(str(int8_spec))
    run = MlflowClient().get_run(quantized["mlflow_run_id"])
    teacher_cost = run.data.metrics
    assert run.data.tags["adaptflow.quantize"] == "int8"
    assert json.loads(run.data.tags["adaptflow.removed_blocks"]) == []
    assert quantized["metrics"]["params"] == teacher_cost["teacher.params"]  # every weight
    assert 2 * quantized["metrics"]["size_mb"] <= teacher_cost["teacher.size_mb"]
    assert any("compress.min_retained 0.5" in reason for reason in quantized["gate"])
    card = Path(
        mlflow.artifacts.download_artifacts(
            run_id=quantized["mlflow_run_id"], artifact_path="model_card.md", dst_path=tmp_path
        )
    ).read_text()
    assert "| quantize | int8 | none (fp32) |" in card and "- Quantized: dynamic int8" in card
    texts = ["GURMUKHI DIGIT FIVE", "LATIN SMALL LETTER A", "EM DASH"]
    done = run_cli("predict", f"models:/prune-demo/{quantized['model_version']}", *texts,
                   "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    package = Path(quantized["train"]["package_dir"])
    assert json.loads(done.stdout)["predictions"] == predict_labels(package, texts)
