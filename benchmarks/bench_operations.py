"""Benchmark: operations on real servers (what `adaptflow up` starts).

Two numbers, both against a Prefect server, an MLflow server and a process worker started by
``adaptflow up`` in a temporary ``ADAPTFLOW_HOME`` on free loopback ports:

1. **Trigger-to-running latency with a warm worker**: the time from
   ``create_flow_run_from_deployment`` (what the UI's Run button calls) to the flow run's
   ``Running`` state, read from the server's state history; median of ``--repeat`` runs of the
   ``scheduled-retrain`` deployment (unchanged data, so each run skips training and ends quickly).
   One ``adapt-pipeline`` run first makes the champion and warms the worker. Split into
   trigger -> Pending (the worker's poll; ``PREFECT_WORKER_QUERY_SECONDS``, Prefect's default
   10 s) and Pending -> Running (the worker starts a Python process, runs the pull step, imports
   the flow).
2. **Prefect's per-task overhead for our tasks**: a flow calls each task N times as a Prefect
   task and N times as the plain function (``task.fn``), alternating; the ratio is
   task-call time / direct-call time (median per call), the overhead their difference.
   Tasks: ``curate_shard`` (the per-record curation blocks over the unicode-categories
   example, 780 records), ``majority_baseline`` (the no-training baseline on its curated
   split) and ``current_champion`` (one MLflow registry read over HTTP).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_operations.py
    .venv/bin/python benchmarks/bench_operations.py --repeat 5 --query-seconds 2

Results are printed and written to ``benchmarks/results/operations.json``. Only the standard
library is imported at module level; prefect is imported once the environment points at the
servers.
"""

from __future__ import annotations

import argparse
import asyncio
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

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "unicode-categories"
RESULTS_FILE = REPO_ROOT / "benchmarks" / "results" / "operations.json"
ADAPTFLOW = [sys.executable, "-m", "adaptflow"]


def cli(*args: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``adaptflow ARGS --json`` and return its JSON; raise with its stderr on failure."""
    done = subprocess.run(
        [*ADAPTFLOW, *args, "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"adaptflow {args[0]} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


# --------------------------------------------------------------------------------------------
# 1. trigger-to-running latency
# --------------------------------------------------------------------------------------------


async def trigger(client: Any, deployment_id: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """Trigger one run as the UI does, wait for it to finish, return its state timings."""
    from datetime import UTC, datetime

    triggered = datetime.now(UTC)
    run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    while not (run.state and run.state.is_final()):
        await asyncio.sleep(0.5)
        run = await client.read_flow_run(run.id)
    if not run.state.is_completed():
        raise RuntimeError(f"flow run {run.id} ended {run.state.type.value}: {run.state.message}")
    states = await client.read_flow_run_states(run.id)
    first = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp)
    return {
        "flow_run_id": str(run.id),
        "to_pending_s": (first["PENDING"] - triggered).total_seconds(),
        "to_running_s": (first["RUNNING"] - triggered).total_seconds(),
        "pending_to_running_s": (first["RUNNING"] - first["PENDING"]).total_seconds(),
        "total_s": (first["COMPLETED"] - triggered).total_seconds(),
    }


async def measure_latency(api_url: str, spec: Path, repeat: int) -> dict[str, Any]:
    """Warm up with one adapt-pipeline run, then ``repeat`` scheduled-retrain runs (skips)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            pipeline = await client.read_deployment_by_name("adapt-pipeline/adapt-pipeline")
            retrain = await client.read_deployment_by_name("scheduled-retrain/scheduled-retrain")
            warmup = await trigger(client, pipeline.id, {"spec_path": str(spec)})
            runs = [
                await trigger(client, retrain.id, {"spec_path": str(spec)}) for _ in range(repeat)
            ]
    keys = ("to_pending_s", "to_running_s", "pending_to_running_s", "total_s")
    return {
        "warmup_adapt_pipeline": warmup,
        "runs": runs,
        "median": {key: statistics.median(run[key] for run in runs) for key in keys},
    }


# --------------------------------------------------------------------------------------------
# 2. per-task overhead (runs in a subprocess whose environment points at the servers)
# --------------------------------------------------------------------------------------------


def task_overhead_worker(calls: int) -> dict[str, Any]:
    """Time three of our tasks as Prefect tasks vs the same functions called directly."""
    from prefect import flow

    from adaptflow.settings import load_settings
    from adaptflow.spec import load_spec
    from flows.curate import curation_inputs
    from tasks.curate.stage import curate_shard_task, finish_curation, plan_curation
    from tasks.icl.knn import majority_baseline_task
    from tasks.tracking import current_champion

    settings = load_settings()
    inputs = curation_inputs(load_spec(EXAMPLE / "spec.yaml"))
    plan = plan_curation(inputs, settings.curated_dir)
    results = [curate_shard_task.fn(job, inputs) for job in plan.jobs]
    curated = finish_curation(inputs, plan, results, settings.home)  # removes plan's shards
    shards = plan_curation(inputs, settings.work_dir / "bench-shards")
    cases = [
        ("curate_shard", curate_shard_task, (shards.jobs[0], inputs), max(3, calls // 4)),
        (
            "majority_baseline",
            majority_baseline_task,
            (Path(curated["train_file"]), Path(curated["eval_file"])),
            calls,
        ),
        ("current_champion", current_champion, ("bench-ops",), calls),
    ]

    @flow(name="bench-task-overhead")
    def measure() -> dict[str, Any]:
        out = {}
        for name, prefect_task, args, n in cases:
            prefect_task.fn(*args)  # warm caches and imports for both
            prefect_task(*args)
            direct, wrapped = [], []
            for _ in range(n):
                start = time.perf_counter()
                prefect_task.fn(*args)
                direct.append(time.perf_counter() - start)
                start = time.perf_counter()
                prefect_task(*args)
                wrapped.append(time.perf_counter() - start)
            d, w = statistics.median(direct), statistics.median(wrapped)
            out[name] = {
                "calls": n,
                "direct_ms": 1000 * d,
                "task_ms": 1000 * w,
                "overhead_ms": 1000 * (w - d),
                "ratio": w / d,
            }
        return out

    return measure()


# --------------------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    """The two tables, human-readable."""
    lat = result["latency"]["median"]
    print(
        f"\nTrigger-to-running, warm process worker (median of {result['config']['repeat']}; "
        f"worker poll {result['config']['query_seconds']} s)"
    )
    print(f"  trigger -> Pending   {lat['to_pending_s']:6.2f} s   (worker picks it up)")
    print(f"  Pending -> Running   {lat['pending_to_running_s']:6.2f} s   (process, pull, import)")
    print(f"  trigger -> Running   {lat['to_running_s']:6.2f} s")
    print(f"  trigger -> Completed {lat['total_s']:6.2f} s   (scheduled-retrain skipping)")
    print("\nPer-task overhead: Prefect task call vs the same function called directly (median)")
    header = ("task", "calls", "direct ms", "task ms", "overhead ms", "ratio")
    print("  {:<18} {:>5} {:>10} {:>9} {:>12} {:>7}".format(*header))
    for name, row in result["task_overhead"].items():
        print(
            f"  {name:<18} {row['calls']:>5} {row['direct_ms']:>10.2f} {row['task_ms']:>9.2f} "
            f"{row['overhead_ms']:>12.2f} {row['ratio']:>7.2f}"
        )


def benchmark(repeat: int, calls: int, query_seconds: float) -> dict[str, Any]:
    """Start servers, deploy, measure both numbers, stop the servers."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    home = scratch / "home"
    sys.path.insert(0, str(REPO_ROOT))
    from adaptflow.samples import write_tiny_icl_spec
    from adaptflow.servers import free_port

    spec = write_tiny_icl_spec(scratch / "spec", "bench-ops")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "ADAPTFLOW_HOME": str(home),
        "ADAPTFLOW_REPO": str(REPO_ROOT),
        "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds),
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no cron run in the middle
    }
    started = time.perf_counter()
    up = cli("up", "--prefect-port", str(free_port()), "--mlflow-port", str(free_port()), env=env)
    up_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        cli("deploy", env=env)
        deploy_seconds = time.perf_counter() - started
        os.environ["PREFECT_HOME"] = str(home / "prefect")
        latency = asyncio.run(measure_latency(up["prefect_api_url"], spec, repeat))
        worker_env = env | {
            "PREFECT_API_URL": up["prefect_api_url"],
            "MLFLOW_TRACKING_URI": up["mlflow_tracking_uri"],
            "PREFECT_HOME": str(home / "prefect"),
        }
        out = scratch / "overhead.json"
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--calls",
            str(calls),
            "--result",
            str(out),
        ]
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=worker_env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"task-overhead worker failed:\n{done.stderr[-3000:]}")
        overhead = json.loads(out.read_text())
    finally:
        cli("down", env=env)
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "config": {"repeat": repeat, "calls": calls, "query_seconds": query_seconds},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "up_seconds": up_seconds,
        "deploy_seconds": deploy_seconds,
        "latency": latency,
        "task_overhead": overhead,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, the task-overhead part)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="scheduled-retrain runs to time")
    parser.add_argument("--calls", type=int, default=20, help="calls per task and contender")
    parser.add_argument(
        "--query-seconds", type=float, default=10.0, help="worker poll interval (Prefect: 10)"
    )
    parser.add_argument("--out", type=Path, help="also write the results JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.result.write_text(json.dumps(task_overhead_worker(args.calls)))
        return 0
    result = benchmark(args.repeat, args.calls, args.query_seconds)
    print_report(result)
    text = json.dumps(result, indent=2, default=str)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text)
    if args.out:
        args.out.write_text(text)
    print(f"\nresults: {RESULTS_FILE}" + (f", {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
