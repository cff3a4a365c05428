"""GPU training throughput and MFU of a ~1B Llama-style model in bf16 (needs a CUDA GPU).

    .venv/bin/python benchmarks/bench_gpu.py [--steps 30] [--batch-size 8] [--seq-len 1024]
                                             [--methods full,lora,qlora] [--peak-tflops 989]

The model is randomly initialised from a Llama-3.2-1B-shaped config (16 blocks, width 2048,
32 heads, 8 KV heads, vocabulary 128,256, tied embeddings: 1.24B parameters); throughput does
not depend on the weights' values, and nothing has to be downloaded. Training goes through the
transformers ``Trainer`` with the recipe's precision flags (``adaptflow.hardware``:
``train.precision: bf16`` is bf16 autocast over fp32 master weights, AdamW) on random token
sequences of ``--seq-len``, all the same length so no padding is counted.

Reported per method (``full``: every weight; ``lora``: r=8 on q/v projections, the recipe's
default; ``qlora``: the same LoRA over the base saved and reloaded in 4 bits through the
recipe's own loading, ``runtime.loading.load_base`` with ``tasks.train.lm.qlora_loading``:
NF4, double quantization, bf16 compute, and peft's k-bit preparation, which turns on gradient
checkpointing):

- tokens/s: tokens of the timed steps ÷ their wall time (the first ``--warmup`` steps, with
  kernel selection and allocator growth, are not timed; CUDA is synchronised at both ends).
- MFU: tokens/s × FLOPs per token ÷ the GPU's peak dense bf16 FLOP/s, with 6·N FLOPs per token
  for full training and 4·N for LoRA and QLoRA (frozen base: no weight gradients; QLoRA's
  recomputation under gradient checkpointing is not counted, so its MFU is a lower bound), N
  the parameter count: the advisor's formulas (DESIGN.md §1). Attention's own FLOPs are not
  counted, as in those formulas. The peak comes from ``adaptflow.advisor.HARDWARE`` by GPU name, or
  ``--peak-tflops``.
- peak GPU memory (``torch.cuda.max_memory_allocated``), next to the advisor's estimate.

Without CUDA it says so and exits 2, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Llama-3.2-1B's shape.
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128_256,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "rope_theta": 500_000.0,
}
#: GPU name fragment -> key of ``adaptflow.advisor.HARDWARE`` (H200: the H100's compute).
GPU_NAMES = {"H100": "h100", "H200": "h100", "A100": "a100", "L4": "l4", "A10": "a10", "T4": "t4"}


def hardware_key(name: str) -> str | None:
    """The ``adaptflow.advisor.HARDWARE`` entry of the GPU called ``name``, if known."""
    return next((key for fragment, key in GPU_NAMES.items() if fragment in name), None)


def peak_flops(name: str, override_tflops: float | None) -> float:
    """Peak dense bf16 FLOP/s of the GPU called ``name`` (or the override)."""
    from adaptflow.advisor import HARDWARE

    if override_tflops is not None:
        return override_tflops * 1e12
    key = hardware_key(name)
    if key is None:
        raise SystemExit(f"bench_gpu: unknown peak FLOP/s for '{name}'; pass --peak-tflops")
    return HARDWARE[key].peak_flops


class _Clock:
    """A Trainer callback timing the steps after the warm-up ones."""

    def __init__(self, warmup: int) -> None:
        import torch
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == warmup:
                    torch.cuda.synchronize()
                    clock.started = time.perf_counter()

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                torch.cuda.synchronize()
                clock.ended = time.perf_counter()

        self.callback = Callback()
        self.started = 0.0
        self.ended = 0.0


def quantized_copy(model: Any) -> Any:
    """``model`` saved in bf16 and loaded back in 4 bits the way ``method: qlora`` loads a base."""
    import tempfile

    import torch

    from runtime.loading import load_base
    from tasks.train.lm import qlora_loading

    with tempfile.TemporaryDirectory(prefix="bench-gpu-base-") as folder:
        model.to(torch.bfloat16).save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        return load_base(folder, "decoder", extra=qlora_loading("bf16"))


def measure(method: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """Train ``method`` for ``args.steps`` steps; tokens/s, MFU and memory of the timed ones."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from adaptflow.advisor import Facts, estimate
    from adaptflow.hardware import precision_arguments
    from runtime.prompts import Encoded, collator
    from tasks.train.lm import training_set
    from tasks.train.methods import MethodOptions, apply_method, trainable_parameters

    torch.manual_seed(0)
    with torch.device("cuda"):  # initialised in place: no 5 GB detour through host memory
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B))
    params = sum(p.numel() for p in model.parameters())
    if method == "qlora":
        model = quantized_copy(model)
    torch.cuda.reset_peak_memory_stats()
    model = apply_method(model, method, "decoder", MethodOptions())
    trainable, _ = trainable_parameters(model)
    generator = torch.Generator().manual_seed(1)
    shape = (args.steps * args.batch_size, args.seq_len)
    sequences = torch.randint(0, LLAMA_1B["vocab_size"], shape, generator=generator)
    examples = [Encoded(row.tolist(), row.tolist()) for row in sequences]
    tokenizer = SimpleNamespace(eos_token_id=0, padding_side="right")
    clock = _Clock(args.warmup)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(args.out) / method),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-4,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            optim="adamw_torch_fused",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            **precision_arguments("bf16"),
        ),
        # one sequence per row: the packed collator needs no tokenizer and pads nothing
        train_dataset=training_set(examples, True, args.seq_len),
        data_collator=collator(tokenizer, "decoder", True),
        callbacks=[clock.callback],
    )
    trainer.train()
    seconds = clock.ended - clock.started
    tokens = (args.steps - args.warmup) * args.batch_size * args.seq_len
    per_token = (6 if method == "full" else 4) * params
    facts = Facts(
        task="instruction",
        family="decoder",
        params=params,
        layers=LLAMA_1B["num_hidden_layers"],
        hidden=LLAMA_1B["hidden_size"],
        heads=LLAMA_1B["num_attention_heads"],
        hardware=args.hardware,
        batch_size=args.batch_size,
        max_length=args.seq_len,
    )
    result = {
        "method": method,
        "params": params,
        "trainable_params": trainable,
        "tokens_per_second": tokens / seconds,
        "flops_per_token": per_token,
        "mfu": tokens / seconds * per_token / peak,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "advisor_memory_gb": estimate(method, facts).peak_memory_gb,
        "timed_steps": args.steps - args.warmup,
        "seconds": seconds,
    }
    del trainer, model
    torch.cuda.empty_cache()
    return result


def versions() -> dict[str, str]:
    """The versions of the libraries that did the work (the GPU machine's, not the pins)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def capabilities() -> dict[str, Any]:
    """What ``adaptflow.hardware`` makes of this machine: the checks every run goes through."""
    from dataclasses import asdict

    from adaptflow.errors import CapabilityError
    from adaptflow.hardware import check_capabilities, this_machine, training_precision

    try:
        check_capabilities("instruction", "qlora", "auto", 1)
        qlora = "runs here"
    except CapabilityError as error:
        qlora = str(error)
    return {
        "machine": asdict(this_machine()),
        "auto_precision": training_precision("instruction", "auto"),
        "qlora": qlora,
    }


def main() -> int:
    """Measure each method; print and save the results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu"))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(
            "bench_gpu: needs a CUDA GPU (torch.cuda.is_available() is False here); "
            "nothing was measured",
            file=sys.stderr,
        )
        return 2
    if not torch.cuda.is_bf16_supported():
        print("bench_gpu: this GPU has no bfloat16 (it needs Ampere or newer)", file=sys.stderr)
        return 2
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    args.gpu = torch.cuda.get_device_name()
    args.hardware = hardware_key(args.gpu) or "h100"  # for the advisor's memory estimate
    peak = peak_flops(args.gpu, args.peak_tflops)
    results = {
        "gpu": args.gpu,
        "peak_flops": peak,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "torch": torch.__version__,
        "versions": versions(),
        "capabilities": capabilities(),
        "runs": [],
    }
    for method in args.methods.split(","):
        try:
            results["runs"].append(measure(method, args, peak))
        except Exception as error:  # one method failing (bitsandbytes missing, say) keeps the rest
            print(f"bench_gpu: {method} failed: {type(error).__name__}: {error}", file=sys.stderr)
            traceback.print_exc()
            results.setdefault("failed", {})[method] = f"{type(error).__name__}: {error}"
            torch.cuda.empty_cache()
    for run in results["runs"]:
        print(
            f"{run['method']:>5}: {run['tokens_per_second']:,.0f} tokens/s, "
            f"MFU {run['mfu']:.1%} ({run['flops_per_token'] / run['params']:.0f}·N FLOPs/token), "
            f"peak {run['peak_memory_gb']:.1f} GB (advisor: {run['advisor_memory_gb']:.1f} GB)"
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
