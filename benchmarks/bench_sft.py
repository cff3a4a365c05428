"""Generative SFT benchmarks: packing vs padding throughput, LoRA vs full peak memory.

    .venv/bin/python benchmarks/bench_sft.py [--examples 640] [--memory-width 768]

1. **Packing ÷ padding** (target ≥ 1.5). The same variable-length SFT examples, the same model
   (tiny-gpt, full fine-tuning), one epoch over all of them, through our recipe's Trainer
   set-up; only the dataset and collator differ (``tasks.train.lm.training_set`` and
   ``collator``): packing bin-packs examples into rows of ``max_length`` (256) tokens with
   positions restarting per example; padding pads each batch to its longest example. Both
   compute at most ``batch_size`` × 256 positions per step (16 rows, or 16 examples), so they
   differ only in how much of that is padding. Throughput counts real (non-padding) tokens per
   second of training. The examples are standard-library docstrings as answers to "Explain X"
   prompts: 12 to 256 tokens, the long-tailed lengths real instruction data has.
2. **LoRA vs full peak memory.** A randomly initialised GPT-2-style model (width
   ``--memory-width``, 12 blocks; 124M parameters at 768) takes 5 AdamW steps in a fresh
   process per method; the process's peak resident memory (``ru_maxrss``) is reported next to
   the formula the advisor uses (16 bytes/parameter for full AdamW, 2 + adapter for LoRA-style).
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sft_rows(limit: int = 800) -> list[tuple[str, str]]:
    """(prompt, answer) pairs with long-tailed answer lengths, from stdlib docstrings."""
    import importlib

    from adaptflow.tiny import MODULES

    rows = []
    for name in MODULES:
        module = importlib.import_module(name)
        for member in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, member, None))
            if member.startswith("_") or not doc or len(doc) < 40:
                continue
            rows.append((f"Explain {name}.{member}", doc[:1200]))
    return rows[:limit]


def throughput(packing: bool, examples: int, batch_size: int) -> dict[str, float]:
    """Real tokens per second of one epoch of full fine-tuning of tiny-gpt, packed or padded."""
    import torch
    from transformers import Trainer, TrainingArguments

    from runtime.prompts import collator, encode_sft
    from tasks.train.lm import training_set
    from tasks.train.peft import Hyper
    from tasks.train.sft import setup

    torch.manual_seed(0)
    model, tokenizer, family = setup("tiny-gpt", "full", Hyper(seed=0))
    items = [encode_sft(tokenizer, p, a, 256) for p, a in sft_rows()]
    items = items[:examples]
    real = sum(len(e.input_ids) for e in items)
    dataset = training_set(items, packing, 256)
    args = TrainingArguments(
        output_dir="/tmp/adaptflow-bench-sft",
        num_train_epochs=1,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator(tokenizer, family, packing),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # computed positions: the Trainer shuffles, so count them on the batches it really formed
    computed = 0
    for batch in trainer.get_train_dataloader():
        computed += batch["input_ids"].numel()
    return {
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "real_tokens": real,
        "tokens_per_second": real / seconds,
        "padding_share": 1 - real / computed,
    }


_MEMORY = """
import json, resource, sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
sys.path.insert(0, sys.argv[3])
from tasks.train.methods import MethodOptions, apply_method, trainable_parameters
torch.manual_seed(0)
width = int(sys.argv[2])
model = GPT2LMHeadModel(GPT2Config(n_embd=width, n_layer=12, n_head=12, vocab_size=50257))
model = apply_method(model, sys.argv[1], "decoder", MethodOptions())
trainable, total = trainable_parameters(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, 50257, (4, 256))
for _ in range(5):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print(json.dumps({"trainable": trainable, "total": total,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_memory(method: str, width: int) -> dict[str, float]:
    """Peak RSS of 5 AdamW steps with ``method`` in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY, method, str(width), str(REPO)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run both benchmarks and print a JSON summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--memory-width", type=int, default=768)
    args = parser.parse_args()
    from adaptflow.settings import apply_settings

    apply_settings()
    padded = throughput(False, args.examples, args.batch_size)
    packed = throughput(True, args.examples, args.batch_size)
    ratio = packed["tokens_per_second"] / padded["tokens_per_second"]
    print(
        f"padding: {padded['tokens_per_second']:.0f} real tokens/s "
        f"({padded['padding_share']:.0%} of computed tokens are padding)"
    )
    print(
        f"packing: {packed['tokens_per_second']:.0f} real tokens/s "
        f"({packed['padding_share']:.0%} padding, {packed['steps']} steps vs {padded['steps']})"
    )
    print(f"packing / padding = {ratio:.2f} (target >= 1.5)")
    memory = {m: peak_memory(m, args.memory_width) for m in ("lora", "full")}
    for method, m in memory.items():
        print(
            f"{method}: peak RSS {m['peak_mib']:.0f} MiB, trainable {m['trainable']:,} "
            f"of {m['total']:,}"
        )
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "padding": padded,
                "packing": packed,
                "ratio": ratio,
                "memory": memory,
                "this_process_peak_mib": baseline_rss,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
