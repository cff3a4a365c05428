"""What an export keeps and what it costs: agreement with the source model, latency, size.

``tasks/train/export.py`` writes the merged (and int8) packages and calls these to check that
the merged model answers as base + adapter does and to report what int8 saves.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from adaptflow.errors import AdaptflowError
from runtime.generate import generate
from runtime.prompts import IGNORE, collator, encode_seq2seq, encode_sft, render_prompt, source_text

#: Prompts for the merge check and the latency measurement when no eval rows are given.
DEFAULT_PROMPTS = (
    "Name the lowercase form of: LATIN CAPITAL LETTER A",
    "What does the len() function return?",
    "Summarise: the quick brown fox jumps over the lazy dog.",
    "How do I open a file for reading in Python?",
    "Explain what a dictionary is.",
)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def base_bytes(package_dir: Path, reference: str) -> int | None:
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


def prompts_for(rows: list[dict[str, Any]] | None, count: int) -> list[str]:
    """The first ``count`` eval texts, or the default prompts when there are none."""
    texts = [str(row["text"]) for row in rows or ()][:count]
    return texts or list(DEFAULT_PROMPTS[:count])


def logits_on(model: Any, tokenizer: Any, family: str, pairs: list[tuple[str, str]]) -> Any:
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
    return answers, logits_on(model, tokenizer, family, list(zip(texts, answers, strict=True)))


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
            (logits - logits_on(candidate, tokenizer, family, pairs)).abs().max()
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


def torch_threads() -> int:
    """The threads torch computes with (reported next to the latencies)."""
    import torch

    return int(torch.get_num_threads())
