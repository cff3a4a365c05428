"""What the training machine can do, checked before any work starts.

Three spec settings depend on the machine rather than on the data: ``train.precision``,
``method: qlora`` (4-bit weights through bitsandbytes) and ``train.devices``. They are checked
here, in the process that runs the flow, because with Prefect 3 a flow's tasks run in that
same process (or, for ``train.devices`` > 1, in its child processes): that is the machine
that trains. A spec that asks for what the machine lacks fails with one message naming every
missing piece, before curation. torch is imported inside the functions, so importing this
module stays cheap.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from adaptflow.errors import CapabilityError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Tasks whose recipe always trains on CPU (``tasks.train.peft`` sets ``use_cpu``): the
#: encoder classifier is small, and CPU keeps its results identical from machine to machine.
CPU_RECIPE_TASKS = ("classification",)
#: Methods that train nothing, and tasks that only run such methods: nothing here applies.
UNTRAINED_METHODS = ("icl", "rag")
UNTRAINED_TASKS = ("retrieval-qa",)


@dataclass(frozen=True)
class Machine:
    """The facts about this machine that training settings depend on."""

    cuda: bool  # a CUDA GPU torch can use
    bf16: bool  # that GPU computes in bfloat16 (Ampere or newer)
    gpus: int  # CUDA devices visible
    bitsandbytes: bool  # the bitsandbytes package imports (4-bit and 8-bit weights)


def this_machine() -> Machine:
    """Probe the machine this process runs on."""
    import torch

    cuda = torch.cuda.is_available()
    return Machine(
        cuda=cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        gpus=torch.cuda.device_count() if cuda else 0,
        bitsandbytes=_imports("bitsandbytes"),
    )


def _imports(package: str) -> bool:
    """Whether ``package`` imports (found on the path is not enough: its native part may fail)."""
    if importlib.util.find_spec(package) is None:
        return False
    try:
        importlib.import_module(package)
    except Exception:  # a broken install, or a CUDA library it cannot find
        return False
    return True


def training_device(task: str, machine: Machine) -> str:
    """``cuda`` when the recipe of ``task`` trains on the GPU here, else ``cpu``."""
    return "cuda" if machine.cuda and task not in CPU_RECIPE_TASKS else "cpu"


def resolve_precision(requested: str, device: str, bf16_supported: bool) -> str:
    """The precision a run trains in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 on a CUDA device that supports it, else fp32 (never fp16: its narrow
    range needs loss scaling and can still overflow, so it is used only when asked for).
    Explicit ``bf16`` also works on CPU (autocast to bfloat16; master weights stay fp32).

    Args:
        requested: ``train.precision``.
        device: ``cuda`` or ``cpu`` (see :func:`training_device`).
        bf16_supported: Whether the CUDA device computes in bfloat16.

    Raises:
        CapabilityError: fp16 off CUDA, or bf16 on a GPU without bfloat16.
    """
    if requested == "auto":
        return "bf16" if device == "cuda" and bf16_supported else "fp32"
    if requested == "fp16" and device != "cuda":
        raise CapabilityError(
            "train.precision fp16 needs a CUDA GPU (fp16 mixed precision scales the loss on "
            "the GPU); this run trains on CPU: use bf16 or fp32"
        )
    if requested == "bf16" and device == "cuda" and not bf16_supported:
        raise CapabilityError(
            "train.precision bf16: this GPU does not compute in bfloat16 (it needs an Ampere "
            "or newer GPU); use fp16 or fp32"
        )
    if requested not in PRECISIONS:
        raise CapabilityError(f"train.precision must be one of {', '.join(PRECISIONS)}")
    return requested


def precision_arguments(precision: str) -> dict[str, Any]:
    """``TrainingArguments`` flags for a resolved precision (mixed precision over fp32 weights)."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def qlora_missing(machine: Machine) -> list[str]:
    """What ``method: qlora`` needs and this machine lacks (empty: it can run)."""
    missing = []
    if not machine.cuda:
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if not machine.bitsandbytes:
        missing.append("the bitsandbytes package (it does not import; pip install bitsandbytes)")
    return missing


def qlora_error(missing: list[str]) -> CapabilityError:
    """The error for a QLoRA run on a machine without what it needs."""
    return CapabilityError(
        "method 'qlora' loads the base model in 4 bits with bitsandbytes, which needs a CUDA "
        f"GPU and the bitsandbytes package; missing here: {' and '.join(missing)}"
    )


def training_precision(task: str, requested: str, machine: Machine | None = None) -> str:
    """The precision the recipe of ``task`` trains in on this machine (see resolve_precision)."""
    machine = machine or this_machine()
    return resolve_precision(requested, training_device(task, machine), machine.bf16)


def check_capabilities(
    task: str, method: str, precision: str, devices: int, machine: Machine | None = None
) -> None:
    """Fail before any work when the machine cannot train as the spec asks.

    Args:
        task: The spec's task.
        method: The method that will run (``ladder``/``auto`` check precision and devices only).
        precision: ``train.precision``.
        devices: ``train.devices``.
        machine: The machine to judge (default: this one).

    Raises:
        CapabilityError: Naming every missing piece.
    """
    if method in UNTRAINED_METHODS or task in UNTRAINED_TASKS:
        return
    machine = machine or this_machine()
    problems: list[str] = []
    if method == "qlora" and (missing := qlora_missing(machine)):
        problems.append(str(qlora_error(missing)))
    try:
        training_precision(task, precision, machine)
    except CapabilityError as exc:
        problems.append(str(exc))
    if devices > 1 and machine.cuda and machine.gpus < devices:
        problems.append(
            f"train.devices {devices}: this machine has {machine.gpus} CUDA "
            f"GPU{'s' if machine.gpus != 1 else ''}"
        )
    if problems:
        raise CapabilityError("; ".join(problems))
