"""Generative model packages: prompts, encoding with loss masks, packing, loading, generating.

Shared by the SFT and CPT recipes, evaluation and serving, so a served model formats prompts,
truncates and decodes exactly as it did when it was trained and scored.

A package (kind ``causal-lm`` or ``seq2seq-lm``) is a folder with ``adaptflow_model.json``, the
tokenizer, and either a peft adapter (``adapter/``; the base model is referenced) or full
weights (``weights/``), all safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptflow.errors import SpecError
from tasks.train.encoder import PackageManifest

IGNORE = -100  # label of a token that carries no loss
#: The prompt format of a tokenizer without a chat template (plain base models).
PLAIN_TEMPLATE = "### Instruction:\n{text}\n\n### Response:\n"
#: Earlier turns of a conversation in the plain format: each role under its own heading.
PLAIN_TURNS = {
    "system": "### System:\n{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "assistant": "### Response:\n{content}\n\n",
}
KINDS = {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}


def family_of(kind_or_config: Any) -> str:
    """``decoder`` or ``encoder-decoder``, from a package kind or a model config."""
    if isinstance(kind_or_config, str):
        return "decoder" if kind_or_config == "causal-lm" else "encoder-decoder"
    return "encoder-decoder" if getattr(kind_or_config, "is_encoder_decoder", False) else "decoder"


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


class Examples:
    """Encoded examples as a map-style dataset for the Trainer."""

    def __init__(self, items: list[Encoded]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        item = self.items[i]
        return {"input_ids": item.input_ids, "labels": item.labels}


def pack_rows(items: list[Encoded], capacity: int) -> list[list[Encoded]]:
    """Bin-pack examples into rows of at most ``capacity`` tokens (first fit, longest first).

    Deterministic for the same input. Written here rather than taken from a library because
    transformers only offers "one row per batch" flattening, which on CPU attends densely over
    the whole batch (``benchmarks/bench_sft.py``); rows of ``max_length`` keep attention small.

    Raises:
        ValueError: When an example is longer than ``capacity``.
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    rows: list[list[int]] = []
    free: list[int] = []
    open_rows: list[int] = []  # rows that can still take the shortest example
    shortest = len(items[order[-1]].input_ids) if order else 0
    for i in order:
        size = len(items[i].input_ids)
        if size > capacity:
            raise ValueError(f"example of {size} tokens does not fit a row of {capacity}")
        for r in open_rows:
            if size <= free[r]:
                break
        else:
            r = len(rows)
            rows.append([])
            free.append(capacity)
            open_rows.append(r)
        rows[r].append(i)
        free[r] -= size
        if free[r] < shortest:
            open_rows.remove(r)
    return [[items[i] for i in row] for row in rows]


class PackedRows:
    """Rows of packed examples as a dataset: ids and labels joined, positions restarting.

    The first label of every example is ignored, so no example is trained to predict the start
    of the next one.
    """

    def __init__(self, rows: list[list[Encoded]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for item in self.rows[i]:
            ids += item.input_ids
            labels += [IGNORE] + item.labels[1:]
            positions += list(range(len(item.input_ids)))
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


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


def training_set(items: list[Encoded], packing: bool, capacity: int) -> Any:
    """The Trainer's dataset: packed rows of ``capacity`` tokens, or one example per row."""
    return PackedRows(pack_rows(items, capacity)) if packing else Examples(items)


def collator(tokenizer: Any, family: str, packing: bool) -> Any:
    """The batch collator: packed rows (``PackedRows``) for decoders, else padding."""
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"  # training and scoring pad after the text
    if packing and family == "decoder":
        # filler is EOS, not PAD: transformers warns about unmasked padding when it sees PAD
        return PackedCollator(tokenizer.eos_token_id)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)


def auto_class(family: str) -> Any:
    """The transformers auto class of a model family."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForCausalLM if family == "decoder" else AutoModelForSeq2SeqLM


def load_base_tokenizer(reference: str) -> Any:
    """The base model's tokenizer, with a pad token (GPT-2-style tokenizers ship without one)."""
    from transformers import AutoTokenizer

    from adaptflow.catalogue import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(reference))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def weights_arguments(allow_pickle: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments that decide which weight files may load.

    Safetensors only, unless ``allow_pickle``: then safetensors are still preferred and a
    pickle-based ``pytorch_model.bin`` is the fallback. ``trust_remote_code`` is always off: a
    model that needs custom code from its repository does not load, instead of running it.
    """
    return {"use_safetensors": None if allow_pickle else True, "trust_remote_code": False}


def load_base(
    reference: str,
    family: str | None = None,
    allow_pickle: bool = False,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Load a base model from a catalogue alias, folder or hub id (safetensors unless allowed).

    Args:
        reference: Catalogue alias, folder or hub id.
        family: ``decoder`` or ``encoder-decoder`` (default: read from the config).
        allow_pickle: The spec's ``allow_pickle``: also load pickle-based weights.
        extra: More ``from_pretrained`` arguments (the 4-bit loading of ``qlora``).

    Raises:
        SpecError: When the model has only pickle-based weights and ``allow_pickle`` is off.
    """
    from transformers import AutoConfig

    from adaptflow.catalogue import resolve_base_model

    path = resolve_base_model(reference)
    family = family or family_of(AutoConfig.from_pretrained(path, trust_remote_code=False))
    try:
        return auto_class(family).from_pretrained(
            path, **weights_arguments(allow_pickle), **(extra or {})
        )
    except OSError as exc:
        if allow_pickle or "safetensors" not in str(exc):
            raise
        raise SpecError(pickle_refused(reference)) from None


def pickle_refused(reference: str) -> str:
    """The message for a base model that has only pickle-based weights."""
    return (
        f"base model '{reference}' has no safetensors weights; pickle-based weights "
        "(pytorch_model.bin) can run code when loaded and are refused unless the spec sets "
        "allow_pickle: true"
    )


def qlora_quantization(precision: str = "bf16") -> dict[str, Any]:
    """``BitsAndBytesConfig`` arguments of QLoRA (Dettmers et al. 2023).

    NF4 4-bit weights with double-quantized constants, computing in the training precision
    (bf16 on GPUs that have it; fp16 or fp32 when ``train.precision`` says so).
    """
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": dtypes[precision],
    }


def qlora_loading(precision: str, local_rank: int = 0) -> dict[str, Any]:
    """``from_pretrained`` arguments that load a base for QLoRA onto this process's GPU."""
    from transformers import BitsAndBytesConfig

    quantization = qlora_quantization(precision)
    return {
        "quantization_config": BitsAndBytesConfig(**quantization),
        # 4-bit weights are placed while loading; under torchrun each rank takes its own GPU
        "device_map": {"": local_rank},
        "dtype": quantization["bnb_4bit_compute_dtype"],
    }


def load_generator(folder: Path) -> tuple[Any, Any, PackageManifest]:
    """Load a generative package for inference: (model in eval mode, tokenizer, manifest)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    manifest = PackageManifest.read(folder)
    family = family_of(manifest.kind)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    if manifest.options.get("quantize") == "int8":  # written by tasks.train.export
        from tasks.train.export import load_int8

        model = load_int8(folder / "weights", family)
    elif (folder / "weights").is_dir():
        model = auto_class(family).from_pretrained(str(folder / "weights"), use_safetensors=True)
    else:
        # an adapter over a base that lives only in the package (a CPT stage's output)
        bundled = folder / "base"
        base = str(bundled) if bundled.is_dir() else manifest.base_model
        allow_pickle = bool(manifest.options.get("allow_pickle", False))
        model = PeftModel.from_pretrained(
            load_base(base, family, allow_pickle), str(folder / "adapter")
        )
    model.eval()
    return model, tokenizer, manifest


def generate(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    family: str,
    max_new_tokens: int = 64,
    max_length: int = 512,
    batch_size: int = 16,
    contexts: list[list[dict[str, str]] | None] | None = None,
    raw: bool = False,
) -> list[str]:
    """Greedy answers to ``texts`` (prompts rendered as in training), decoded without specials.

    ``contexts``, when given, holds each text's earlier conversation turns (or None). ``raw``
    continues each text as it is, with no prompt format (a CPT model continues text).
    """
    import torch

    tokenizer.padding_side = "left"  # decoders continue from the right edge of the prompt
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its end (the question)
    turns = contexts or [None] * len(texts)
    inputs = [
        t if raw else render_prompt(tokenizer, t, c) if family == "decoder" else source_text(t, c)
        for t, c in zip(texts, turns, strict=True)
    ]
    answers: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = tokenizer(
                inputs[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=family != "decoder",
            )
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            if family == "decoder":
                output = output[:, batch["input_ids"].shape[1] :]
            answers += [
                text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)
            ]
    return answers


def answer_nll(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    family: str,
    max_length: int,
    contexts: list[list[dict[str, str]] | None] | None = None,
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the answers given the prompts, and token count.

    Exactly the tokens that carry loss in training are scored, so the perplexity of an eval
    set is comparable with the training loss. ``contexts`` holds each pair's earlier turns.
    """
    import torch

    encode = encode_sft if family == "decoder" else encode_seq2seq
    collate = collator(tokenizer, family, packing=False)
    turns = contexts or [None] * len(pairs)
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(pairs), 16):
            chunk = zip(pairs[start : start + 16], turns[start : start + 16], strict=True)
            items = [encode(tokenizer, t, a, max_length, c) for (t, a), c in chunk]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in items])
            labels = batch["labels"][:, 1:] if family == "decoder" else batch["labels"]
            # the model's loss is the mean over scored tokens (virtual tokens of prompt-learning
            # methods included as ignored labels by peft), so the sum is mean x count
            count = int((labels != IGNORE).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    return total, tokens


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


@dataclass(frozen=True)
class TextScore:
    """How well a decoder predicts a set of texts: summed NLL (nats), tokens and top-1 hits."""

    nll: float
    tokens: int
    hits: int

    @property
    def perplexity(self) -> float:
        """exp(mean NLL per predicted token)."""
        from tasks.evaluate.text_metrics import perplexity

        return perplexity(self.nll, self.tokens)

    @property
    def accuracy(self) -> float:
        """Share of tokens predicted exactly (greedy next token)."""
        return self.hits / self.tokens if self.tokens else 0.0


def score_texts(
    model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 16
) -> TextScore:
    """Next-token NLL and accuracy of a decoder on ``texts``, windowed as CPT trains.

    Used for the domain holdout and the general-text forgetting check, so "before" and "after"
    are measured on exactly the same windows.
    """
    import torch

    windows = [w for text in texts for w in chunk_text(tokenizer, text, max_length)]
    windows.sort(key=lambda w: len(w.input_ids))  # similar lengths batch with little padding
    collate = collator(tokenizer, "decoder", packing=False)
    nll, tokens, hits = 0.0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = collate(
                [
                    {"input_ids": w.input_ids, "labels": w.labels}
                    for w in windows[start:][:batch_size]
                ]
            )
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            scored = labels != IGNORE
            nll += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(),
                    labels.reshape(-1),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
            )
            tokens += int(scored.sum())
            hits += int(((logits.argmax(-1) == labels) & scored).sum())
    return TextScore(nll, tokens, hits)
