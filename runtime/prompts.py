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
import os
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
        return apply_template(tokenizer, turns, True)
    earlier = "".join(PLAIN_TURNS[t["role"]].format(content=t["content"]) for t in turns[:-1])
    return earlier + PLAIN_TEMPLATE.format(text=text)


def apply_template(
    tokenizer: Any,
    turns: list[dict[str, Any]],
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """``turns`` through the tokenizer's chat template, as text.

    A template that refuses a system turn (Gemma's raises "System role not supported") gets
    the system text at the head of the first user turn instead, a blank line between, as
    Gemma's own documentation advises; the same fold in training, scoring and serving.

    Raises:
        ValueError: The template fails on the turns for another reason, with its message.
    """
    from jinja2 import TemplateError

    try:
        return str(
            tokenizer.apply_chat_template(
                turns, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
            )
        )
    except TemplateError as error:
        if [turn["role"] for turn in turns[:2]] != ["system", "user"]:
            raise ValueError(
                f"the chat template cannot render this conversation: {error}"
            ) from None
        system, first, *rest = turns
        folded = {**first, "content": f"{system['content']}\n\n{first['content']}"}
        return apply_template(tokenizer, [folded, *rest], generation_prompt, tools)


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
    tokenizer: Any = None  # for token boundaries in ``turn_end``

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
                return apply_template(tokenizer, turns, generation_prompt, tools)

            return cls(messages, train, native, tokenizer)
        turns, trained = as_text_turns(messages, tools, train)
        if not getattr(tokenizer, "chat_template", None):
            return cls(list(turns), trained, _plain, tokenizer)

        def template(turns: list[dict[str, Any]], generation_prompt: bool) -> str:
            return apply_template(tokenizer, turns, generation_prompt)

        return cls(list(turns), trained, template, tokenizer)

    def has_generation_prompt(self, messages: list[dict[str, Any]]) -> bool:
        """Whether the template writes a generation prompt (an assistant header) at the end."""
        return self.render(messages, True) != self.render(messages, False)

    def turn_end(self, messages: list[dict[str, Any]]) -> str:
        """``messages`` rendered through the end of the last turn, trailing whitespace cut.

        Where the last turn ends is where the rendering with a generation prompt and the one
        without part: some templates close a conversation with more than the end of its last
        turn (Phi-3's writes EOS after the final ``<|end|>``), which a later turn would not
        follow. The cut falls on a token boundary of the rendering (the two can share part of
        a token's text, ``<|`` of ``<|assistant|>`` and ``<|end|>``).
        """
        closed = self.render(messages, False)
        try:
            opened = self.render(messages, True)
        except Exception:  # a template that refuses a generation prompt after an assistant turn
            return closed.rstrip()
        common = len(os.path.commonprefix([closed, opened]))
        if common == len(closed) or self.tokenizer is None:
            return closed[:common].rstrip()
        offsets = self.tokenizer(closed, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end for _, end in offsets["offset_mapping"] if end <= common]
        return closed[: max(ends, default=0)].rstrip()

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
            through = self.turn_end(self.messages[: i + 1])
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


_TURN_ENDS: dict[str, int | None] = {}


def turn_end_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with, if there is one.

    Found on a probe conversation: the first token after the answer's text, when it is a
    special token (``<|im_end|>``, ``<|eot_id|>``, Gemma's ``<end_of_turn>``, Phi-3's
    ``<|end|>``). Generation stops there too, whatever the generation config lists.
    Remembered per template; None without a template or when the turn ends in plain text.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    if template not in _TURN_ENDS:
        answer = "adaptflow probe answer"
        messages = [{"role": "user", "content": "probe"}, {"role": "assistant", "content": answer}]
        try:
            chat = _Chat.of(tokenizer, messages, None, {1})
            closed = chat.turn_end(messages)
        except Exception:  # a template that cannot render the probe: no turn end known
            closed = ""
        after = closed.rpartition(answer)[2] if answer in closed else ""
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        added = getattr(tokenizer, "added_tokens_decoder", {})  # Gemma's turn marks live here
        special = set(getattr(tokenizer, "all_special_ids", ()))
        special |= {i for i, token in added.items() if getattr(token, "special", False)}
        _TURN_ENDS[template] = ids[0] if ids and ids[0] in special else None
    return _TURN_ENDS[template]


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

    With a chat template the answer is the assistant turn as the template writes it, through
    its end of turn (``<|im_end|>``, ``<|eot_id|>``, Gemma's ``<end_of_turn>``), then EOS when
    that is another token: the model learns to end its turn as the base does, and to stop.
    A base without a template (the plain format), or a template without a generation prompt,
    gets the answer text then EOS, straight after the prompt as rendered.

    A conversation that takes part in tool use (``tools``, ``steps``, or tool turns in
    ``context``) renders whole through the chat template (``_Chat``): the assistant's turns
    after ``text`` (its tool calls in ``steps``, then the answer) carry loss, every other turn
    (system, user, tool results, earlier exchanges) none. Each trained turn ends with EOS,
    added when the template's end of turn is not the EOS token, so generation stops there.
    """
    messages = [
        *(context or ()),
        {"role": "user", "content": text},
        *(steps or ()),
        {"role": "assistant", "content": target},
    ]
    first = len(context or ()) + 1  # the turns after the last user turn
    train = {i for i in range(first, len(messages)) if messages[i]["role"] == "assistant"}
    if not uses_tools(context, tools, steps):
        chat = _Chat.of(tokenizer, messages, None, train)
        templated = bool(getattr(tokenizer, "chat_template", None))
        if templated and chat.has_generation_prompt(messages[:-1]):
            try:
                return _encode_pieces(tokenizer, chat.pieces(), max_length)
            except ValueError:  # earlier turns render differently once the answer follows
                pass
        # no template (the plain format), or one without a generation prompt: the answer
        # follows the prompt as the template leaves it, and ends with EOS
        rendered = render_prompt(tokenizer, text, context)
        prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return _fit(prompt, answer, list(answer), max_length)
    return _encode_pieces(
        tokenizer, _Chat.of(tokenizer, messages, tools, train).pieces(), max_length
    )


def _encode_pieces(tokenizer: Any, pieces: list[tuple[str, bool]], max_length: int) -> Encoded:
    """A conversation's (text, carries loss) pieces as one example; trained pieces end in EOS.

    The example ends with the last trained piece.
    """
    ids: list[int] = []
    labels: list[int] = []
    for piece, trained in pieces:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        if trained and not (tokenizer.eos_token and piece.endswith(tokenizer.eos_token)):
            piece_ids = [*piece_ids, tokenizer.eos_token_id]
        ids += piece_ids
        labels += piece_ids if trained else [IGNORE] * len(piece_ids)
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    end = len(labels) - next(i for i, label in enumerate(reversed(labels)) if label != IGNORE)
    # what follows the last trained turn (the template's closing newline) teaches nothing
    return _fit(ids[:start], ids[start:end], labels[start:end], max_length)


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

    The source carries the tokenizer's own special tokens (T5's ``… </s>``, BART's
    ``<s> … </s>``), exactly as generation encodes it; an over-long source keeps its end and
    its specials. Tool use (``tools``, ``steps``) is read as text, as ``source_text`` writes it.
    """
    body = tokenizer(source_text(text, context, tools, steps), add_special_tokens=False)
    first, last = _specials(tokenizer)
    keep = max(max_length - len(first) - len(last), 1)
    source_ids = first + body["input_ids"][-keep:] + last
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(body["input_ids"]) > keep or len(answer) > max_length
    return Encoded(source_ids, answer[:max_length], truncated)


def _specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (its post-processor's specials).

    transformers 5's tokenizers no longer offer ``build_inputs_with_special_tokens``: found
    by encoding a probe with and without them.
    """
    probe = "adaptflow probe"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], [tokenizer.eos_token_id]  # specials that merge into the text: EOS, as before


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
