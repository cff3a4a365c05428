"""GPU-dependent settings, tested on CPU: precision, QLoRA's capability check, spec-time combos.

Nothing here needs a GPU: precision resolves against described machines, bf16 really trains on
CPU, and QLoRA is checked for the error it gives without CUDA and for the configuration it
would load with. ``benchmarks/bench_gpu.py`` measures the GPU paths where a GPU exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli, write_jsonl

from adaptflow.errors import CapabilityError, SpecError
from adaptflow.hardware import (
    Machine,
    check_capabilities,
    precision_arguments,
    resolve_precision,
    this_machine,
    training_precision,
)
from adaptflow.spec import parse_spec
from tasks.train.peft import Hyper

CPU = Machine(cuda=False, bf16=False, gpus=0, bitsandbytes=False)
AMPERE = Machine(cuda=True, bf16=True, gpus=1, bitsandbytes=True)
T4 = Machine(cuda=True, bf16=False, gpus=1, bitsandbytes=True)
QLORA_ON_CPU = (
    "method 'qlora' loads the base model in 4 bits with bitsandbytes, which needs a CUDA GPU and "
    "the bitsandbytes package; missing here: a CUDA GPU (torch.cuda.is_available() is False) "
    "and the bitsandbytes package (it does not import; pip install bitsandbytes)"
)
#: Whether this machine can run QLoRA (the tests that expect the refusal skip where it can).
CAPABLE = torch.cuda.is_available() and this_machine().bitsandbytes


def test_precision_resolves_per_device() -> None:
    assert resolve_precision("auto", "cuda", True) == "bf16"
    assert resolve_precision("auto", "cuda", False) == "fp32"  # never fp16 unless asked
    assert resolve_precision("auto", "cpu", False) == "fp32"
    assert resolve_precision("bf16", "cpu", False) == "bf16"  # CPU autocast handles bf16
    assert resolve_precision("fp16", "cuda", False) == "fp16"
    assert resolve_precision("fp32", "cuda", True) == "fp32"
    with pytest.raises(CapabilityError, match="fp16 needs a CUDA GPU .* use bf16 or fp32"):
        resolve_precision("fp16", "cpu", False)
    with pytest.raises(CapabilityError, match="does not compute in bfloat16"):
        resolve_precision("bf16", "cuda", False)
    assert precision_arguments("bf16") == {"bf16": True, "fp16": False}
    assert precision_arguments("fp32") == {"bf16": False, "fp16": False}
    # the encoder classifier trains on CPU even where CUDA exists: auto is fp32 there
    assert training_precision("classification", "auto", AMPERE) == "fp32"
    assert training_precision("instruction", "auto", AMPERE) == "bf16"


def test_capability_check_names_every_missing_piece() -> None:
    with pytest.raises(CapabilityError) as refused:
        check_capabilities("instruction", "qlora", "auto", 1, CPU)
    assert str(refused.value) == QLORA_ON_CPU
    no_bnb = Machine(cuda=True, bf16=True, gpus=1, bitsandbytes=False)
    with pytest.raises(CapabilityError, match=r"missing here: the bitsandbytes package \(it"):
        check_capabilities("summarization", "qlora", "auto", 1, no_bnb)
    check_capabilities("instruction", "qlora", "auto", 1, AMPERE)  # all there: no error
    check_capabilities("instruction", "lora", "auto", 1, CPU)
    # several problems come in one message
    with pytest.raises(CapabilityError) as both:
        check_capabilities("instruction", "qlora", "fp16", 1, CPU)
    assert QLORA_ON_CPU in str(both.value) and "fp16 needs a CUDA GPU" in str(both.value)
    with pytest.raises(CapabilityError, match="train.devices 2: this machine has 1 CUDA GPU$"):
        check_capabilities("qa", "lora", "auto", 2, T4)
    check_capabilities("qa", "lora", "auto", 2, CPU)  # without CUDA: two CPU processes (gloo)
    with pytest.raises(CapabilityError, match="fp16"):
        check_capabilities("classification", "lora", "fp16", 1, AMPERE)  # trains on CPU
    check_capabilities("classification", "icl", "fp16", 1, CPU)  # trains nothing
    check_capabilities("retrieval-qa", "auto", "fp16", 1, CPU)  # only ever indexes


@pytest.mark.skipif(CAPABLE, reason="this machine can run QLoRA")
def test_qlora_on_this_machine_fails_before_any_work(tmp_path: Path) -> None:
    from adaptflow.settings import load_settings
    from flows.pipeline import adapt_pipeline
    from tasks.train.sft import quantized_loading

    spec = _write_spec(tmp_path, method="qlora")
    result = run_cli("run", str(spec), "--json")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    payload = json.loads(result.stdout)
    assert payload["kind"] == "CapabilityError"
    assert "method 'qlora' loads the base model in 4 bits" in payload["error"]
    if not torch.cuda.is_available() and not this_machine().bitsandbytes:
        assert payload["error"] == QLORA_ON_CPU
    # the flow itself (a Prefect deployment's entry point) refuses before curating anything
    with pytest.raises(CapabilityError, match="method 'qlora'"):
        adapt_pipeline.fn(str(spec))
    settings = load_settings()
    assert not list(settings.curated_dir.glob("hw*")) and not (settings.work_dir / "hw").exists()
    # and so does the recipe, before loading any weights
    with pytest.raises(CapabilityError, match="method 'qlora'"):
        quantized_loading("qlora", Hyper())
    assert quantized_loading("lora", Hyper()) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid with CUDA")
def test_fp16_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("run", str(_write_spec(tmp_path, precision="fp16")))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train.precision fp16 needs a CUDA GPU" in result.stderr


def test_qlora_loads_nf4_weights_computing_in_the_training_precision() -> None:
    from transformers import BitsAndBytesConfig

    from tasks.train.lm import qlora_loading, qlora_quantization

    config = BitsAndBytesConfig(**qlora_quantization())
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_use_double_quant is True
    assert config.quantization_method() == "nf4"
    assert qlora_quantization("fp16")["bnb_4bit_compute_dtype"] == torch.float16  # T4-class GPUs
    loading = qlora_loading("bf16", local_rank=1)
    assert loading["device_map"] == {"": 1}  # each torchrun rank on its own GPU
    assert loading["dtype"] == torch.bfloat16
    assert loading["quantization_config"].to_dict()["bnb_4bit_quant_type"] == "nf4"


def test_qlora_prepares_the_base_and_trains_a_lora() -> None:
    """On CPU the base stays unquantized, but the peft calls are the ones a GPU run makes."""
    from runtime.loading import load_base
    from tasks.train.methods import MethodOptions, apply_method, trainable_parameters

    model = apply_method(load_base("tiny-gpt"), "qlora", "decoder", MethodOptions())
    trainable, _ = trainable_parameters(model)
    assert trainable == 4 * (8 * 128 + 384 * 8)  # LoRA r=8 on c_attn in each of 4 blocks
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_advisor_knows_qlora_memory() -> None:
    from adaptflow.advisor import QLORA_BYTES_PER_PARAM, Facts, advise, estimate

    big = {"params": 13_000_000_000, "layers": 40, "hidden": 5120, "heads": 40}
    facts = Facts(
        task="instruction",
        family="decoder",
        labelled=2_000,
        labelled_tokens=1_000_000,
        custom_behavior=True,
        hardware="a10",
        gpu_hours=10,
        batch_size=1,
        **big,
    )
    lora, qlora = estimate("lora", facts), estimate("qlora", facts)
    assert qlora.trainable_params == lora.trainable_params
    assert qlora.train_flops == lora.train_flops  # 4·N·D for both
    saved = (2 - QLORA_BYTES_PER_PARAM) * big["params"] / 1e9
    assert qlora.peak_memory_gb == pytest.approx(lora.peak_memory_gb - saved)
    ranking = {a.method: a for a in advise(facts, runnable=("lora", "qlora")).ranking}
    assert not ranking["lora"].suitable and any("GB at peak" in r for r in ranking["lora"].reasons)
    assert ranking["qlora"].suitable  # 26 GB of 16-bit weights do not fit 24 GB; 6.7 GB do
    assert advise(facts, runnable=("lora", "qlora")).recommended_runnable == "qlora"
    on_cpu = {a.method: a for a in advise(Facts(**(facts.__dict__ | {"hardware": "cpu"}))).ranking}
    assert not on_cpu["qlora"].suitable
    assert any("needs a CUDA GPU and bitsandbytes" in r for r in on_cpu["qlora"].reasons)


def _raw_spec(folder: Path, **train: object) -> dict:
    rows = [{"text": f"Say {i}", "target": f"{i}"} for i in range(8)]
    write_jsonl(folder / "train.jsonl", rows)
    raw = {
        "name": "hw",
        "task": "instruction",
        "base_model": "tiny-gpt",
        "data": {"train": "train.jsonl"},
    }
    return raw | ({"train": train} if train else {})


def _write_spec(folder: Path, method: str = "lora", **train: object) -> Path:
    import yaml

    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(_raw_spec(folder, **train) | {"method": method}))
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"task": "language-modeling", "base_model": "tiny-t5", "cpt": {"replay": 0}},
            "task 'language-modeling' trains with method 'cpt' (continued next-token "
            "pre-training), which needs a decoder; base model 'tiny-t5' is an encoder-decoder",
        ),
        (
            {"base_model": "tiny-t5", "cpt": {"corpus": "train.jsonl", "replay": 0}},
            "cpt.corpus adds a continued pre-training stage, which needs a decoder; "
            "base model 'tiny-t5' is an encoder-decoder",
        ),
        (
            {"task": "summarization", "base_model": "minilm"},
            "task 'summarization' generates text, which needs a decoder or an encoder-decoder "
            "(an encoder can be a reward model: method reward); base model 'minilm' is an "
            "encoder",
        ),
        (
            {"train": {"devices": 3}},
            "train.batch_size 16 is the global batch and must split evenly over train.devices 3",
        ),
        (
            {"task": "classification", "base_model": "minilm", "train": {"devices": 2}},
            "train.devices 2: multi-process training runs the recipes of tasks instruction, qa, "
            "summarization, language-modeling; task 'classification' trains in one process",
        ),
        ({"train": {"precision": "fp8"}}, "train.precision: Input should be 'auto', 'fp32'"),
    ],
)
def test_incompatible_combinations_fail_at_spec_time(
    tmp_path: Path, change: dict, expected: str
) -> None:
    raw = _raw_spec(tmp_path) | change
    with pytest.raises(SpecError) as refused:
        parse_spec(raw, base_dir=tmp_path, source="spec.yaml")
    assert expected in str(refused.value)


def test_model_family_is_read_from_a_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"is_encoder_decoder": True}))
    raw = _raw_spec(tmp_path) | {"task": "language-modeling", "base_model": str(folder)}
    with pytest.raises(SpecError, match="is an encoder-decoder"):
        parse_spec(raw, base_dir=tmp_path)
    # a hub id is not looked up at spec time (it is checked when it loads)
    spec = parse_spec(_raw_spec(tmp_path) | {"base_model": "org/model"}, base_dir=tmp_path)
    assert spec.base_model == "org/model"
    spec = parse_spec(_raw_spec(tmp_path, devices=2, batch_size=8), base_dir=tmp_path)
    assert (spec.train.devices, spec.train.precision) == (2, "auto")


def test_resolved_precision_is_logged_as_an_mlflow_param(tmp_path: Path) -> None:
    from flows.steps import run_params
    from registry import tracking
    from tasks.tracking import open_run

    machine = this_machine()
    auto = "bf16" if machine.cuda and machine.bf16 else "fp32"
    for asked, logged in (("bf16", "bf16"), ("auto", auto), ("fp32", "fp32")):
        spec = parse_spec(_raw_spec(tmp_path, precision=asked), base_dir=tmp_path)
        run_id = open_run.fn("precision-params", f"run-{asked}", run_params(spec, "lora"), {})
        params = tracking.client().get_run(run_id).data.params
        assert params["train.precision"] == logged
        assert params["train.devices"] == "1"


def test_bf16_trains_on_cpu_and_its_loss_falls(tmp_path: Path) -> None:
    from tasks.train.sft import train_generator

    rows = [
        {"id": str(i), "text": f"Repeat: item {i} of the list", "target": f"item {i}"}
        for i in range(64)
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    runs = {}
    for precision in ("bf16", "fp32"):
        hyper = Hyper(epochs=3, batch_size=8, learning_rate=3e-3, precision=precision, seed=1)
        runs[precision] = train_generator(
            data, "tiny-gpt", "lora", hyper, tmp_path / precision, tmp_path / "checkpoints"
        )
    bf16, fp32 = runs["bf16"], runs["fp32"]
    assert (bf16.precision, fp32.precision) == ("bf16", "fp32")
    losses = [loss for _, loss in bf16.loss_history]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0  # measured: 7.38 -> 5.54
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    # bf16 autocast really ran: not fp32's numbers, yet within 1% of them (measured <= 0.04%)
    pairs = list(zip(losses, [loss for _, loss in fp32.loss_history], strict=True))
    assert any(b != f for b, f in pairs)
    assert all(abs(b - f) / f < 0.01 for b, f in pairs)
    assert (tmp_path / "bf16" / "adapter" / "adapter_model.safetensors").is_file()
