"""Export a generative package: adapter merged into the base, optionally int8-quantized.

``export_package`` turns a package with a peft adapter (``adapter/``, base referenced) into a
self-contained full-weights package (``weights/``), checks that the merged model gives the same
logits and greedy answers as base + adapter, and with ``int8`` also writes a dynamically
quantized copy and reports what it costs and saves: size on disk, latency and metrics.

Merging works for adapters that change weights (LoRA, DoRA, IA3). Virtual-token methods
(prefix, prompt-tuning, p-tuning) add inputs, not weight deltas, so there is nothing to merge.

**int8.** ``torch.ao.quantization.quantize_dynamic`` replaces ``nn.Linear`` layers by int8
ones (weights int8 per output channel, activations quantized on the fly; CPU only). GPT-2
style models use transformers' ``Conv1D`` (a transposed linear layer), which quantize_dynamic
does not touch, so those are converted to ``nn.Linear`` first (exact, same numbers). An output
head tied to the input embeddings stays fp32: the embedding table is needed in fp32 for
lookups anyway, so an int8 copy of the head would add bytes instead of saving them.
Embeddings and norms are not quantized.

The int8 package is saved as safetensors, not with ``torch.save`` (pickle can run code on
load; the project loads safetensors only), and ``from_pretrained`` cannot read a quantized
model. So ``weights/`` holds the config and ``model-int8.safetensors``: each quantized layer
as ``<layer>.weight.int8`` (int8), ``.weight.scale``, ``.weight.zero_point`` and ``.bias``, and
every other tensor as usual. The manifest says ``quantize: int8`` and ``load_int8`` rebuilds
the model (config -> same conversion and quantization -> these tensors); ``load_generator``
calls it, so an int8 package serves and scores through the usual path.

torch marks ``torch.ao.quantization`` as deprecated in favour of torchao (not installed here);
it still works in the installed torch, and the warnings are silenced where it is called.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from adaptflow.errors import AdaptflowError
from tasks.train.encoder import PackageManifest
from tasks.train.lm import (
    IGNORE,
    auto_class,
    collator,
    encode_seq2seq,
    encode_sft,
    family_of,
    generate,
    load_generator,
    render_prompt,
    source_text,
)

INT8_WEIGHTS = "model-int8.safetensors"
GENERATIVE_KINDS = ("causal-lm", "seq2seq-lm")
#: Prompts for the merge check and the latency measurement when no eval rows are given.
DEFAULT_PROMPTS = (
    "Name the lowercase form of: LATIN CAPITAL LETTER A",
    "What does the len() function return?",
    "Summarise: the quick brown fox jumps over the lazy dog.",
    "How do I open a file for reading in Python?",
    "Explain what a dictionary is.",
)


@contextmanager
def _quiet_quantization() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (they say: migrate to torchao)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        yield


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _base_bytes(package_dir: Path, reference: str) -> int | None:
    """Bytes of the base model's safetensors weights an adapter package needs to run.

    The base bundled in the package (``base/``, counted in its size too) or the referenced
    one when it is a local folder; None when it is neither (a hub id).
    """
    from adaptflow.catalogue import resolve_base_model

    bundled = package_dir / "base"
    try:
        path = bundled if bundled.is_dir() else Path(resolve_base_model(reference))
    except AdaptflowError:
        return None
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else None


def conv1d_to_linear(model: Any) -> int:
    """Replace transformers' ``Conv1D`` layers by equivalent ``nn.Linear`` ones, in place.

    ``Conv1D`` computes ``x @ W + b`` with ``W`` stored (in, out); ``nn.Linear`` stores it
    (out, in). Returns how many layers were replaced.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                fan_in, fan_out = child.weight.shape
                linear = torch.nn.Linear(fan_in, fan_out, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def _tied_head(model: Any) -> str | None:
    """The name of an output head that shares its weight with the input embeddings, if any."""
    head = model.get_output_embeddings()
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return None
    return next(name for name, module in model.named_modules() if module is head)


def quantize_int8(model: Any) -> dict[str, Any]:
    """Dynamically quantize ``model``'s linear layers to int8, in place (CPU inference).

    ``Conv1D`` layers are converted to ``nn.Linear`` first; a head tied to the embeddings is
    kept fp32 (see the module docstring). Weights are quantized per output channel.

    Returns:
        What was quantized: ``conv1d_converted``, ``linear_layers``, ``params_int8`` (weights
        now int8), ``params_fp32`` (all others) and ``kept_fp32`` (layers left out, and why).
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model.float()  # dynamic quantization takes fp32 layers (a bf16 base merges into bf16)
    converted = conv1d_to_linear(model)
    tied = _tied_head(model)
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != tied
    }
    int8_params = sum(module.weight.numel() for module in layers.values())
    total = sum(p.numel() for p in model.parameters())
    with _quiet_quantization():
        quantize_dynamic(
            model, {name: per_channel_dynamic_qconfig for name in layers}, inplace=True
        )
    return {
        "scheme": "dynamic int8: weights per output channel, activations per batch at run time",
        "conv1d_converted": converted,
        "linear_layers": len(layers),
        "params_int8": int8_params,
        "params_fp32": total - int8_params,
        "kept_fp32": [f"{tied}: tied to the input embeddings"] if tied else [],
    }


def _quantized_layers(model: Any) -> dict[str, Any]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicLinear)}


def int8_tensors(model: Any) -> dict[str, Any]:
    """A quantized model as plain tensors for safetensors (see the module docstring).

    Tensors shared by several names (a tied head) are stored once, under the first name.
    """
    import torch

    tensors: dict[str, Any] = {}
    quantized = _quantized_layers(model)
    for name, layer in quantized.items():
        weight = layer.weight()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale, zero_point = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        else:
            scale = torch.tensor(weight.q_scale(), dtype=torch.float64)
            zero_point = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
        tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight.scale"] = scale.contiguous()
        tensors[f"{name}.weight.zero_point"] = zero_point.contiguous()
        if layer.bias() is not None:
            tensors[f"{name}.bias"] = layer.bias().detach().contiguous()
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor) or key.rsplit(".", 1)[0] in quantized:
            continue
        if any(key.startswith(f"{name}.") for name in quantized):
            continue  # a quantized layer's packed params and placeholders
        if value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous()
    return tensors


def save_int8(model: Any, folder: Path) -> None:
    """Write a quantized model to ``folder``: its config and ``model-int8.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    save_file(int8_tensors(model), str(folder / INT8_WEIGHTS), metadata={"format": "pt"})


def load_int8(folder: Path, family: str) -> Any:
    """Rebuild a model saved by ``save_int8`` (in eval mode, CPU).

    Raises:
        AdaptflowError: When the saved tensors do not match the rebuilt model.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model = auto_class(family).from_config(AutoConfig.from_pretrained(str(folder)))
    model.eval()
    quantize_int8(model)
    tensors = load_file(str(folder / INT8_WEIGHTS))
    with _quiet_quantization():
        for name, layer in _quantized_layers(model).items():
            values = tensors.pop(f"{name}.weight.int8").float()
            scale = tensors.pop(f"{name}.weight.scale")
            zero_point = tensors.pop(f"{name}.weight.zero_point")
            # re-quantizing the dequantized values with the same scales gives back the same
            # integers; torch offers no public constructor from int8 values and scales
            if scale.dim() == 1:
                real = ((values - zero_point[:, None]) * scale[:, None]).float()
                weight = torch.quantize_per_channel(real, scale, zero_point, 0, torch.qint8)
            else:
                real = ((values - zero_point) * scale).float()
                weight = torch.quantize_per_tensor(real, float(scale), int(zero_point), torch.qint8)
            layer.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
    # the remaining float tensors (embeddings, norms, a tied head), by any of their names
    saved = set(model.state_dict())
    named = chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    targets = {key: value for key, value in named if key in saved}
    filled: set[int] = set()
    with torch.no_grad():
        for key in tensors.keys() & targets.keys():
            targets[key].copy_(tensors[key])
            filled.add(id(targets[key]))
    missing = sorted(key for key, value in targets.items() if id(value) not in filled)
    unexpected = sorted(tensors.keys() - targets.keys())
    if missing or unexpected:
        raise AdaptflowError(
            f"{folder / INT8_WEIGHTS} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model


def _prompts(rows: list[dict[str, Any]] | None, count: int) -> list[str]:
    texts = [str(row["text"]) for row in rows or ()][:count]
    return texts or list(DEFAULT_PROMPTS[:count])


def _logits(model: Any, tokenizer: Any, family: str, pairs: list[tuple[str, str]]) -> Any:
    """Teacher-forced logits at every scored position of (prompt, answer) pairs."""
    import torch

    encode = encode_sft if family == "decoder" else encode_seq2seq
    items = [encode(tokenizer, text, answer, 512) for text, answer in pairs]
    batch = collator(tokenizer, family, packing=False)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in items]
    )
    with torch.inference_mode():
        logits = model(**batch).logits.float()
    keep = batch["attention_mask"].bool() if family == "decoder" else batch["labels"] != IGNORE
    return logits[keep]


def reference_outputs(
    model: Any, tokenizer: Any, family: str, texts: list[str]
) -> tuple[list[str], Any]:
    """A model's greedy answers to ``texts`` and its logits on them (to compare others with)."""
    answers = generate(model, tokenizer, texts, family, max_new_tokens=32)
    return answers, _logits(model, tokenizer, family, list(zip(texts, answers, strict=True)))


def agreement(
    candidate: Any, tokenizer: Any, family: str, texts: list[str], reference: tuple[list[str], Any]
) -> dict[str, Any]:
    """How closely ``candidate`` follows a reference's ``reference_outputs``.

    Logits are compared teacher-forced on the reference's own answers, so the comparison
    covers the same tokens even where the two models' greedy answers part ways.

    Returns:
        ``prompts``, ``greedy_agree`` (answers identical) and ``max_abs_logit_diff``.
    """
    expected, logits = reference
    answers = generate(candidate, tokenizer, texts, family, max_new_tokens=32)
    pairs = list(zip(texts, expected, strict=True))
    return {
        "prompts": len(texts),
        "greedy_agree": sum(a == b for a, b in zip(expected, answers, strict=True)),
        "max_abs_logit_diff": float(
            (logits - _logits(candidate, tokenizer, family, pairs)).abs().max()
        ),
    }


def latency_ms(
    models: dict[str, Any],
    tokenizer: Any,
    family: str,
    texts: list[str],
    new_tokens: int,
    repeats: int,
) -> dict[str, float]:
    """Median milliseconds per greedy answer of exactly ``new_tokens`` tokens, for each model.

    Prompts go one at a time (a served request); every answer has the same length, so models
    that would stop at different points are timed on the same work. The models take turns on
    each prompt, so a machine that gets busier or quieter meanwhile skews them alike.
    """
    import torch

    inputs = [render_prompt(tokenizer, t) if family == "decoder" else source_text(t) for t in texts]
    encoded = [
        tokenizer(text, return_tensors="pt", add_special_tokens=family != "decoder")
        for text in inputs
    ]
    limits = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    limits |= {"pad_token_id": tokenizer.pad_token_id}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.generate(**encoded[0], **limits)  # warm-up: first-call allocations
        for _ in range(repeats):
            for batch in encoded:
                for name, model in models.items():
                    started = time.perf_counter()
                    model.generate(**batch, **limits)
                    times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def check_mergeable(package_dir: Path, manifest: PackageManifest) -> None:
    """Refuse adapters that add virtual tokens: they change inputs, not weights.

    Raises:
        AdaptflowError: For prefix, prompt-tuning and p-tuning adapters.
    """
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(package_dir / "adapter"))
    if config.is_prompt_learning:
        raise AdaptflowError(
            f"{package_dir}: method '{manifest.method}' ({config.peft_type.value}) adds virtual "
            "tokens, not weight changes, so it cannot be merged into the base model; export "
            "works for lora, dora, ia3 and full-weight packages"
        )


def _write_package(model: Any, tokenizer_dir: Path, manifest: PackageManifest, out: Path) -> None:
    """Write a package: ``weights/`` (fp32, or int8 per the manifest), tokenizer, manifest."""
    out.mkdir(parents=True, exist_ok=True)
    if manifest.options.get("quantize") == "int8":
        save_int8(model, out / "weights")
    else:
        model.config.use_cache = True
        model.save_pretrained(str(out / "weights"), safe_serialization=True)
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    manifest.write(out)


def _with_options(manifest: PackageManifest, **options: Any) -> PackageManifest:
    from dataclasses import replace

    return replace(manifest, options=manifest.options | options)


def _score(folder: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    from tasks.evaluate.generation import Generator, score_generator

    return dict(score_generator(Generator.from_package(folder), rows)["metrics"])


def export_package(
    package_dir: Path,
    out_dir: Path,
    int8: bool = False,
    eval_rows: list[dict[str, Any]] | None = None,
    check_prompts: int = 5,
    new_tokens: int = 32,
    repeats: int = 3,
) -> dict[str, Any]:
    """Export a generative package as full weights: merged, and int8 with ``int8``.

    An adapter package is merged into its base (and the merge checked against base + adapter);
    a full-weights package is copied as it is. With ``int8`` the package written is the
    quantized one (the fp32 one is built alongside to measure against, then removed).

    Args:
        package_dir: A ``causal-lm`` or ``seq2seq-lm`` package.
        out_dir: Where to write the exported package (must not exist, or be empty).
        int8: Write a dynamically quantized int8 package and measure it against fp32.
        eval_rows: Rows with ``text`` and ``target`` (a curated eval split): the exported
            models are scored on them (and the source too), and their first texts are the
            prompts of the checks.
        check_prompts: How many prompts the merge/int8 checks and the latency use.
        new_tokens: Length of every answer timed for latency.
        repeats: How many times each latency prompt is answered (the median is reported).

    Returns:
        The report: ``source``, ``output``, ``kind``, ``method``, ``merged_from`` (``adapter``
        or None), ``merge`` (the check of merged against base + adapter, or None),
        ``quantization`` (what became int8 and how far its answers are from fp32, or None),
        ``size_bytes`` (``source`` package, its ``base`` model when referenced, ``fp32`` and
        ``int8`` packages), ``latency_ms`` (fp32 and int8, or None), ``metrics`` (``source``,
        ``fp32``, ``int8`` and ``change`` = int8 - fp32, or None without rows).

    Raises:
        AdaptflowError: Not a generative package, a virtual-token adapter, or a non-empty
            ``out_dir``.
    """
    manifest = PackageManifest.read(package_dir)
    if manifest.kind not in GENERATIVE_KINDS:
        raise AdaptflowError(
            f"{package_dir}: export works for generative packages ({', '.join(GENERATIVE_KINDS)})"
            f", not '{manifest.kind}'"
        )
    if manifest.options.get("quantize"):
        raise AdaptflowError(f"{package_dir} is already quantized; export its fp32 source")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise AdaptflowError(f"{out_dir} is not empty; export writes a new package")
    family = family_of(manifest.kind)
    texts = _prompts(eval_rows, check_prompts)
    merged_from = "adapter" if (package_dir / "adapter").is_dir() else None
    if merged_from:
        check_mergeable(package_dir, manifest)
    report: dict[str, Any] = {
        "source": str(package_dir),
        "output": str(out_dir),
        "kind": manifest.kind,
        "method": manifest.method,
        "merged_from": merged_from,
        "merge": None,
        "quantization": None,
        "size_bytes": {
            "source": folder_bytes(package_dir),
            "base": _base_bytes(package_dir, manifest.base_model) if merged_from else None,
            "fp32": None,
            "int8": None,
        },
        "latency_ms": None,
        "metrics": None,
    }
    with tempfile.TemporaryDirectory(prefix="adaptflow-export-") as scratch:
        fp32_dir = Path(scratch) / "fp32" if int8 else out_dir
        if merged_from:
            model, tokenizer, _ = load_generator(package_dir)
            # the unmerged outputs first: merge_and_unload changes the base layers in place
            reference = reference_outputs(model, tokenizer, family, texts)
            merged = model.merge_and_unload()
            report["merge"] = agreement(merged, tokenizer, family, texts, reference)
            _write_package(
                merged,
                package_dir / "tokenizer",
                _with_options(manifest, merged_from="adapter"),
                fp32_dir,
            )
        else:
            if fp32_dir.exists():
                fp32_dir.rmdir()  # empty (checked above); copytree wants to create it
            shutil.copytree(package_dir, fp32_dir)
        report["size_bytes"]["fp32"] = folder_bytes(fp32_dir)
        if int8:
            fp32, tokenizer, _ = load_generator(fp32_dir)
            quantized = copy.deepcopy(fp32)
            quantization = quantize_int8(quantized)
            int8_manifest = _with_options(PackageManifest.read(fp32_dir), quantize="int8")
            _write_package(quantized, fp32_dir / "tokenizer", int8_manifest, out_dir)
            report["size_bytes"]["int8"] = folder_bytes(out_dir)
            served, _, _ = load_generator(out_dir)  # what serving will load
            reference = reference_outputs(fp32, tokenizer, family, texts)
            report["quantization"] = quantization | agreement(
                served, tokenizer, family, texts, reference
            )
            report["latency_ms"] = {
                **latency_ms(
                    {"fp32": fp32, "int8": served}, tokenizer, family, texts, new_tokens, repeats
                ),
                "new_tokens": new_tokens,
                "prompts": len(texts),
                "repeats": repeats,
                "threads": _threads(),
            }
        if eval_rows:
            report["metrics"] = _metrics(
                package_dir, fp32_dir, out_dir if int8 else None, eval_rows
            )
    return report


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _metrics(
    source: Path, fp32: Path, int8: Path | None, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Scores of the source, fp32 and int8 packages on ``rows``, and int8 - fp32."""
    fp32_metrics = _score(fp32, rows)
    int8_metrics = _score(int8, rows) if int8 else None
    return {
        "examples": len(rows),
        "source": _score(source, rows),
        "fp32": fp32_metrics,
        "int8": int8_metrics,
        "change": (
            {k: int8_metrics[k] - fp32_metrics[k] for k in fp32_metrics} if int8_metrics else None
        ),
    }
