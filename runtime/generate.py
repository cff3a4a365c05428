"""Answering with a generative package (or a bare base model), and scoring the answers.

One ``Generator`` (a loaded package, or the bare base model) and one ``score_generator`` serve
the candidate, the baseline, the champion's re-scoring and ``predict``, so every number the gate
compares comes from the same prompts, decoding and metrics. ``score_texts`` measures how well a
decoder predicts plain text (the CPT holdout and the forgetting check).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.loading import load_base, load_base_tokenizer, load_generator
from runtime.manifest import family_of
from runtime.prompts import (
    IGNORE,
    chunk_text,
    collator,
    encode_seq2seq,
    encode_sft,
    render_prompt,
    source_text,
    turn_end_id,
)
from runtime.text_metrics import generation_metrics, perplexity


@dataclass(frozen=True)
class Sampling:
    """How answers are decoded: temperature 0 is greedy (the default), above 0 sampled.

    ``top_p`` applies to sampling only; ``repetition_penalty`` (1: none) to both. A ``seed``
    makes sampling repeatable: the same texts, settings and seed give the same answers.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0


def package_decoding(options: dict[str, Any]) -> tuple[Sampling, int]:
    """The decoding a package's manifest options record, and its longest answer.

    A generative package records its spec's ``generation`` settings (``temperature``,
    ``top_p``, ``max_new_tokens``, ``repetition_penalty``, and the spec's ``seed`` its sampled
    answers were scored with). Packages without them answer greedily, with no repetition
    penalty, at most their ``max_new_tokens``.
    """
    generation = options.get("generation") or {}
    limit = generation.get("max_new_tokens") or options.get("max_new_tokens", 64)
    sampling = Sampling(
        temperature=float(generation.get("temperature", 0.0)),
        top_p=float(generation.get("top_p", 1.0)),
        seed=generation.get("seed"),
        repetition_penalty=float(generation.get("repetition_penalty", 1.0)),
    )
    return sampling, int(limit)


def model_inputs(
    tokenizer: Any,
    texts: list[str],
    family: str,
    contexts: list[list[dict[str, str]] | None] | None = None,
    raw: bool = False,
    tools: list[Any] | None = None,
    steps: list[Any] | None = None,
) -> list[str]:
    """The strings the model reads for ``texts``: rendered prompts (or the texts, when raw).

    ``tools`` and ``steps`` hold each text's tool schemas and the tool calls and results before
    its answer (a tool-calling conversation), or None, rendered as in training.
    """
    if raw:
        return list(texts)
    render = render_prompt if family == "decoder" else _source
    return [
        render(tokenizer, t, c, tools=x, steps=s)
        for t, c, x, s in zip(texts, *_per_text(len(texts), contexts, tools, steps), strict=True)
    ]


def _source(tokenizer: Any, text: str, context: Any, **tooling: Any) -> str:
    """``source_text`` with ``render_prompt``'s signature (an encoder-decoder's input)."""
    return source_text(text, context, **tooling)


def _per_text(count: int, *columns: list[Any] | None) -> list[list[Any]]:
    """Each optional per-text column, or ``count`` Nones."""
    return [list(column) if column is not None else [None] * count for column in columns]


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: EOS, the template's end of turn, the generation config's.

    The end of turn is ``turn_end_id``'s (a special token the chat template closes a turn with).

    Llama 3, Gemma and Phi-3 list several (end of turn and end of text) in
    ``generation_config.eos_token_id``; passing the tokenizer's alone would override them.
    """
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [tokenizer.eos_token_id, turn_end_id(tokenizer)]
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


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
    sampling: Sampling | None = None,
    streamer: Any = None,
    tools: list[Any] | None = None,
    steps: list[Any] | None = None,
) -> list[str]:
    """Answers to ``texts`` (prompts rendered as in training), decoded without specials.

    Greedy unless ``sampling`` asks for a temperature (seeded when it has a seed); its
    repetition penalty applies either way. Generation stops at the tokenizer's EOS.
    ``contexts``, when given, holds each text's earlier conversation turns (or None). ``raw``
    continues each text as it is, with no prompt format (a CPT model continues text).
    ``streamer`` (a transformers streamer, one text only) receives the tokens as they come.
    """
    import torch

    tokenizer.padding_side = "left"  # decoders continue from the right edge of the prompt
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its end (the question)
    inputs = model_inputs(tokenizer, texts, family, contexts, raw, tools, steps)
    decoding: dict[str, Any] = {"do_sample": False}
    if sampling is not None and sampling.temperature > 0:
        decoding = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
    if sampling is not None:
        # always passed: a base's generation_config may set its own, and the package's is the
        # one recorded, served and scored
        decoding["repetition_penalty"] = sampling.repetition_penalty
    if streamer is not None:
        decoding["streamer"] = streamer
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
                **decoding,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stop_ids(model, tokenizer),
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
    tools: list[Any] | None = None,
    steps: list[Any] | None = None,
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the answers given the prompts, and token count.

    Exactly the tokens that carry loss in training are scored, so the perplexity of an eval
    set is comparable with the training loss. ``contexts`` holds each pair's earlier turns.
    """
    import torch

    encode = encode_sft if family == "decoder" else encode_seq2seq
    collate = collator(tokenizer, family, packing=False)
    turns, schemas, done = _per_text(len(pairs), contexts, tools, steps)
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(pairs), 16):
            window = slice(start, start + 16)
            chunk = zip(pairs[window], turns[window], schemas[window], done[window], strict=True)
            items = [
                encode(tokenizer, t, a, max_length, c, tools=x, steps=s)
                for (t, a), c, x, s in chunk
            ]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in items])
            labels = batch["labels"][:, 1:] if family == "decoder" else batch["labels"]
            # the model's loss is the mean over scored tokens (virtual tokens of prompt-learning
            # methods included as ignored labels by peft), so the sum is mean x count
            count = int((labels != IGNORE).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    return total, tokens


def answer_logps(
    model: Any,
    tokenizer: Any,
    triples: list[tuple[str, str, list[dict[str, str]] | None]],
    family: str,
    max_length: int,
    batch_size: int = 16,
) -> list[float]:
    """Log p(answer | prompt) of each (text, answer, context), summed over the answer's tokens.

    The tokens scored are those training puts loss on (the answer and its EOS, prompt rendered
    as ``encode_sft`` renders it), so preference metrics judge what preference tuning moved.
    """
    import torch

    encode = encode_sft if family == "decoder" else encode_seq2seq
    collate = collator(tokenizer, family, packing=False)
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(triples), batch_size):
            items = [
                encode(tokenizer, text, answer, max_length, context)
                for text, answer, context in triples[start : start + batch_size]
            ]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in items])
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            labels = batch["labels"]
            if family == "decoder":
                logits, labels = logits[:, :-1], labels[:, 1:]
            logits = logits[:, -labels.shape[1] :]  # prompt-learning methods prepend tokens
            scored = labels != IGNORE
            picked = torch.log_softmax(logits.float(), dim=-1).gather(
                -1, labels.clamp(min=0).unsqueeze(-1)
            )
            out += (picked.squeeze(-1) * scored).sum(dim=1).tolist()
    return out


@dataclass(frozen=True)
class TextScore:
    """How well a decoder predicts a set of texts: summed NLL (nats), tokens and top-1 hits."""

    nll: float
    tokens: int
    hits: int

    @property
    def perplexity(self) -> float:
        """exp(mean NLL per predicted token)."""
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


class Generator:
    """A generative model ready to answer: model, tokenizer, family and decoding settings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        family: str,
        max_length: int,
        max_new_tokens: int,
        raw: bool = False,
        sampling: Sampling | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.raw = raw  # continue the text as it is (CPT packages), no prompt format
        # how it answers when the caller says nothing: the package's settings (greedy default)
        self.sampling = sampling if sampling is not None else Sampling()

    @classmethod
    def from_package(cls, folder: Path) -> Generator:
        """Load a trained package (``causal-lm`` or ``seq2seq-lm``) with its decoding settings.

        See ``package_decoding``: packages from before generation settings answer greedily.
        """
        model, tokenizer, manifest = load_generator(folder)
        sampling, max_new_tokens = package_decoding(manifest.options)
        return cls(
            model,
            tokenizer,
            family_of(manifest.kind),
            manifest.max_length,
            max_new_tokens,
            raw=manifest.options.get("prompt") == "raw",
            sampling=sampling,
        )

    @classmethod
    def from_base(
        cls, base_model: str, max_length: int, max_new_tokens: int, allow_pickle: bool = False
    ) -> Generator:
        """The untrained base model, prompted exactly like a candidate (the baseline)."""
        model = load_base(base_model, allow_pickle=allow_pickle)
        model.eval()
        tokenizer = load_base_tokenizer(base_model)
        return cls(model, tokenizer, family_of(model.config), max_length, max_new_tokens)

    def predict(
        self,
        texts: list[str],
        contexts: list[list[dict[str, str]] | None] | None = None,
        max_new_tokens: int | None = None,
        sampling: Sampling | None = None,
        streamer: Any = None,
        tools: list[Any] | None = None,
        steps: list[Any] | None = None,
    ) -> list[str]:
        """One answer per text (after its earlier conversation turns, if given).

        With the package's decoding settings (``self.sampling``: greedy unless its spec set a
        temperature, sampled then with the seed it was scored with) and ``max_new_tokens``
        unless told otherwise: exactly what the gate scored.
        """
        return generate(
            self.model,
            self.tokenizer,
            texts,
            self.family,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            max_length=self.max_length,
            contexts=contexts,
            raw=self.raw,
            sampling=sampling if sampling is not None else self.sampling,
            streamer=streamer,
            tools=tools,
            steps=steps,
        )


def score_generator(generator: Generator, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Answer every row's ``text`` and compare with its ``target``.

    Rows without a ``target`` (GRPO's prompts judged by a reward model) are answered; the
    answer metrics score the rows that have one (none: no answer metrics).

    Returns:
        ``metrics`` (exact_match, token_f1, rouge1/2/L, perplexity of the targets) and
        ``predictions``.
    """
    texts = [row["text"] for row in rows]
    contexts = [row.get("context") for row in rows]
    # a tool-calling conversation is answered after its tool calls and results, as trained
    tools, steps = [row.get("tools") for row in rows], [row.get("steps") for row in rows]
    predictions = generator.predict(texts, contexts, tools=tools, steps=steps)
    kept = [i for i, row in enumerate(rows) if row.get("target") is not None]
    if rows and not kept:
        return {"metrics": {}, "predictions": predictions}
    targets = [rows[i]["target"] for i in kept]
    metrics = generation_metrics([predictions[i] for i in kept], targets)
    nll, tokens = answer_nll(
        generator.model,
        generator.tokenizer,
        list(zip([texts[i] for i in kept], targets, strict=True)),
        generator.family,
        generator.max_length,
        [contexts[i] for i in kept],
        [tools[i] for i in kept],
        [steps[i] for i in kept],
    )
    metrics["perplexity"] = perplexity(nll, tokens)
    return {"metrics": metrics, "predictions": predictions}
