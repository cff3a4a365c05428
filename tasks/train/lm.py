"""Training sets of generative packages: examples as datasets, packing, QLoRA loading.

Shared by the SFT and CPT recipes. Prompts and encoding (``runtime.prompts``), loading
(``runtime.loading``) and generating (``runtime.generate``) are in ``runtime``, which serving
uses too, so a served model formats prompts, truncates and decodes exactly as it did when it
was trained and scored.
"""

from __future__ import annotations

from typing import Any

from runtime.prompts import IGNORE, Encoded


class Examples:
    """Encoded examples as a map-style dataset for the Trainer."""

    def __init__(self, items: list[Encoded]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = self.items[i]
        return {"input_ids": item.input_ids, "labels": item.labels}


def pack_rows(items: list[Encoded], capacity: int) -> list[list[Encoded]]:
    """Bin-pack examples into rows of at most ``capacity`` tokens (first fit, longest first).

    Deterministic for the same input. Written here rather than taken from a library because
    transformers only offers "one row per batch" flattening, which on CPU attends densely over
    the whole batch (``benchmarks/bench_sft.py``); rows of ``max_length`` keep attention small.

    Raises:
        ValueError: When an example is longer than ``capacity``.
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    rows: list[list[int]] = []
    free: list[int] = []
    open_rows: list[int] = []  # rows that can still take the shortest example
    shortest = len(items[order[-1]].input_ids) if order else 0
    for i in order:
        size = len(items[i].input_ids)
        if size > capacity:
            raise ValueError(f"example of {size} tokens does not fit a row of {capacity}")
        for r in open_rows:
            if size <= free[r]:
                break
        else:
            r = len(rows)
            rows.append([])
            free.append(capacity)
            open_rows.append(r)
        rows[r].append(i)
        free[r] -= size
        if free[r] < shortest:
            open_rows.remove(r)
    return [[items[i] for i in row] for row in rows]


class PackedRows:
    """Rows of packed examples as a dataset: ids and labels joined, positions restarting.

    The first label of every example is ignored, so no example is trained to predict the start
    of the next one.
    """

    def __init__(self, rows: list[list[Encoded]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for item in self.rows[i]:
            ids += item.input_ids
            labels += [IGNORE] + item.labels[1:]
            positions += list(range(len(item.input_ids)))
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def training_set(items: list[Encoded], packing: bool, capacity: int) -> Any:
    """The Trainer's dataset: packed rows of ``capacity`` tokens, or one example per row."""
    return PackedRows(pack_rows(items, capacity)) if packing else Examples(items)


def qlora_quantization(precision: str = "bf16") -> dict[str, Any]:
    """``BitsAndBytesConfig`` arguments of QLoRA (Dettmers et al. 2023).

    NF4 4-bit weights with double-quantized constants, computing in the training precision
    (bf16 on GPUs that have it; fp16 or fp32 when ``train.precision`` says so).
    """
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": dtypes[precision],
    }


def qlora_loading(precision: str, local_rank: int = 0) -> dict[str, Any]:
    """``from_pretrained`` arguments that load a base for QLoRA onto this process's GPU."""
    from transformers import BitsAndBytesConfig

    quantization = qlora_quantization(precision)
    return {
        "quantization_config": BitsAndBytesConfig(**quantization),
        # 4-bit weights are placed while loading; under torchrun each rank takes its own GPU
        "device_map": {"": local_rank},
        "dtype": quantization["bnb_4bit_compute_dtype"],
    }
