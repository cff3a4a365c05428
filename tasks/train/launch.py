"""Multi-process training: with ``train.devices`` > 1 a recipe runs under ``torchrun``.

The recipe's own function (``sft.train_generator`` or ``cpt.train_cpt``) notices that it should
run on several devices and hands itself, by name (``module:function``), to
:func:`run_distributed`, which writes its arguments
to a JSON file and starts, in a new process group,

    python -m torch.distributed.run --nproc-per-node N -m tasks.train.launch ARGS RESULT

Every rank runs the same function on the same arguments. The transformers ``Trainer`` sees the
variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and
trains with DistributedDataParallel: each rank takes its share of every global batch and the
gradients are averaged (NCCL on GPUs, gloo on CPU). Checkpoints are the Trainer's (rank 0 writes
the weights and optimizer, each rank its RNG state; the completeness marker is written by rank
0 after all ranks have saved), so a killed multi-process run resumes like a single one. Rank 0
alone writes the package and the result file; the parent reads the result back.

Why torchrun rather than ``accelerate launch``: torchrun ships with torch, needs no config file
and only sets the standard variables above. ``accelerate launch`` also reads a user's
``~/.cache/huggingface/accelerate/default_config.yaml``, which could silently change the mixed
precision or the process count behind the spec's back; here the spec alone decides both.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from adaptflow.errors import AdaptflowError

#: Set in the ranks' environment, so a recipe running as a rank does not launch again.
WORKER = "ADAPTFLOW_DISTRIBUTED_WORKER"
#: How much of a failed launch's output the error shows.
TAIL_CHARS = 4000
#: Started in place of torchrun, it asks Linux to send it SIGTERM when its parent dies, then
#: becomes torchrun (the request survives exec). A worker killed outright (SIGKILL, OOM) thus
#: takes torchrun with it, and torchrun its ranks: no orphans go on training and writing.
#: Elsewhere (no prctl) it just becomes torchrun.
_BOUND_TO_PARENT = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except AttributeError:
    pass
if os.getppid() != parent:  # the parent died before the request was in place
    sys.exit(143)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def in_worker() -> bool:
    """Whether this process is a rank started by :func:`run_distributed`."""
    return os.environ.get(WORKER) == "1"


def rank() -> int:
    """This process's global rank (0 outside a multi-process run)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes shared outputs (the package, checkpoint markers, results)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a multi-process run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _resolve(target: str) -> Any:
    """The object a ``module:name`` target names (imported here, so launch imports no recipe)."""
    module, _, name = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _encode(value: Any) -> Any:
    """``value`` as JSON: paths and dataclasses (``Hyper``, a recipe's result) tagged."""
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        return {"__dataclass__": f"{kind.__module__}:{kind.__qualname__}", "fields": asdict(value)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__path__" in value:
        return Path(value["__path__"])
    if isinstance(value, dict) and "__dataclass__" in value:
        fields = dict(value["fields"])
        if "loss_history" in fields:  # (step, loss) pairs: JSON keeps them as lists
            fields["loss_history"] = [tuple(pair) for pair in fields["loss_history"]]
        return _resolve(value["__dataclass__"])(**fields)
    return value


def torchrun_command(devices: int, arguments: Path, result: Path) -> list[str]:
    """The command line that runs this module as ``devices`` ranks on this machine."""
    return [
        sys.executable,
        "-c",
        _BOUND_TO_PARENT,
        str(os.getpid()),
        "-m",
        "torch.distributed.run",
        "--standalone",  # a private rendezvous on a free local port: runs never collide
        f"--nproc-per-node={devices}",
        "-m",
        "tasks.train.launch",
        str(arguments),
        str(result),
    ]


def run_distributed(target: str, kwargs: dict[str, Any], devices: int, log_dir: Path) -> Any:
    """Run the function ``target`` on ``devices`` ranks under torchrun; return rank 0's result.

    Args:
        target: The recipe function as ``module:function`` (``tasks.train.sft:train_generator``,
            ``tasks.train.cpt:train_cpt``): named, not imported, so this module depends on no
            recipe and the recipes can depend on it.
        kwargs: The recipe function's arguments (paths and dataclasses are carried as JSON).
        devices: Processes to start (one per GPU; CPU processes with gloo without CUDA).
        log_dir: Where the launch's arguments, result and combined output are written.

    Returns:
        The recipe's result dataclass, as rank 0 returned it.

    Raises:
        AdaptflowError: When the launch fails (with the end of its output).
    """
    import torch

    log_dir.mkdir(parents=True, exist_ok=True)
    short = target.rpartition(":")[2]
    handle, name = tempfile.mkstemp(prefix=f"launch-{short}-", suffix=".json", dir=log_dir)
    os.close(handle)
    arguments = Path(name)
    result = arguments.with_suffix(".result.json")
    log = arguments.with_suffix(".log")
    arguments.write_text(
        json.dumps({"target": target, "kwargs": {k: _encode(v) for k, v in kwargs.items()}})
    )
    env = dict(os.environ, **{WORKER: "1"})
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    if not torch.cuda.is_available():
        # torchrun would otherwise set 1 with a warning; share the cores between the ranks
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    with log.open("w") as output:
        process = subprocess.Popen(
            torchrun_command(devices, arguments, result),
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so it can be stopped as a whole
        )
        try:
            code = process.wait()
        except BaseException:  # interrupted or cancelled: take every rank down with us
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    if code != 0 or not result.is_file():
        tail = log.read_text(errors="replace")[-TAIL_CHARS:]
        raise AdaptflowError(
            f"training on {devices} processes failed (exit code {code}; full output: {log}):\n"
            f"{tail}"
        )
    outcome = _decode(json.loads(result.read_text()))
    for path in (arguments, result, log):
        path.unlink(missing_ok=True)
    return outcome


def main(arguments: Path, result: Path) -> None:
    """One rank: run the recipe on the arguments; rank 0 writes the result file."""
    import torch.distributed as dist

    job = json.loads(arguments.read_text())
    function = _resolve(job["target"])
    outcome = function(**{k: _decode(v) for k, v in job["kwargs"].items()})
    if is_main_process():
        partial = result.with_suffix(".partial")
        partial.write_text(json.dumps(_encode(outcome)))
        partial.replace(result)  # the parent never reads a half-written result
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
