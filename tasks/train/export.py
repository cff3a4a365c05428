"""Export a generative package: adapter merged into the base, optionally int8-quantized.

``export_package`` turns a package with a peft adapter (``adapter/``, base referenced) into a
self-contained full-weights package (``weights/``), checks that the merged model gives the same
logits and greedy answers as base + adapter, and with ``int8`` also writes a dynamically
quantized copy and reports what it costs and saves: size on disk, latency and metrics.

Merging works for adapters that change weights (LoRA, DoRA, IA3). Virtual-token methods
(prefix, prompt-tuning, p-tuning) add inputs, not weight deltas, so there is nothing to merge.

**int8.** ``quantize_int8`` replaces linear layers by dynamically quantized int8 ones;
the format, its saving and its loading (``load_int8``, called by ``load_generator``) live in
``runtime/int8.py``, so an int8 package serves and scores through the usual path.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adaptflow.errors import AdaptflowError
from runtime.int8 import quantize_int8, save_int8
from runtime.loading import load_generator
from runtime.manifest import PackageManifest, family_of, read_raw
from tasks.train.export_checks import (
    agreement,
    base_bytes,
    folder_bytes,
    latency_ms,
    prompts_for,
    reference_outputs,
    torch_threads,
)

GENERATIVE_KINDS = ("causal-lm", "seq2seq-lm")


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
    from runtime.generate import Generator, score_generator

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
    kind = read_raw(package_dir)["kind"]
    if kind not in GENERATIVE_KINDS:
        raise AdaptflowError(
            f"{package_dir}: export works for generative packages ({', '.join(GENERATIVE_KINDS)})"
            f", not '{kind}'"
        )
    manifest = PackageManifest.read(package_dir)
    if manifest.options.get("quantize"):
        raise AdaptflowError(f"{package_dir} is already quantized; export its fp32 source")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise AdaptflowError(f"{out_dir} is not empty; export writes a new package")
    family = family_of(manifest.kind)
    texts = prompts_for(eval_rows, check_prompts)
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
            "base": base_bytes(package_dir, manifest.base_model) if merged_from else None,
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
                "threads": torch_threads(),
            }
        if eval_rows:
            report["metrics"] = _metrics(
                package_dir, fp32_dir, out_dir if int8 else None, eval_rows
            )
    return report


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
