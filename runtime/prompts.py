"""Prompts and token encoding shared by training, scoring and serving a generative package.

A served model formats prompts, truncates and encodes exactly as it did when it was trained
and scored: the SFT and CPT recipes (``tasks/train``) and ``runtime.generate`` both use these.

Conversations that call tools (turns in the OpenAI shape: assistant ``tool_calls``, ``tool``
turns, and the function schemas ``tools``) render through the tokenizer's own chat template,
``apply_chat_template(messages, tools=tools)``, when that template can render them. A base
whose template cannot (or that has none) gets them as text: each call as a
``<tool_call>{"name", "arguments"}</tool_call>`` line of the assistant's turn, results as a
user turn of ``<tool_response>`` blocks, and the schemas listed in the system turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IGNORE = -100  # label of a token that carries no loss


#: The prompt format of a tokenizer without a chat template (plain base models).
PLAIN_TEMPLATE = "### Instruction:\n{text}\n\n### Response:\n"
#: Where the plain format's answer starts (its generation prompt).
PLAIN_RESPONSE = "### Response:\n"


#: Earlier turns of a conversation in the plain format: each role under its own heading.
PLAIN_TURNS = {
    "system": "### System:\n{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "assistant": "### Response:\n{content}\n\n",
}


def render_prompt(
    tokenizer: Any,
    text: str,
    context: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt a decoder sees for a user ``text``: its chat template, or a plain format.

    Args:
        tokenizer: The model's tokenizer (its chat template, if it has one, is used).
        text: The user turn to answer.
        context: The conversation's earlier turns (``{"role", "content"}``, a system turn
            first if any), rendered before ``text``; None or empty for a single turn.
        tools: The function schemas the conversation may call, if any.
        steps: Tool calls and their results after ``text``, if any: the answer comes next.
    """
    if uses_tools(context, tools, steps):
        messages = [*(context or ()), {"role": "user", "content": text}, *(steps or ())]
        chat = _Chat.of(tokenizer, messages, tools, set())
        return chat.render(chat.messages, True)
    turns = [*(context or ()), {"role": "user", "content": text}]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False))
    earlier = "".join(PLAIN_TURNS[t["role"]].format(content=t["content"]) for t in turns[:-1])
    return earlier + PLAIN_TEMPLATE.format(text=text)


def uses_tools(
    context: list[dict[str, Any]] | None,
    tools: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> bool:
    """Whether a conversation takes part in tool use (and renders as ``_Chat`` renders it)."""
    return bool(tools or steps) or any(
        turn.get("tool_calls") or turn["role"] == "tool" for turn in context or ()
    )


def _call_text(call: dict[str, Any]) -> str:
    """A tool call as text, as Hermes-style templates (Qwen2.5's among them) write it."""
    return f"<tool_call>\n{json.dumps(call['function'], ensure_ascii=False)}\n</tool_call>"


def turn_text(turn: dict[str, Any]) -> str:
    """A turn's content, then its tool calls (``_call_text``), one per line."""
    calls = [_call_text(call) for call in turn.get("tool_calls", ())]
    return "\n".join([turn["content"]] * bool(turn["content"]) + calls)


#: The system turn's listing of the tools, for bases whose template cannot render ``tools``.
TOOLS_HEADER = (
    'You may call these tools. To call one, write <tool_call>{"name": ..., "arguments": ...}'
    "</tool_call>; each result comes back in a <tool_response> block.\nTools:\n"
)


def as_text_turns(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, train: set[int]
) -> tuple[list[dict[str, str]], set[int]]:
    """A tool conversation as plain system/user/assistant turns, and its trained turns' indices.

    For a base whose chat template cannot render tools (or that has none): calls become text
    in the assistant's turn, the results of one round of calls one user turn (which keeps user
    and assistant alternating, as strict templates demand), and the schemas part of the system
    turn.
    """
    turns: list[dict[str, str]] = []
    trained = set()
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if i > 0 and messages[i - 1]["role"] == "tool":
                turns[-1] = {"role": "user", "content": turns[-1]["content"] + "\n" + block}
            else:
                turns.append({"role": "user", "content": block})
            continue
        if i in train:
            trained.add(len(turns))
        turns.append({"role": message["role"], "content": turn_text(message)})
    if tools:
        listing = TOOLS_HEADER + "\n".join(
            json.dumps(tool["function"], ensure_ascii=False) for tool in tools
        )
        if turns and turns[0]["role"] == "system":
            turns[0] = {"role": "system", "content": f"{turns[0]['content']}\n\n{listing}"}
        else:
            turns.insert(0, {"role": "system", "content": listing})
            trained = {i + 1 for i in trained}
    return turns, trained


#: A probe conversation: a template that renders tools shows each of these names.
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "adaptflow_probe_tool",
            "description": "A probe.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
_PROBE = [
    {"role": "user", "content": "probe"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "adaptflow_probe_call", "arguments": {}}}
        ],
    },
    {"role": "tool", "content": "adaptflow_probe_result"},
]
_RENDERS_TOOLS: dict[str, bool] = {}


def renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tool schemas, tool calls and results.

    Tried on a probe conversation (templates say nothing about what they support): a template
    that drops any of the three, or fails on them (an unknown ``tool`` role), cannot be
    trusted with tools. Remembered per template.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template not in _RENDERS_TOOLS:
        try:
            shown = str(
                tokenizer.apply_chat_template(
                    _PROBE, tools=_PROBE_TOOLS, add_generation_prompt=True, tokenize=False
                )
            )
        except Exception:  # a template's own raise_exception, or a jinja error: not tool-aware
            shown = ""
        names = ("adaptflow_probe_tool", "adaptflow_probe_call", "adaptflow_probe_result")
        _RENDERS_TOOLS[template] = all(name in shown for name in names)
    return _RENDERS_TOOLS[template]


def _plain(turns: list[dict[str, Any]], generation_prompt: bool) -> str:
    """Turns in the plain format (a base without a chat template)."""
    text = "".join(PLAIN_TURNS[t["role"]].format(content=t["content"]) for t in turns)
    return text + (PLAIN_RESPONSE if generation_prompt else "")


@dataclass(frozen=True)
class _Chat:
    """A tool conversation as its base renders it: the messages, and how to render a prefix.

    ``train`` holds the indices of the assistant turns that carry loss.
    """

    messages: list[dict[str, Any]]
    train: set[int]
    render: Callable[[list[dict[str, Any]], bool], str]

    @classmethod
    def of(
        cls,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        train: set[int],
    ) -> _Chat:
        """The base's own template with ``tools`` if it renders them, else the turns as text."""
        if renders_tools(tokenizer):

            def native(turns: list[dict[str, Any]], generation_prompt: bool) -> str:
                return str(
                    tokenizer.apply_chat_template(
                        turns, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
                    )
                )

            return cls(messages, train, native)
        turns, trained = as_text_turns(messages, tools, train)
        if not getattr(tokenizer, "chat_template", None):
            return cls(list(turns), trained, _plain)

        def template(turns: list[dict[str, Any]], generation_prompt: bool) -> str:
            return str(
                tokenizer.apply_chat_template(
                    turns, add_generation_prompt=generation_prompt, tokenize=False
                )
            )

        return cls(list(turns), trained, template)

    def pieces(self) -> list[tuple[str, bool]]:
        """The whole conversation as consecutive (text, carries loss) pieces.

        A trained turn's piece runs from where the template's generation prompt ends to the
        end of the turn as the template writes it (its end-of-turn token included, trailing
        whitespace not): found by rendering the conversation up to each trained turn, which
        must render as a prefix of the whole.

        Raises:
            ValueError: The template renders an earlier part of the conversation differently
                once later turns follow (some templates drop earlier reasoning), so the
                trained turns cannot be found.
        """
        whole = self.render(self.messages, False)
        pieces, done = [], 0
        for i in sorted(self.train):
            before = self.render(self.messages[:i], True)
            through = self.render(self.messages[: i + 1], False).rstrip()
            if not (whole.startswith(before) and whole.startswith(through)):
                raise ValueError(
                    f"the chat template renders the conversation up to turn {i} differently "
                    "from the start of the whole conversation, so its assistant turns cannot "
                    "be told apart for the loss"
                )
            pieces += [
                (whole[done : len(before)], False),
                (whole[len(before) : len(through)], True),
            ]
            done = len(through)
        return [*pieces, (whole[done:], False)]


def source_text(
    text: str,
    context: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> str:
    """What an encoder-decoder reads for a user ``text``: the text, after any earlier turns.

    Earlier turns come one per paragraph as ``Role: content``; without them this is ``text``.
    A tool conversation reads as ``as_text_turns`` writes it, the tool calls and results
    after ``text`` (``steps``) included.
    """
    if not uses_tools(context, tools, steps):
        if not context:
            return text
        turns = [*context, {"role": "user", "content": text}]
    else:
        messages = [*(context or ()), {"role": "user", "content": text}, *(steps or ())]
        turns, _ = as_text_turns(messages, tools, set())
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
    context: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> Encoded:
    """Encode a (prompt, answer) pair for a decoder; only answer tokens carry loss.

    The prompt (``text`` after the earlier turns ``context``, if any) and the answer are
    tokenized separately and joined, so the split point is exact. Over-long pairs keep the end
    of the prompt (where the question usually is) and at least half the budget for the answer.

    A conversation that takes part in tool use (``tools``, ``steps``, or tool turns in
    ``context``) renders whole through the chat template (``_Chat``): the assistant's turns
    after ``text`` (its tool calls in ``steps``, then the answer) carry loss, every other turn
    (system, user, tool results, earlier exchanges) none. Each trained turn ends with EOS,
    added when the template's end of turn is not the EOS token, so generation stops there.
    """
    if not uses_tools(context, tools, steps):
        rendered = render_prompt(tokenizer, text, context)
        prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return _fit(prompt, answer, list(answer), max_length)
    messages = [
        *(context or ()),
        {"role": "user", "content": text},
        *(steps or ()),
        {"role": "assistant", "content": target},
    ]
    first = len(context or ()) + 1  # the turns after the last user turn
    train = {i for i in range(first, len(messages)) if messages[i]["role"] == "assistant"}
    ids: list[int] = []
    labels: list[int] = []
    for piece, trained in _Chat.of(tokenizer, messages, tools, train).pieces():
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        if trained and not (tokenizer.eos_token and piece.endswith(tokenizer.eos_token)):
            piece_ids = [*piece_ids, tokenizer.eos_token_id]
        ids += piece_ids
        labels += piece_ids if trained else [IGNORE] * len(piece_ids)
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    return _fit(ids[:start], ids[start:], labels[start:], max_length)


def _fit(prompt: list[int], answer: list[int], labels: list[int], max_length: int) -> Encoded:
    """``prompt`` then ``answer`` (carrying ``labels``) cut to ``max_length`` tokens.

    Over-long pairs keep the end of the prompt and at least half the budget for the answer.
    """
    truncated = len(prompt) + len(answer) > max_length
    if truncated:
        keep_prompt = min(len(prompt), max(max_length - len(answer), max_length // 2))
        prompt = prompt[len(prompt) - keep_prompt :]
        answer = answer[: max_length - len(prompt)]
        labels = labels[: len(answer)]
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + labels, truncated)


def encode_seq2seq(
    tokenizer: Any,
    text: str,
    target: str,
    max_length: int,
    context: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> Encoded:
    """Encode a (source, target) pair for an encoder-decoder; labels are the target ids.

    Tool use (``tools``, ``steps``) is read as text, as ``source_text`` writes it.
    """
    source = tokenizer(source_text(text, context, tools, steps), add_special_tokens=False)
    source_ids = source["input_ids"] + [tokenizer.eos_token_id]
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(source_ids) > max_length or len(answer) > max_length
    return Encoded(source_ids[-max_length:], answer[:max_length], truncated)


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
