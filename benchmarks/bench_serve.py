"""Serving benchmark: ``adaptflow serve`` vs ``mlflow models serve`` on the same registered version.

    ADAPTFLOW_MODELS_DIR=... .venv/bin/python benchmarks/bench_serve.py [--requests 200]

One instruction model (tiny-gpt, full fine-tuning on 160 pairs of ``examples/unicode-lowercase``,
4 epochs) is trained and registered by the real pipeline in a scratch ``ADAPTFLOW_HOME``. Then,
side by side in this one script:

- **MLflow's scoring server** (``mlflow models serve -m models:/NAME/1 --env-manager local``,
  one uvicorn worker: its default) answering ``POST /invocations``;
- **adaptflow's server** (``adaptflow serve NAME``, interaction log on, as users run it)
  answering the same ``POST /invocations`` body, and ``POST /v1/chat/completions``;
- **in-process**: the package's ``Generator.predict`` called directly, the floor both servers
  add their overhead to.

Each request is one prompt (taken in turn from the eval prompts), greedy, the package's
``max_new_tokens``. ``--requests`` requests at concurrency 1 and at 8 (httpx clients in
threads); requests/s, p50 and p95 latency. Goal: adaptflow >= MLflow's server in requests/s at
both concurrencies. Results go to ``benchmarks/results/serve.json``. Numbers move when other
work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS_FILE = REPO / "benchmarks" / "results" / "serve.json"
NAME = "bench-serve"


def train(folder: Path) -> tuple[list[str], Path]:
    """Register version 1 (champion); return its eval prompts and its package folder."""
    import yaml

    from flows.pipeline import adapt_pipeline

    example = REPO / "examples" / "unicode-lowercase"
    spec = yaml.safe_load((example / "spec.yaml").read_text())
    lines = (example / "data" / "pairs.jsonl").read_text().splitlines()[:160]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    spec |= {"name": NAME, "method": "full"}
    spec["data"]["train"] = str(folder / "pairs.jsonl")
    spec["train"] |= {"epochs": 4}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = adapt_pipeline(str(folder / "spec.yaml"))
    package = Path(result["train"]["package_dir"])
    answers = next(package.parent.glob("eval/*.jsonl")).read_text().splitlines()
    return [json.loads(line)["text"] for line in answers], package


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    sys.exit(f"server not healthy:\n{log.read_text()[-3000:]}")


def start(command: list[str], health: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    wait_healthy(health, process, log)
    return process


def load(url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    """Send every body (one request each) with ``concurrency`` clients; time them."""
    import httpx

    latencies: list[float] = []
    errors = 0
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(body: dict[str, Any]) -> None:
            nonlocal errors
            started = time.perf_counter()
            response = client.post(url, json=body)
            if response.status_code != 200:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)

        for body in bodies[: 2 * concurrency]:  # warm-up: first-call costs are not serving
            one(body)
        latencies.clear()
        began = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, bodies))
        wall = time.perf_counter() - began
    ms = sorted(1000 * x for x in latencies)
    return {
        "requests": len(bodies),
        "errors": errors,
        "requests_per_s": round(len(ms) / wall, 2),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[max(0, int(0.95 * len(ms)) - 1)], 1),
    }


def in_process(package: Path, prompts: list[str], requests: int) -> dict[str, float]:
    from runtime.predictor import open_predictor

    generator = open_predictor(package)
    for prompt in prompts[:4]:
        generator.predict([prompt])
    times = []
    for i in range(requests):
        started = time.perf_counter()
        generator.predict([prompts[i % len(prompts)]])
        times.append(1000 * (time.perf_counter() - started))
    times.sort()
    return {
        "requests": requests,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 1),
        "requests_per_s": round(1000 * len(times) / sum(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--home", type=Path, default=None, help="reuse an ADAPTFLOW_HOME")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="adaptflow-bench-serve-"))
    os.environ["ADAPTFLOW_HOME"] = str(home)
    for variable in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "ADAPTFLOW_SERVE_TOKEN"):
        os.environ.pop(variable, None)
    from adaptflow.servers import free_port
    from adaptflow.settings import apply_settings

    apply_settings()
    work = Path(tempfile.mkdtemp(prefix="spec-", dir=home))
    prompts, package = train(work)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ours_port, theirs_port = free_port(), free_port()
    ours = start(
        [sys.executable, "-m", "adaptflow", "serve", NAME, "--port", str(ours_port)],
        f"http://127.0.0.1:{ours_port}/health",
        home / "bench-adaptflow-serve.log",
        env,
    )
    theirs = start(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(theirs_port)],
        f"http://127.0.0.1:{theirs_port}/ping",
        home / "bench-mlflow-serve.log",
        env,
    )  # fmt: skip
    invocations = [{"inputs": [prompts[i % len(prompts)]]} for i in range(args.requests)]
    chats = [
        {"model": NAME, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
        for i in range(args.requests)
    ]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "in_process": in_process(package, prompts, args.requests),
    }
    try:
        for concurrency in (1, 8):
            row = {
                "mlflow_invocations": load(
                    f"http://127.0.0.1:{theirs_port}/invocations", invocations, concurrency
                ),
                "adaptflow_invocations": load(
                    f"http://127.0.0.1:{ours_port}/invocations", invocations, concurrency
                ),
                "adaptflow_chat": load(
                    f"http://127.0.0.1:{ours_port}/v1/chat/completions", chats, concurrency
                ),
            }
            row["ratio_rps_adaptflow_over_mlflow"] = round(
                row["adaptflow_invocations"]["requests_per_s"]
                / row["mlflow_invocations"]["requests_per_s"],
                3,
            )
            results[f"concurrency_{concurrency}"] = row
    finally:
        for process in (ours, theirs):
            process.terminate()
            process.wait(timeout=30)
    results["overhead_p50_ms_adaptflow_over_in_process"] = round(
        results["concurrency_1"]["adaptflow_invocations"]["p50_ms"]
        - results["in_process"]["p50_ms"],
        1,
    )
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
