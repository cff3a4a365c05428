"""Prompts and token encoding shared by training, scoring and serving a generative package.

A served model formats prompts, truncates and encodes exactly as it did when it was trained
and scored: the SFT and CPT recipes (``tasks/train``) and ``runtime.generate`` both use these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100  # label of a token that carries no loss


#: The prompt format of a tokenizer without a chat template (plain base models).
PLAIN_TEMPLATE = "### Instruction:\n{text}\n\n### Response:\n"


#: Earlier turns of a conversation in the plain format: each role under its own heading.
PLAIN_TURNS = {
    "system": "### System:\n{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "assistant": "### Response:\n{content}\n\n",
}


def render_prompt(tokenizer: Any, text: str, context: list[dict[str, str]] | None = None) -> str:
    """The prompt a decoder sees for a user ``text``: its chat template, or a plain format.

    Args:
        tokenizer: The model's tokenizer (its chat template, if it has one, is used).
        text: The user turn to answer.
        context: The conversation's earlier turns (``{"role", "content"}``, a system turn
            first if any), rendered before ``text``; None or empty for a single turn.
    """
    turns = [*(context or ()), {"role": "user", "content": text}]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False))
    earlier = "".join(PLAIN_TURNS[t["role"]].format(content=t["content"]) for t in turns[:-1])
    return earlier + PLAIN_TEMPLATE.format(text=text)


def source_text(text: str, context: list[dict[str, str]] | None = None) -> str:
    """What an encoder-decoder reads for a user ``text``: the text, after any earlier turns.

    Earlier turns come one per paragraph as ``Role: content``; without them this is ``text``.
    """
    if not context:
        return text
    turns = [*context, {"role": "user", "content": text}]
    return "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns)


@dataclass(frozen=True)
class Encoded:
    """One training example as token ids, with the loss mask applied to ``labels``."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def encode_sft(
    tokenizer: Any,
    text: str,
    target: str,
    max_length: int,
    context: list[dict[str, str]] | None = None,
) -> Encoded:
    """Encode a (prompt, answer) pair for a decoder; only answer tokens carry loss.

    The prompt (``text`` after the earlier turns ``context``, if any) and the answer are
    tokenized separately and joined, so the split point is exact. Over-long pairs keep the end
    of the prompt (where the question usually is) and at least half the budget for the answer.
    """
    rendered = render_prompt(tokenizer, text, context)
    prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(prompt) + len(answer) > max_length
    if truncated:
        keep_prompt = min(len(prompt), max(max_length - len(answer), max_length // 2))
        prompt = prompt[len(prompt) - keep_prompt :]
        answer = answer[: max_length - len(prompt)]
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer, truncated)


def encode_seq2seq(
    tokenizer: Any,
    text: str,
    target: str,
    max_length: int,
    context: list[dict[str, str]] | None = None,
) -> Encoded:
    """Encode a (source, target) pair for an encoder-decoder; labels are the target ids."""
    source = tokenizer(source_text(text, context), add_special_tokens=False)["input_ids"]
    source += [tokenizer.eos_token_id]
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(source) > max_length or len(answer) > max_length
    return Encoded(source[-max_length:], answer[:max_length], truncated)


class PackedCollator:
    """Batch packed rows: pad each to the longest row as one more, separate, ignored segment.

    No attention mask is passed: transformers reads the restarting position ids and builds a
    block-diagonal causal mask, so examples (and padding) never attend to each other. That
    needs the model's ``use_cache`` off during training, or the mask logic assumes generation.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        """Tensors ``input_ids``, ``labels`` and ``position_ids`` of equal width."""
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_id] * pad)
            batch["labels"].append(f["labels"] + [IGNORE] * pad)
            batch["position_ids"].append(f["position_ids"] + list(range(pad)))
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def collator(tokenizer: Any, family: str, packing: bool) -> Any:
    """The batch collator: packed rows (``PackedRows``) for decoders, else padding."""
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"  # training and scoring pad after the text
    if packing and family == "decoder":
        # filler is EOS, not PAD: transformers warns about unmasked padding when it sees PAD
        return PackedCollator(tokenizer.eos_token_id)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)


def chunk_text(tokenizer: Any, text: str, max_length: int) -> list[Encoded]:
    """A document as language-modelling windows of at most ``max_length`` tokens.

    The document ends with EOS; every token carries loss (the first of each window has no
    context, and the model's shift leaves it out). Windows shorter than 2 tokens teach nothing
    and are left out.
    """
    # verbose off: the length warning is moot, the windows below respect max_length
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    ids.append(tokenizer.eos_token_id)
    windows = (ids[start : start + max_length] for start in range(0, len(ids), max_length))
    return [Encoded(w, list(w)) for w in windows if len(w) >= 2]
