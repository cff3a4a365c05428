"""Score generative candidates (instruction, qa, summarization) and their no-training baseline.

One ``Generator`` (a loaded package, or the bare base model) and one ``score_generator`` serve
the candidate, the baseline, the champion's re-scoring and ``predict``, so every number the gate
compares comes from the same prompts, decoding and metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.curate.records import read_jsonl
from tasks.evaluate.text_metrics import generation_metrics, perplexity


class Generator:
    """A generative model ready to answer: model, tokenizer, family and decoding limits."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        family: str,
        max_length: int,
        max_new_tokens: int,
        raw: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.raw = raw  # continue the text as it is (CPT packages), no prompt format

    @classmethod
    def from_package(cls, folder: Path) -> Generator:
        """Load a trained package (``causal-lm`` or ``seq2seq-lm``)."""
        from tasks.train.lm import family_of, load_generator

        model, tokenizer, manifest = load_generator(folder)
        return cls(
            model,
            tokenizer,
            family_of(manifest.kind),
            manifest.max_length,
            int(manifest.options.get("max_new_tokens", 64)),
            raw=manifest.options.get("prompt") == "raw",
        )

    @classmethod
    def from_base(
        cls, base_model: str, max_length: int, max_new_tokens: int, allow_pickle: bool = False
    ) -> Generator:
        """The untrained base model, prompted exactly like a candidate (the baseline)."""
        from tasks.train.lm import family_of, load_base, load_base_tokenizer

        model = load_base(base_model, allow_pickle=allow_pickle)
        model.eval()
        tokenizer = load_base_tokenizer(base_model)
        return cls(model, tokenizer, family_of(model.config), max_length, max_new_tokens)

    def predict(
        self, texts: list[str], contexts: list[list[dict[str, str]] | None] | None = None
    ) -> list[str]:
        """One greedy answer per text (after its earlier conversation turns, if given)."""
        from tasks.train.lm import generate

        return generate(
            self.model,
            self.tokenizer,
            texts,
            self.family,
            max_new_tokens=self.max_new_tokens,
            max_length=self.max_length,
            contexts=contexts,
            raw=self.raw,
        )


def score_generator(generator: Generator, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Answer every row's ``text`` and compare with its ``target``.

    Returns:
        ``metrics`` (exact_match, token_f1, rouge1/2/L, perplexity of the targets) and
        ``predictions``.
    """
    from tasks.train.lm import answer_nll

    texts = [row["text"] for row in rows]
    targets = [row["target"] for row in rows]
    contexts = [row.get("context") for row in rows]
    predictions = generator.predict(texts, contexts)
    metrics = generation_metrics(predictions, targets)
    nll, tokens = answer_nll(
        generator.model,
        generator.tokenizer,
        list(zip(texts, targets, strict=True)),
        generator.family,
        generator.max_length,
        contexts,
    )
    metrics["perplexity"] = perplexity(nll, tokens)
    return {"metrics": metrics, "predictions": predictions}


def _write_examples(path: Path, rows: list[dict[str, Any]], predictions: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row, prediction in zip(rows, predictions, strict=True):
            record = {"id": row["id"], "text": row["text"], "target": row["target"]}
            handle.write(json.dumps(record | {"prediction": prediction}) + "\n")
    return path


def evaluate_generator(package_dir: Path, eval_path: Path, out_dir: Path) -> dict[str, Any]:
    """Score a generative package on the curated eval split.

    Returns:
        ``metrics``, ``artifacts`` (the per-example answers, JSONL) and ``eval_examples``.
    """
    rows = read_jsonl(eval_path)
    scored = score_generator(Generator.from_package(package_dir), rows)
    answers = _write_examples(out_dir / "eval_answers.jsonl", rows, scored["predictions"])
    return {"metrics": scored["metrics"], "artifacts": [str(answers)], "eval_examples": len(rows)}


def base_model_baseline(
    base_model: str,
    eval_path: Path,
    max_length: int,
    max_new_tokens: int,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """The no-training baseline: the base model answering the same prompts, zero-shot."""
    generator = Generator.from_base(base_model, max_length, max_new_tokens, allow_pickle)
    scored = score_generator(generator, read_jsonl(eval_path))
    return {"metrics": scored["metrics"], "method": f"base model '{base_model}', no training"}


evaluate_generator_task = task(name="evaluate_generator", cache_policy=NO_CACHE)(evaluate_generator)
base_model_baseline_task = task(name="base_model_baseline", cache_policy=NO_CACHE)(
    base_model_baseline
)
