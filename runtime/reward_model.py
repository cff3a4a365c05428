"""Scoring answers with a reward model package (kind ``reward-model``, method ``reward``).

A reward model is a base model (decoder or encoder) with a scalar head: it reads a prompt and an
answer and returns one number, higher for answers people prefer. Training
(``tasks/train/reward.py``), evaluation, ``predict``, ``POST /v1/classify`` and GRPO's
``kind: model`` reward all build its input with ``reward_ids`` below, so the score a policy is
trained against is the score the reward model was judged on.

Input: the prompt rendered as every generative path renders it (``runtime.prompts``: the
tokenizer's chat template, or the plain format), then the answer, then EOS (TRL's reward
trainer appends it), tokenized as generation tokenizes it: a decoder's with no special token
added, an encoder's wrapped in its own. Longer inputs keep the end for a decoder (its score is
read at the last token) and the start for an encoder (its score is read at the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptflow.catalogue import resolve_base_model
from adaptflow.errors import RegistryError
from runtime.loading import load_adapter, weights_arguments
from runtime.manifest import PackageManifest
from runtime.prompts import render_prompt

KIND = "reward-model"


def reward_ids(
    tokenizer: Any,
    prompt: str,
    answer: str,
    max_length: int,
    decoder: bool,
    context: list[dict[str, str]] | None = None,
) -> list[int]:
    """The token ids a reward model reads for ``answer`` to ``prompt`` (see the module)."""
    text = render_prompt(tokenizer, prompt, context) + answer
    eos = tokenizer.eos_token
    if decoder and eos is not None and not text.endswith(eos):
        text += eos
    # a decoder reads the rendered text as it is (the template writes its special tokens; a
    # tokenizer that adds a BOS, as Llama 3's and Gemma's do, would double it), as generation
    # and SFT tokenize it; an encoder needs its own around the text ([CLS] ... [SEP])
    ids: list[int] = tokenizer(text, add_special_tokens=not decoder)["input_ids"]
    if len(ids) > max_length:
        ids = ids[-max_length:] if decoder else ids[:max_length]
    return ids


def scores_of(
    model: Any, tokenizer: Any, ids: list[list[int]], batch_size: int = 32
) -> list[float]:
    """The scalar head's output for each sequence of token ids (padded per batch)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            width = max(len(row) for row in batch)
            # right padding: transformers' classifiers find a decoder's last real token from
            # config.pad_token_id, and an encoder reads its first token
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            out.extend(float(v) for v in logits[:, 0].float())
    return out


class RewardModel:
    """A reward model: (prompt, answer) in, one score out."""

    def __init__(self, model: Any, tokenizer: Any, decoder: bool, max_length: int) -> None:
        """Wrap a loaded sequence classifier with one output (in eval mode)."""
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = decoder  # where the score is read: the last token, or the first
        self.max_length = max_length

    @classmethod
    def from_package(cls, folder: Path) -> RewardModel:
        """Load a ``reward-model`` package: the base with its head and adapter, or weights.

        Raises:
            RegistryError: When the package is of another kind.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        manifest = PackageManifest.read(folder)
        if manifest.kind != KIND:
            raise RegistryError(
                f"{folder}: a '{manifest.kind}' package, not a reward model (method reward)"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        head = {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
        if (folder / "weights").is_dir():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder / "weights"), use_safetensors=True, **head
            )
        else:
            allow_pickle = bool(manifest.options.get("allow_pickle", False))
            base = AutoModelForSequenceClassification.from_pretrained(
                resolve_base_model(manifest.base_model), **weights_arguments(allow_pickle), **head
            )
            model = load_adapter(base, folder / "adapter")
        return cls(model, tokenizer, bool(manifest.options["decoder"]), manifest.max_length)

    @classmethod
    def from_base(
        cls, base_model: str, max_length: int, seed: int, allow_pickle: bool = False
    ) -> RewardModel:
        """The base model with a fresh scalar head drawn from ``seed``: the untrained baseline."""
        from transformers import AutoModelForSequenceClassification, set_seed

        from adaptflow.catalogue import base_family
        from runtime.loading import load_base_tokenizer

        tokenizer = load_base_tokenizer(base_model)
        set_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(base_model),
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            **weights_arguments(allow_pickle),
        )
        return cls(model, tokenizer, base_family(base_model) == "decoder", max_length)

    def score(
        self,
        prompts: list[str],
        answers: list[str],
        contexts: list[list[dict[str, str]] | None] | None = None,
    ) -> list[float]:
        """One reward per (prompt, answer); ``contexts``: each prompt's earlier turns."""
        turns = contexts or [None] * len(prompts)
        ids = [
            reward_ids(self.tokenizer, p, a, self.max_length, self.decoder, c)
            for p, a, c in zip(prompts, answers, turns, strict=True)
        ]
        return scores_of(self.model, self.tokenizer, ids)

    def predict(self, texts: list[str]) -> list[float]:
        """A score per text, read as an answer to an empty prompt (``score`` takes prompts)."""
        return self.score([""] * len(texts), texts)

    def classify(self, texts: list[str], prompts: list[str] | None = None) -> list[dict[str, Any]]:
        """``POST /v1/classify``: per text its ``score`` (``prompts``: what each answers)."""
        scores = self.score(prompts or [""] * len(texts), texts)
        return [{"score": s} for s in scores]
