"""``benchmarks/bench_gpu.py``: refuses clearly without CUDA; measures where a GPU exists.

The measured numbers (an H200, 2026-12-04) are in ``benchmarks/measured/bench_gpu-h200.json``
and the README; the GPU test below re-checks the counts on any CUDA machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_gpu.py"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_without_cuda_it_measures_nothing_and_says_why(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and "nothing was measured" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_recorded_h200_measurement_is_consistent() -> None:
    """The committed numbers agree with their own definitions (MFU = tokens/s × 6N or 4N / peak)."""
    measured = json.loads((REPO / "benchmarks/measured/bench_gpu-h200.json").read_text())
    assert measured["gpu"] == "NVIDIA H200" and measured["peak_flops"] == 989e12
    for run in measured["runs"]:
        per_token = (6 if run["method"] == "full" else 4) * run["params"]
        assert run["params"] == 1_235_814_400
        assert run["flops_per_token"] == per_token
        assert run["mfu"] == pytest.approx(run["tokens_per_second"] * per_token / 989e12)
        # LoRA r=8 on q and v of 16 blocks: 16·8·((2048+2048) + (2048+512))
        expected = 1_235_814_400 if run["method"] == "full" else 16 * 8 * (4096 + 2560)
        assert run["trainable_params"] == expected
    best = max(r["mfu"] for r in measured["runs"] if r["method"] == "full")
    assert best >= 0.35


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lora_on_a_1b_llama_trains_on_the_gpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--methods",
            "lora",
            "--steps",
            "8",
            "--warmup",
            "3",
            "--batch-size",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "bench_gpu.json").read_text())["runs"][0]
    assert run["trainable_params"] == 16 * 8 * (4096 + 2560)
    assert run["tokens_per_second"] > 1000 and 0 < run["mfu"] < 1
