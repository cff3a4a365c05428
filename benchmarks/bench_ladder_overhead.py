"""Benchmark: what does climbing the ladder cost when its first rung is already enough?

Two contenders run the same spec, each as ``adaptflow run`` in a fresh Python process with a
fresh ``ADAPTFLOW_HOME`` (so each pays the same start-up, curation, DVC and MLflow set-up):

1. ``ladder``     -- ``adaptflow run SPEC --ladder --json``: the advisor ranks the methods, a
   parent MLflow run is opened, the first rung (``icl``) runs as a child run, meets the target,
   the comparison table and chart are drawn and logged, the winner is gated and registered.
2. ``rung-alone`` -- ``adaptflow run SPEC --method icl --json``: that same rung as an ordinary
   single-method run.

The spec is ``examples/stdlib-topics`` with ``target.min`` lowered to 0.90, where the
nearest-example vote (macro-F1 ~0.955) meets the target at the first rung.

Reported: wall ratio = median ladder wall / median rung-alone wall (target <= 1.2). The script
also checks that both contenders produced the same metrics (same split, same rung).

Usage (from the repository root; run it alone on the machine, other CPU work skews it)::

    .venv/bin/python benchmarks/bench_ladder_overhead.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "stdlib-topics"
RESULTS_FILE = REPO_ROOT / "benchmarks" / "results" / "ladder_overhead.json"
WALL_RATIO_TARGET = 1.2
CONTENDERS = {"ladder": ["--ladder"], "rung-alone": ["--method", "icl"]}


def write_spec(folder: Path, target: float) -> Path:
    """The example spec with absolute data paths and the given target."""
    spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    spec["data"]["train"] = str(EXAMPLE / spec["data"]["train"])
    spec["target"]["min"] = target
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_once(name: str, spec: Path) -> dict[str, Any]:
    """One contender in a fresh process and a fresh ADAPTFLOW_HOME; returns wall and summary."""
    home = Path(tempfile.mkdtemp(prefix=f"bench-ladder-{name}-"))
    env = os.environ | {"ADAPTFLOW_HOME": str(home)}
    for variable in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(variable, None)
    command = [sys.executable, "-m", "adaptflow", "run", str(spec), *CONTENDERS[name], "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - started
    shutil.rmtree(home, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    return {
        "contender": name,
        "wall_s": wall,
        "method": summary["method"],
        "f1_macro": summary["metrics"]["f1_macro"],
        "rungs": [r["method"] for r in (summary["ladder"] or {}).get("rungs", [])],
    }


def benchmark(repeat: int, target: float) -> dict[str, Any]:
    """Alternate the contenders ``repeat`` times; medians and the ratio."""
    folder = Path(tempfile.mkdtemp(prefix="bench-ladder-spec-"))
    spec = write_spec(folder, target)
    runs = []
    for round_index in range(repeat):
        order = list(CONTENDERS) if round_index % 2 == 0 else list(reversed(CONTENDERS))
        for name in order:
            result = run_once(name, spec)
            print(f"round {round_index + 1}: {name:<10} {result['wall_s']:6.1f} s", flush=True)
            runs.append(result)
    medians = {
        name: statistics.median(r["wall_s"] for r in runs if r["contender"] == name)
        for name in CONTENDERS
    }
    ratio = medians["ladder"] / medians["rung-alone"]
    scores = {r["f1_macro"] for r in runs}
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "spec": str(EXAMPLE / "spec.yaml"),
        "target_min": target,
        "runs": runs,
        "median_wall_s": medians,
        "wall_ratio": ratio,
        "wall_ratio_target": WALL_RATIO_TARGET,
        "met": ratio <= WALL_RATIO_TARGET,
        "same_metrics": len(scores) == 1,
        "ladder_stopped_at_first_rung": all(
            r["rungs"] == ["icl"] for r in runs if r["contender"] == "ladder"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the result, write it to ``benchmarks/results``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--target", type=float, default=0.90, help="the spec's target.min")
    args = parser.parse_args(argv)
    result = benchmark(args.repeat, args.target)
    med = result["median_wall_s"]
    print(
        f"\nladder {med['ladder']:.1f} s / rung alone {med['rung-alone']:.1f} s = "
        f"{result['wall_ratio']:.3f} (target <= {WALL_RATIO_TARGET}: "
        f"{'met' if result['met'] else 'MISSED'}); same metrics: {result['same_metrics']}; "
        f"ladder stopped at the first rung: {result['ladder_stopped_at_first_rung']}"
    )
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["met"] and result["same_metrics"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
