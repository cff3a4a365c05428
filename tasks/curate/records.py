"""Read labelled records from JSONL, CSV or Parquet, quarantining malformed ones.

Every input record ends up either in the returned records or in the quarantine list with its
file, line, reason and raw text, so input = kept + quarantined always holds. Reading never
stops on a bad line. JSONL and CSV files may be gzip-compressed (named ``.jsonl.gz``, or a
compressed file under the plain name): they are read through ``gzip`` transparently.

Generative data may also come in three common shapes (``Fields.format``, JSONL, JSON and
Parquet): Alpaca (``instruction``, optional ``input``, ``output``), OpenAI chat messages
(``messages``: an optional system turn, then user/assistant turns ending with the assistant's)
and ShareGPT conversations (``conversations`` of ``{"from", "value"}`` turns, LLaMA-Factory's
form). A conversation's last user turn becomes the record's ``text``, the turns before it its
``context`` and the final assistant turn its ``target``. A message's ``content`` is a string or
a list of text parts (``{"type": "text", "text": ...}``, or ``value`` as LLaMA-Factory's v1
files write it; joined); a part of any other type (an image) quarantines the record.

Both chat shapes may call tools: OpenAI assistant turns with ``tool_calls`` answered by
``tool`` turns (``tool_call_id``), ShareGPT ``function_call`` turns answered by
``observation`` turns, and the function schemas in a top-level ``tools`` (a list, or a JSON
string of one). Tool calls and results after the last user turn are the record's ``steps``
(trained on with the answer); its ``tools`` are the schemas, in OpenAI's
``{"type": "function", "function": {...}}`` form.

Alignment data comes in TRL's shapes: ``preference`` (``prompt``, ``chosen``, ``rejected``;
also the implicit-prompt form, two full conversations whose shared leading turns are the
prompt, and LLaMA-Factory's ShareGPT ranking form, ``conversations`` with ``chosen`` and
``rejected`` turns) and ``kto`` (``prompt``, ``completion``, a boolean ``label``). The prompt
becomes ``text`` and ``context`` as for a conversation; a pair's chosen answer is its
``target`` and the rejected one its ``rejected``; a KTO completion is the ``target`` and its
label ``desirable`` or ``undesirable``.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

from adaptflow.errors import DataError
from adaptflow.inputs import UNREADABLE_KEY, DatasetView, hf_source_of, origin, view_of
from adaptflow.jsonl import read_jsonl, write_jsonl  # noqa: F401  (importable from here too)
from adaptflow.spec import data_suffix

LABEL_TYPES = (str, int, bool)
#: Input formats: ``fields`` (the spec's text/label/target fields), ``alpaca``, ``messages``,
#: ``preference``, ``kto``, or ``auto`` (per file, from its first JSON object).
FORMATS = ("auto", "fields", "alpaca", "messages", "sharegpt", "preference", "kto")
#: Formats that carry a record's fields themselves, and the file types they are read from.
SHAPED_FORMATS = ("alpaca", "messages", "sharegpt", "preference", "kto")
SHAPED_SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")
#: ShareGPT's speaker names (``from``) and the roles they stand for.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
#: ShareGPT's tool speakers: a ``function_call`` is an assistant turn calling tools, an
#: ``observation`` the tool turn answering it.
SHAREGPT_TOOL_ROLES = {"function_call": "assistant", "observation": "tool"}
#: A KTO record's boolean ``label`` as the curated label.
KTO_LABELS = {True: "desirable", False: "undesirable"}


@dataclass(frozen=True)
class Record:
    """One usable record: its id, text and (for classification) label.

    For a conversation, ``text`` is the last user turn, ``target`` the answer to it and
    ``context`` the turns before it (``{"role", "content"}`` dicts, the system turn included);
    ``context`` is None for single-turn records. A preference pair's ``target`` is its chosen
    answer and ``rejected`` its rejected one; a KTO record's ``target`` is its completion and
    ``label`` ``desirable`` or ``undesirable``.

    A conversation that calls tools keeps its turns in the OpenAI shape: an assistant turn
    may carry ``tool_calls`` (``[{"type": "function", "function": {"name", "arguments"}}]``,
    with an ``id`` when the input had one) and a ``tool`` turn holds a result (its
    ``tool_call_id`` when the input had one). ``steps`` are the turns between ``text`` and
    ``target`` (the assistant's tool calls and their results), None when there are none;
    ``tools`` the function schemas the conversation may call, None when it names none.
    """

    id: str
    text: str
    label: str | None = None
    target: str | None = None
    file: str = ""  # where it was read (for the quarantine); not written to curated output
    line: int = 0
    context: list[dict[str, Any]] | None = None
    rejected: str | None = None
    steps: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None

    @property
    def full_text(self) -> str:
        """The prompt side as one string: earlier turns, ``text``, then any tool steps.

        What the blocks that compare records use (dedup, decontamination), so two
        conversations that end with the same user turn are not taken for duplicates. A turn's
        tool calls count as its text (two calls of different tools are different prompts).
        """
        if not self.context and not self.steps:
            return self.text
        turns = [*(self.context or ()), {"content": self.text}, *(self.steps or ())]
        return "\n\n".join(turn_text(turn) for turn in turns)


def turn_text(turn: dict[str, Any]) -> str:
    """A turn's content, followed by its tool calls as JSON lines (if it makes any)."""
    calls = [
        json.dumps(call["function"], ensure_ascii=False) for call in turn.get("tool_calls", ())
    ]
    return "\n".join([turn["content"], *calls]) if calls else turn["content"]


@dataclass(frozen=True)
class Quarantined:
    """A record that could not be used, with where it was and why."""

    file: str
    line: int
    reason: str
    raw: str


@dataclass
class ReadResult:
    """Records read from one source, and what was set aside."""

    records: list[Record] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    blank_lines: int = 0

    @property
    def input(self) -> int:
        """Count of input records (blank lines are not records)."""
        return len(self.records) + len(self.quarantined)


@dataclass(frozen=True)
class Fields:
    """Which fields of a raw record hold what (the spec's ``data`` block)."""

    text: str = "text"
    label: str | None = "label"
    target: str | None = None
    id: str | None = None
    format: str = "fields"  # one of FORMATS
    target_optional: bool = False  # a missing or empty target is None, not a quarantine reason


def _has_surrogates(value: str) -> bool:
    # Bytes that are not valid UTF-8 come back as lone surrogates under "surrogateescape".
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _lone_surrogate(record: Record) -> str | None:
    r"""Why ``record`` cannot be written as UTF-8, or None.

    A JSON string may hold an escaped lone surrogate (``"\ud800"``): valid JSON, but no
    Unicode character, so it cannot be encoded; the record is quarantined with the field.
    """
    values: list[tuple[str, str | None]] = [
        ("text", record.text), ("label", record.label), ("target", record.target),
        ("rejected", record.rejected), ("id", record.id),
    ]  # fmt: skip
    values += [(f"turn {i + 1}", turn_text(turn)) for i, turn in enumerate(record.context or [])]
    values += [(f"step {i + 1}", turn_text(turn)) for i, turn in enumerate(record.steps or [])]
    if record.tools:
        values.append(("tools", json.dumps(record.tools, ensure_ascii=False)))
    for name, value in values:
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            return (
                f"field '{name}' holds a lone surrogate escape (\\u{code:04x}): valid JSON, "
                "but not valid Unicode text"
            )
    return None


GZIP_MAGIC = b"\x1f\x8b"


def _open_text(path: Path, encoding: str) -> Any:
    """``path`` opened as text, through ``gzip`` when its bytes are gzip-compressed."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rt", encoding=encoding, errors="surrogateescape", newline="")
    return path.open("r", encoding=encoding, errors="surrogateescape", newline="")


def _printable(raw: str) -> str:
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _record_id(obj: dict[str, Any], fields: Fields, default_id: str) -> str | None:
    """The record's id, or None when the id field is missing or empty."""
    if not fields.id:
        return default_id
    if obj.get(fields.id) in (None, ""):
        return None
    return str(obj[fields.id])


def _string(obj: dict[str, Any], name: str, required: bool = True) -> str:
    """Field ``name`` as a string, or raise ValueError with the reason it is not usable."""
    if name not in obj:
        raise ValueError(f"missing field '{name}'")
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' must be a string, got {_type_name(value)}")
    if _has_surrogates(value):
        raise ValueError(f"invalid UTF-8 in field '{name}'")
    if required and not value.strip():
        raise ValueError(f"field '{name}' is empty")
    return value


#: Record fields read from a shaped object (``text`` and ``target``, and what else it has).
Shaped = dict[str, Any]


def _alpaca(obj: dict[str, Any]) -> Shaped:
    """An Alpaca object: the instruction (+ input) is the text and the output the target."""
    instruction = _string(obj, "instruction")
    extra = _string(obj, "input", required=False) if obj.get("input") is not None else ""
    output = _string(obj, "output")
    text = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"text": text, "target": output}


#: Where a text part holds its text: OpenAI's ``text``, or ``value`` (LLaMA-Factory's v1 files).
TEXT_PART_KEYS = ("text", "value")


def _part_text(part: Any) -> str | None:
    """The text of a text part (``{"type": "text", "text" | "value": ...}``), else None."""
    if not isinstance(part, dict) or part.get("type") != "text":
        return None
    for key in TEXT_PART_KEYS:
        if isinstance(part.get(key), str):
            return str(part[key])
    return None


def _content(where: str, content: Any, optional: bool = False) -> str:
    """A message's content as one string: a string, or a list of text parts joined.

    Any other part (an image, an unknown type) is a ValueError: only text can be trained on.
    With ``optional`` (an assistant turn that calls tools, a tool's result) the content may be
    null or empty, and is then "".
    """
    if optional and content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            text = _part_text(part)
            if text is None:
                raise ValueError(
                    f"{where}[{j}] must be a text part {{'type': 'text', 'text': ...}}"
                )
            texts.append(text)
        content = "".join(texts)  # as the OpenAI API joins them (serve/schemas.py too)
    elif not isinstance(content, str):
        raise ValueError(
            f"{where} must be a string or a list of text parts, got {_type_name(content)}"
        )
    if _has_surrogates(content):
        raise ValueError(f"invalid UTF-8 in {where}")
    if not optional and not content.strip():
        raise ValueError(f"{where} is empty")
    return content


def _function(where: str, value: Any) -> dict[str, Any]:
    """A function call ``{"name", "arguments"}``, its arguments an object, or ValueError.

    Arguments may come as a JSON string (the OpenAI API sends them so); they are parsed,
    because chat templates write them with ``tojson`` and would quote a string twice.
    """
    if not isinstance(value, dict):
        raise ValueError(
            f"{where} must be an object {{'name', 'arguments'}}, got {_type_name(value)}"
        )
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name must be a non-empty string, got {name!r}")
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}.arguments is not valid JSON: {exc.msg}") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}.arguments must be an object, got {_type_name(arguments)}")
    return {"name": name, "arguments": arguments}


def _tool_call(where: str, call: Any) -> dict[str, Any]:
    """One OpenAI tool call as ``{"type": "function", "function": {...}}`` (and its ``id``)."""
    if not isinstance(call, dict):
        raise ValueError(f"{where} must be an object, got {_type_name(call)}")
    if call.get("type", "function") != "function":
        raise ValueError(f"{where}.type must be 'function', got {call['type']!r}")
    wrapped = "function" in call  # else the flat {"name", "arguments"} some datasets write
    parsed: dict[str, Any] = {
        "type": "function",
        "function": _function(
            f"{where}.function" if wrapped else where, call.get("function", call)
        ),
    }
    call_id = call.get("id")
    if call_id is not None:
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"{where}.id must be a non-empty string, got {call_id!r}")
        parsed["id"] = call_id
    return parsed


def _openai_tool_turn(where: str, role: str, message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message that may take part in tool use, or ValueError."""
    content = message.get("content")
    calls = message.get("tool_calls")
    if role == "assistant" and calls not in (None, []):
        if not isinstance(calls, list):
            raise ValueError(f"{where}.tool_calls must be a list, got {_type_name(calls)}")
        return {
            "role": "assistant",
            "content": _content(f"{where}.content", content, optional=True),
            "tool_calls": [_tool_call(f"{where}.tool_calls[{k}]", c) for k, c in enumerate(calls)],
        }
    if role != "tool":
        return {"role": role, "content": _content(f"{where}.content", content)}
    turn = {"role": "tool", "content": _content(f"{where}.content", content, optional=True)}
    for key in ("tool_call_id", "name"):
        value = message.get(key)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}.{key} must be a non-empty string, got {value!r}")
            turn[key] = value
    return turn


def _sharegpt_tool_turn(where: str, speaker: str, message: dict[str, Any]) -> dict[str, Any]:
    """A ShareGPT turn that may take part in tool use, or ValueError.

    A ``function_call``'s value is a call ``{"name", "arguments"}`` or a list of them (as JSON
    text, LLaMA-Factory's form, or as JSON values); an ``observation``'s is the result.
    """
    value = message["value"]
    if speaker == "observation":
        return {"role": "tool", "content": _content(f"{where}.value", value, optional=True)}
    if speaker != "function_call":
        return {"role": SHAREGPT_ROLES[speaker], "content": _content(f"{where}.value", value)}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}.value of a function_call must be JSON, a call {{'name', 'arguments'}} "
                f"or a list of them: {exc.msg}"
            ) from None
    listed = isinstance(value, list)
    if listed and not value:
        raise ValueError(f"{where}.value of a function_call holds no call")
    calls = [
        {
            "type": "function",
            "function": _function(f"{where}.value[{k}]" if listed else f"{where}.value", c),
        }
        for k, c in enumerate(value if listed else [value])
    ]
    return {"role": "assistant", "content": "", "tool_calls": calls}


def _turn(where: str, message: Any, sharegpt: bool = False, tools: bool = False) -> dict[str, Any]:
    """One message as {"role", "content"} (other keys dropped), or ValueError.

    An OpenAI message (``role``, ``content``), or with ``sharegpt`` a ShareGPT one (``from``:
    ``system``, ``human`` or ``gpt``; ``value``). With ``tools`` the turns of tool use too:
    OpenAI ``tool`` turns and assistant ``tool_calls`` (kept), ShareGPT ``function_call`` and
    ``observation`` turns (as assistant tool calls and ``tool`` turns).
    """
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    roles = dict(SHAREGPT_ROLES) if sharegpt else {role: role for role in ROLES}
    if tools:
        roles |= SHAREGPT_TOOL_ROLES if sharegpt else {"tool": "tool"}
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object, got {_type_name(message)}")
    for key in (role_key, content_key):
        # an OpenAI assistant turn that calls tools may leave its content out
        calls = tools and not sharegpt and key == content_key and "tool_calls" in message
        if key not in message and not calls:
            raise ValueError(f"{where}: missing field '{key}'")
    role = message[role_key]
    if not isinstance(role, str) or role not in roles:
        expected = ", ".join(f"'{r}'" for r in roles)
        raise ValueError(f"{where}.{role_key} must be one of {expected}, got {role!r}")
    if tools and sharegpt:
        return _sharegpt_tool_turn(where, role, message)
    if tools:
        return _openai_tool_turn(where, role, message)
    return {
        "role": roles[role],
        "content": _content(f"{where}.{content_key}", message[content_key]),
    }


#: A tool call awaiting its result: the index of the turn that made it, and the call.
Pending = list[tuple[int, dict[str, Any]]]


def _unanswered(name: str, pending: Pending, sharegpt: bool) -> str:
    """Why a conversation with a call still ``pending`` is broken: the call, and where."""
    index, call = pending[0]
    function = call["function"]["name"]
    if sharegpt:
        return f"{name}[{index}]: function_call '{function}' is not followed by an observation"
    call_id = f" (id '{call['id']}')" if "id" in call else ""
    return f"{name}[{index}]: tool call '{function}'{call_id} has no tool turn answering it"


def _take_result(
    name: str, index: int, turn: dict[str, Any], pending: Pending, sharegpt: bool
) -> Pending:
    """The calls still pending once tool turn ``index`` answers one of them, or ValueError.

    A result names its call by ``tool_call_id``, or (without one) answers the first pending.
    """
    call_id = turn.get("tool_call_id")
    if call_id is not None:
        for k, (_, call) in enumerate(pending):
            if call.get("id") == call_id:
                return pending[:k] + pending[k + 1 :]
        raise ValueError(
            f"{name}[{index}].tool_call_id '{call_id}' matches no earlier tool call "
            "awaiting a result"
        )
    if not pending:
        if sharegpt:
            raise ValueError(f"{name}[{index}]: an observation must follow a function_call")
        raise ValueError(
            f"{name}[{index}]: a tool turn must answer a tool call of the assistant turn before it"
        )
    return pending[1:]


def _turns(
    name: str, value: Any, sharegpt: bool = False, tools: bool = False
) -> list[dict[str, Any]]:
    """Field ``name`` as a conversation, or ValueError.

    An optional system turn first, then user and assistant turns alternating, the user's first.
    With ``tools`` an assistant turn may call tools: a tool turn answering each call follows it
    (ShareGPT: one observation per function_call), and then the assistant speaks again.
    """
    if not isinstance(value, list):
        raise ValueError(f"field '{name}' must be a list, got {_type_name(value)}")
    if not value:
        raise ValueError(f"field '{name}' is empty")
    turns = [_turn(f"{name}[{i}]", message, sharegpt, tools) for i, message in enumerate(value)]
    role_key = "from" if sharegpt else "role"
    shown = {"user": "'user'", "assistant": "'assistant'"}
    if sharegpt:
        shown = {"user": "'human'", "assistant": "'gpt' or 'function_call'" if tools else "'gpt'"}
    first = 1 if turns[0]["role"] == "system" else 0
    expected = "user"
    pending: Pending = []  # the calls made and not yet answered
    for i in range(first, len(turns)):
        role = turns[i]["role"]
        if role == "system":
            raise ValueError(f"{name}[{i}]: a system message may only come first")
        if role == "tool":
            pending = _take_result(name, i, turns[i], pending, sharegpt)
            expected = "assistant"  # after the results, the assistant goes on
            continue
        if pending:
            raise ValueError(_unanswered(name, pending, sharegpt))
        if role != expected:
            raise ValueError(
                f"{name}[{i}].{role_key} must be {shown[expected]}, got '{value[i][role_key]}'"
            )
        pending = [(i, call) for call in turns[i].get("tool_calls", ())]
        expected = "assistant" if role == "user" else "user"
    if pending:
        raise ValueError(_unanswered(name, pending, sharegpt))
    return turns


def _tools(obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Field ``tools``: the function schemas, or None when it is missing or empty.

    A list, or a JSON string of one (LLaMA-Factory's form); each schema either OpenAI's
    ``{"type": "function", "function": {"name", ...}}`` or the bare ``{"name", ...}``, kept in
    the first form (the one chat templates are written for).
    """
    value = obj.get("tools")
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field 'tools' is not valid JSON: {exc.msg}") from None
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(
            "field 'tools' must be a list of function schemas (or a JSON string of one), "
            f"got {_type_name(value)}"
        )
    schemas = []
    for k, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and function["name"].strip()
        ):
            raise ValueError(f"tools[{k}] must be a function schema with a 'name'")
        schemas.append({"type": "function", "function": function})
    return schemas or None


def _exchange(turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Shaped:
    """A checked conversation ending with the assistant's answer, as record fields.

    ``text`` is the last user turn, ``context`` the turns before it, ``steps`` the tool calls
    and results between it and the answer (``target``). Every call must name one of ``tools``
    when the record lists them, or the model would learn to call tools it was not offered.
    """
    last_user = max(i for i, turn in enumerate(turns) if turn["role"] == "user")
    if tools:
        offered = {tool["function"]["name"] for tool in tools}
        for turn in turns:
            for call in turn.get("tool_calls", ()):
                if call["function"]["name"] not in offered:
                    raise ValueError(
                        f"a tool call names '{call['function']['name']}', which 'tools' does "
                        f"not offer ({', '.join(sorted(offered))})"
                    )
    return {
        "text": turns[last_user]["content"],
        "context": turns[:last_user] or None,
        "steps": turns[last_user + 1 : -1] or None,
        "target": turns[-1]["content"],
        "tools": tools,
    }


def _prompt_side(turns: list[dict[str, Any]]) -> Shaped:
    """``text`` (the last turn, the user's) and ``context`` (the turns before it, or None)."""
    return {"text": turns[-1]["content"], "context": turns[:-1] or None}


def _messages(obj: dict[str, Any]) -> Shaped:
    """A chat: the last user turn, the turns before it, any tool steps, and the final answer."""
    if "messages" not in obj:
        raise ValueError("missing field 'messages'")
    turns = _turns("messages", obj["messages"], tools=True)
    if turns[-1]["role"] != "assistant":
        raise ValueError("last message must be from the assistant")
    return _exchange(turns, _tools(obj))


def _sharegpt(obj: dict[str, Any]) -> Shaped:
    """A ShareGPT conversation (``conversations``, optional ``system`` and ``tools``).

    Read like a chat; ``system`` (LLaMA-Factory's system prompt column) is its system turn.
    """
    if "conversations" not in obj:
        raise ValueError("missing field 'conversations'")
    if "chosen" in obj and "rejected" in obj:
        raise ValueError(
            "a ShareGPT ranking record (with 'chosen' and 'rejected'): read it with "
            "data.format 'preference'"
        )
    turns = _turns("conversations", obj["conversations"], sharegpt=True, tools=True)
    if obj.get("system") not in (None, ""):
        system = _string(obj, "system")
        if turns[0]["role"] == "system":
            raise ValueError("both a 'system' field and a system turn in 'conversations'; keep one")
        turns = [{"role": "system", "content": system}, *turns]
    if turns[-1]["role"] != "assistant":
        raise ValueError("the last turn of 'conversations' must be from 'gpt'")
    return _exchange(turns, _tools(obj))


def _prompt(obj: dict[str, Any]) -> Shaped:
    """Field ``prompt`` as ``text`` and ``context``: a string, or messages ending with a user's."""
    if "prompt" not in obj:
        raise ValueError("missing field 'prompt'")
    value = obj["prompt"]
    if isinstance(value, list):
        turns = _turns("prompt", value)
        if turns[-1]["role"] != "user":
            raise ValueError("the last message of 'prompt' must be from the user")
        return _prompt_side(turns)
    if not isinstance(value, str):
        raise ValueError(
            f"field 'prompt' must be a string or a list of messages, got {_type_name(value)}"
        )
    return {"text": _string(obj, "prompt")}


def _answer(obj: dict[str, Any], name: str) -> str:
    """Field ``name`` (chosen, rejected, completion): a string, or one assistant message."""
    if name not in obj:
        raise ValueError(f"missing field '{name}'")
    value = obj[name]
    if isinstance(value, str):
        return _string(obj, name)
    if not isinstance(value, list):
        raise ValueError(
            f"field '{name}' must be a string or a list of messages, got {_type_name(value)}"
        )
    if not value:
        raise ValueError(f"field '{name}' is empty")
    if len(value) != 1:
        raise ValueError(f"field '{name}' must hold one assistant message, got {len(value)}")
    turn = _turn(f"{name}[0]", value[0])
    if turn["role"] != "assistant":
        raise ValueError(f"{name}[0].role must be 'assistant', got '{turn['role']}'")
    return turn["content"]


def _implicit_pair(obj: dict[str, Any]) -> Shaped:
    """A pair without ``prompt`` (TRL's implicit prompt), or ValueError.

    ``chosen`` and ``rejected`` are whole conversations: their shared leading turns are the
    prompt and they differ only in the last, the assistant's.
    """
    sides = {}
    for name in ("chosen", "rejected"):
        turns = _turns(name, obj[name])
        if turns[-1]["role"] != "assistant":
            raise ValueError(f"the last message of '{name}' must be from the assistant")
        sides[name] = turns
    chosen, rejected = sides["chosen"], sides["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise ValueError(
            "'chosen' and 'rejected' share no leading turns, and there is no 'prompt' field"
        )
    if len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise ValueError(
            "'chosen' and 'rejected' must be the same conversation up to their last message; "
            f"they differ from message {shared} on"
        )
    return _prompt_side(chosen[:shared]) | {
        "target": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
    }


def _sharegpt_pair(obj: dict[str, Any]) -> Shaped:
    """LLaMA-Factory's ShareGPT ranking form, or ValueError.

    ``conversations`` (ShareGPT turns) ends with the human's turn; ``chosen`` and ``rejected``
    are one gpt turn each.
    """
    turns = _turns("conversations", obj["conversations"], sharegpt=True)
    if turns[-1]["role"] != "user":
        raise ValueError("the last message of 'conversations' must be from the human")
    answers = {}
    for name in ("chosen", "rejected"):
        turn = _turn(name, obj[name], sharegpt=True)
        if turn["role"] != "assistant":
            raise ValueError(f"{name}.from must be 'gpt', got '{obj[name]['from']}'")
        answers[name] = turn["content"]
    return _prompt_side(turns) | {"target": answers["chosen"], "rejected": answers["rejected"]}


def _preference(obj: dict[str, Any]) -> Shaped:
    """A preference pair: the prompt, the chosen answer (``target``) and the ``rejected`` one."""
    for name in ("chosen", "rejected"):
        if name not in obj:
            raise ValueError(f"missing field '{name}'")
    if "conversations" in obj:
        return _sharegpt_pair(obj)
    if "prompt" not in obj and all(isinstance(obj[n], list) for n in ("chosen", "rejected")):
        return _implicit_pair(obj)
    return _prompt(obj) | {"target": _answer(obj, "chosen"), "rejected": _answer(obj, "rejected")}


def _kto(obj: dict[str, Any]) -> Shaped:
    """A KTO record: the prompt, the completion (``target``) and its label (a boolean)."""
    shaped = _prompt(obj) | {"target": _answer(obj, "completion")}
    if "label" not in obj:
        raise ValueError("missing field 'label'")
    label = obj["label"]
    if not isinstance(label, bool):
        raise ValueError(f"field 'label' must be true or false, got {_type_name(label)}")
    return shaped | {"label": KTO_LABELS[label]}


#: The reader of each shaped format.
SHAPES: dict[str, Callable[[dict[str, Any]], Shaped]] = {
    "alpaca": _alpaca,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "preference": _preference,
    "kto": _kto,
}


def _validate_shaped(obj: Any, fields: Fields, default_id: str) -> Record | str:
    """Return a Record from an object of a shaped format, or the reason it cannot be one."""
    if not isinstance(obj, dict):
        return f"expected an object, got {_type_name(obj)}"
    try:
        shaped = SHAPES[fields.format](obj)
    except ValueError as exc:
        return str(exc)
    record_id = _record_id(obj, fields, default_id)
    if record_id is None:
        return f"missing id field '{fields.id}'"
    return Record(id=record_id, **shaped)


def _validate(obj: Any, fields: Fields, default_id: str) -> Record | str:
    """Return a Record, or the reason the object cannot be one."""
    if fields.format in SHAPED_FORMATS:
        return _validate_shaped(obj, fields, default_id)
    if not isinstance(obj, dict):
        return f"expected an object, got {_type_name(obj)}"
    if fields.text not in obj:
        return f"missing field '{fields.text}'"
    text = obj[fields.text]
    if not isinstance(text, str):
        return f"field '{fields.text}' must be a string, got {_type_name(text)}"
    if _has_surrogates(text):
        return "invalid UTF-8 in text"
    if not text.strip():
        return f"field '{fields.text}' is empty"
    label = None
    if fields.label:
        if fields.label not in obj:
            return f"missing field '{fields.label}'"
        raw_label = obj[fields.label]
        if raw_label is None:
            return f"field '{fields.label}' is null"
        if not isinstance(raw_label, LABEL_TYPES) or isinstance(raw_label, float):
            return (
                f"field '{fields.label}' must be a string or integer, got {_type_name(raw_label)}"
            )
        label = str(raw_label).strip()
        if not label:
            return f"field '{fields.label}' is empty"
    target = None
    if fields.target:
        target = obj.get(fields.target)
        if fields.target_optional and (target is None or target == ""):
            target = None
        elif not isinstance(target, str) or not target.strip():
            return f"field '{fields.target}' must be a non-empty string"
    record_id = _record_id(obj, fields, default_id)
    if record_id is None:
        return f"missing id field '{fields.id}'"
    return Record(id=record_id, text=text, label=label, target=target)


def _jsonl_objects(path: Path) -> Iterator[tuple[int, str, Any, str | None]]:
    """Yield (line, raw, parsed, error) for each line of a JSONL file, one line at a time.

    Lines end at LF, CRLF or CR (``newline=""`` splits on exactly these, unlike
    ``str.splitlines``, which would also split inside a JSON string holding U+2028).
    """
    with _open_text(path, "utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            # Only a final line without its newline can have been cut off mid-write.
            unterminated = not raw.endswith(("\n", "\r"))
            raw = raw.rstrip("\r\n")
            if number == 1:
                raw = raw.removeprefix("\ufeff")
            if not raw.strip():
                yield number, raw, None, "blank"
                continue
            try:
                yield number, raw, json.loads(raw), None
            except json.JSONDecodeError as exc:
                reason = "truncated last line" if unterminated else f"invalid JSON: {exc.msg}"
                if _has_surrogates(raw):
                    reason = "invalid UTF-8"
                yield number, raw, None, reason


def _csv_objects(path: Path) -> Iterator[tuple[int, str, Any, str | None]]:
    with _open_text(path, "utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for row in reader:
            raw = ",".join("" if v is None else str(v) for v in row.values())
            if None in row or any(v is None for v in row.values()):
                present = [v for k, v in row.items() if k is not None and v is not None]
                got = len(present) + len(row.get(None) or [])
                reason = f"row has {got} fields, header has {len(header)}"
                yield reader.line_num, raw, None, reason
                continue
            if not any((v or "").strip() for v in row.values()):
                yield reader.line_num, raw, None, "blank"
                continue
            yield reader.line_num, raw, dict(row), None


def _parquet_objects(path: Path) -> Iterator[tuple[int, str, Any, str | None]]:
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield number, json.dumps(row, default=str), row, None


#: Characters read at a time from a ``.json`` array (an element longer than this reads more).
JSON_CHUNK = 1 << 20


def _json_array_objects(path: Path) -> Iterator[tuple[int, str, Any, str | None]]:
    """Yield (line, raw, parsed, None) for each element of a file holding one JSON array.

    The form LLaMA-Factory and Alpaca datasets ship in. Streamed: the decoder sees one element
    at a time plus a read-ahead of ``JSON_CHUNK`` characters, so a large array is never held
    whole (let alone twice, as ``json.load`` and then a list of records would). ``line`` is the
    line an element starts on; an element that is not an object is quarantined by validation.

    Raises:
        DataError: The file is not one JSON array, or its JSON breaks: after a syntax error no
            later element can be found reliably, so the message says where, and nothing is read.
    """
    decoder = json.JSONDecoder()
    with _open_text(path, "utf-8-sig") as handle:
        buffer, position = "", 0
        line, counted = 1, 0  # the line number at buffer[counted]

        def more() -> bool:
            """Read a chunk (dropping what was consumed first); False at the end of the file."""
            nonlocal buffer, position, counted
            line_at(position)
            buffer, position, counted = buffer[position:], 0, 0
            chunk = handle.read(JSON_CHUNK)
            buffer += chunk
            return bool(chunk)

        def line_at(index: int) -> int:
            """The line ``buffer[index]`` is on (counted incrementally: ``index`` only grows)."""
            nonlocal line, counted
            line += buffer.count("\n", counted, index)
            counted = index
            return line

        def skip_space() -> str | None:
            """The next non-space character (None at the end of the file), not consumed."""
            nonlocal position
            while True:
                while position < len(buffer) and buffer[position] in " \t\r\n":
                    position += 1
                if position < len(buffer):
                    return buffer[position]
                if not more():
                    return None

        def broken(what: str) -> DataError:
            where = line_at(position)
            return DataError(f"{path}: line {where}: {what}; fix the file (or write it as .jsonl)")

        first = skip_space()
        if first != "[":
            raise DataError(
                f"{path}: a .json data file must hold one array of records ([{{...}}, ...]), "
                f"not {'nothing' if first is None else repr(first)}; JSON lines go in .jsonl"
            )
        position += 1
        expect_element, elements = True, 0  # expecting one after '[' or ','
        while True:
            head = skip_space()
            if head is None:
                raise broken("the array is not closed (the file ends inside it)")
            if head == "]":
                if expect_element and elements:
                    raise broken("a ',' with no record after it before ']'")
                position += 1
                if skip_space() is not None:
                    raise broken("text after the array's closing ']'")
                return
            if not expect_element:
                if head != ",":
                    raise broken(f"expected ',' or ']' between records, got {head!r}")
                position += 1
                expect_element = True
                continue
            while True:
                try:
                    obj, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError as exc:
                    if more():
                        continue
                    raise broken(f"invalid JSON in a record: {exc.msg}") from None
                if end == len(buffer) and more():
                    continue  # a number may go on in the next chunk
                break
            yield line_at(position), buffer[position:end], obj, None
            position = end
            expect_element, elements = False, elements + 1


READERS = {
    ".jsonl": _jsonl_objects,
    ".json": _json_array_objects,
    ".csv": _csv_objects,
    ".parquet": _parquet_objects,
}

Items = Iterator[tuple[int, str, Any, str | None]]


def detect_format(obj: Any) -> str:
    """The format ``auto`` picks for a file whose first JSON object is ``obj``.

    ``messages`` when it has a ``messages`` field, ``preference`` when it has ``chosen`` and
    ``rejected``, ``sharegpt`` when it has ``conversations`` (and no ``chosen`` and
    ``rejected``: LLaMA-Factory's ranking form is a preference pair), ``kto`` when it has
    ``completion`` and ``label``, ``alpaca`` when it has ``instruction`` and ``output``, else
    ``fields``.
    """
    if isinstance(obj, dict) and "messages" in obj:
        return "messages"
    if isinstance(obj, dict) and "chosen" in obj and "rejected" in obj:
        return "preference"
    if isinstance(obj, dict) and "conversations" in obj:
        return "sharegpt"
    if isinstance(obj, dict) and "completion" in obj and "label" in obj:
        return "kto"
    if isinstance(obj, dict) and "instruction" in obj and "output" in obj:
        return "alpaca"
    return "fields"


#: The field a pre-training entry's document is read from, once renamed (a name no entry's
#: column is likely to have, so a reason naming it names the entry's prompt column).
DOCUMENT_FIELD = "_adaptflow_document"

#: ShareGPT's role names (``SHAREGPT_ROLES``, ``SHAREGPT_TOOL_ROLES``) by the entry tag naming each.
ROLE_TAGS = {
    "user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
    "function_tag": "function_call", "system_tag": "system",
}  # fmt: skip


def _view_turn(turn: Any, tags: dict[str, str]) -> Any:
    """A ShareGPT turn with the entry's ``tags`` renamed to ``from``/``value`` and standard roles.

    A turn that is not an object, or a role the tags do not name, is left for the reader to
    quarantine with its reason.
    """
    if not isinstance(turn, dict):
        return turn
    role_key, content_key = tags["role_tag"], tags["content_tag"]
    roles = {tags[tag]: role for tag, role in ROLE_TAGS.items()}
    renamed = {k: v for k, v in turn.items() if k not in (role_key, content_key)}
    if role_key in turn:
        role = turn[role_key]
        renamed["from"] = roles.get(role, role) if isinstance(role, str) else role
    if content_key in turn:
        renamed["value"] = turn[content_key]
    return renamed


def _view_prompt(obj: dict[str, Any], columns: dict[str, str]) -> str:
    """An Alpaca entry's prompt column, then its query column after a blank line, or ValueError.

    Joined as ``data.format: alpaca`` joins ``instruction`` and ``input``.
    """
    prompt = _string(obj, columns["prompt"])
    query_column = columns.get("query")
    if query_column is None or obj.get(query_column) in (None, ""):
        return prompt
    query = _string(obj, query_column, required=False)
    return f"{prompt}\n\n{query}" if query.strip() else prompt


def _view_chat(obj: dict[str, Any], columns: dict[str, str]) -> list[dict[str, Any]]:
    """An Alpaca entry's prompt as OpenAI messages: system, history pairs, then the user's."""
    messages = []
    system_column = columns.get("system")
    if system_column is not None and obj.get(system_column) not in (None, ""):
        messages.append({"role": "system", "content": obj[system_column]})
    history_column = columns.get("history")
    history = obj.get(history_column) if history_column is not None else None
    if history is not None:
        pairs = history if isinstance(history, list) else None
        if pairs is None or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError(
                f"field '{history_column}' must be a list of [prompt, response] pairs, "
                f"got {_type_name(history)}"
            )
        for question, answer in pairs:
            messages += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
    return [*messages, {"role": "user", "content": _view_prompt(obj, columns)}]


def _view_object(obj: Any, view: DatasetView, id_field: str | None) -> Any:
    """A record of a ``dataset_info.json`` entry in the shape ``view.shape`` names.

    Only the columns the entry maps (and the spec's id field) are carried over, so a column
    LLaMA-Factory would not read is not read here either. A column missing from the record is
    left missing, for the reader to name.

    Raises:
        ValueError: A column the renaming itself reads (prompt, history) is unusable.
    """
    if not isinstance(obj, dict):
        return obj
    columns = view.columns
    shaped: dict[str, Any] = {}
    if id_field is not None and id_field in obj:
        shaped[id_field] = obj[id_field]

    def take(role: str, key: str, change: Callable[[Any], Any] = lambda v: v) -> None:
        column = columns.get(role)
        if column is not None and column in obj:
            shaped[key] = change(obj[column])

    if view.formatting == "sharegpt":
        turns = lambda value: (  # noqa: E731
            [_view_turn(t, view.tags) for t in value] if isinstance(value, list) else value
        )
        take("messages", "conversations", turns)
        take("tools", "tools")
        if not view.ranking:
            take("system", "system")
            return shaped
        take("chosen", "chosen", lambda value: _view_turn(value, view.tags))
        take("rejected", "rejected", lambda value: _view_turn(value, view.tags))
        system = obj.get(columns.get("system", ""), None)
        conversation = shaped.get("conversations")
        if system not in (None, "") and isinstance(conversation, list):
            # the ranking reader takes a system turn first in the conversation
            leading = conversation[0] if conversation else None
            if not (isinstance(leading, dict) and leading.get("from") == "system"):
                shaped["conversations"] = [{"from": "system", "value": system}, *conversation]
        return shaped
    shape = view.shape
    if shape == "text":
        prompt, query_column = columns["prompt"], columns.get("query")
        if prompt in obj:
            document = obj[prompt]
            query = obj.get(query_column) if query_column is not None else None
            if isinstance(document, str) and query_column is not None and query not in (None, ""):
                query = _string(obj, query_column, required=False)
                document = f"{document}\n{query}" if query.strip() else document
            shaped[DOCUMENT_FIELD] = document
    elif shape == "alpaca":
        take("prompt", "instruction")
        take("query", "input")
        take("response", "output")
    elif shape == "messages":
        response = columns["response"]
        shaped["messages"] = [
            *_view_chat(obj, columns),
            {"role": "assistant", "content": obj.get(response)},
        ]
        take("tools", "tools")
    elif shape == "preference":
        chat = "system" in columns or "history" in columns
        shaped["prompt"] = _view_chat(obj, columns) if chat else _view_prompt(obj, columns)
        take("chosen", "chosen")
        take("rejected", "rejected")
    else:  # kto
        shaped["prompt"] = _view_prompt(obj, columns)
        take("response", "completion")
        take("kto_tag", "label")
    return shaped


def _view_reason(reason: str, view: DatasetView) -> str:
    """A reader's reason with adaptflow's field names put back as the entry's columns."""
    if view.documents:
        return reason.replace(f"'{DOCUMENT_FIELD}'", f"'{view.columns['prompt']}'")
    names = {
        "instruction": "prompt", "input": "query", "output": "response", "completion": "response",
        "label": "kto_tag", "chosen": "chosen", "rejected": "rejected", "system": "system",
        "tools": "tools", "conversations": "messages",
    }  # fmt: skip
    for field_name, role in names.items():
        column = view.columns.get(role)
        if column is not None and column != field_name:
            reason = reason.replace(f"'{field_name}'", f"'{column}'")
            if field_name == "conversations":
                reason = reason.replace("conversations[", f"{column}[")
    for field_name, tag in (("from", "role_tag"), ("value", "content_tag")):
        if view.tags[tag] != field_name:
            reason = reason.replace(f".{field_name} ", f".{view.tags[tag]} ")
            reason = reason.replace(f"'{field_name}'", f"'{view.tags[tag]}'")
    return reason


def _viewed(items: Items, view: DatasetView, id_field: str | None) -> Items:
    """``items`` of a ``dataset_info.json`` entry's file, renamed (``_view_object``)."""
    for line, raw, obj, error in items:
        if error is None:
            try:
                obj = _view_object(obj, view, id_field)
            except ValueError as exc:
                obj, error = None, str(exc)
        yield line, raw, obj, error


def _unreadable(items: Items) -> Items:
    """``items`` of a materialized dataset, its rows JSON could not hold as errors."""
    for line, raw, obj, error in items:
        if error is None and isinstance(obj, dict) and set(obj) == {UNREADABLE_KEY}:
            yield line, raw, None, str(obj[UNREADABLE_KEY])
        else:
            yield line, raw, obj, error


def _view_fields(path: Path, view: DatasetView, fields: Fields) -> Fields:
    """``fields`` with the format a ``dataset_info.json`` entry's records are renamed to.

    A pre-training entry's documents are read as text (``fields``, no label or target): by
    task ``language-modeling`` (method ``cpt``) and as ``data.general``.

    Raises:
        DataError: A pre-training entry read for labelled, instruction or chat records, any
            other entry read as plain text, or an entry read with another ``data.format``.
    """
    documents = fields.format == "fields" and fields.label is None and fields.target is None
    if view.documents:
        if documents:
            return replace(fields, text=DOCUMENT_FIELD, format="fields")
        wanted = (
            "labelled records (data.label_field)"
            if fields.label is not None
            else f"instruction or chat records (data.format '{fields.format}'"
            + (f", data.target_field '{fields.target}')" if fields.target else ")")
        )
        raise DataError(
            f"{view.url}: the entry names no response column, so it is pre-training data "
            f"(documents: column '{view.columns['prompt']}', as LLaMA-Factory's stage pt reads "
            f"it), read as text by task language-modeling (method cpt) and data.general; this "
            f"spec reads {wanted}: name a response column in the entry for instruction data"
        )
    if documents:
        raise DataError(
            f"{view.url}: plain text is read here (task language-modeling, data.general, or "
            "data.format fields with no target_field), but the entry's records are "
            f"{view.formatting}{' ranking' if view.ranking else ''} records (read as "
            f"'{view.shape}'); a pre-training entry names a prompt column and no response "
            '(LLaMA-Factory\'s stage pt data: "columns": {"prompt": "text"})'
        )
    if fields.format not in ("auto", view.shape, view.formatting):
        raise DataError(
            f"{view.url}: data.format '{fields.format}', but the entry's records are "
            f"{view.formatting}{' ranking' if view.ranking else ''} records (read as "
            f"'{view.shape}'); use data.format auto (a dataset_info.json entry holds generative "
            "records: instruction, qa, summarization or alignment data)"
        )
    return replace(fields, format=view.shape)


def _resolve_format(path: Path, items: Items, fields: Fields) -> tuple[Fields, Items]:
    """``fields`` with ``auto`` resolved for this file, and its items (any read to decide)."""
    if fields.format != "auto":
        return fields, items
    if data_suffix(path) not in SHAPED_SUFFIXES:
        return replace(fields, format="fields"), items
    # Records before the first object (broken lines) are kept to be yielded in order.
    peeked = []
    chosen = "fields"
    for item in items:
        peeked.append(item)
        _, _, obj, error = item
        if error is None and isinstance(obj, dict):
            chosen = detect_format(obj)
            break
    return replace(fields, format=chosen), chain(peeked, items)


def iter_records(path: Path, fields: Fields) -> Iterator[Record | Quarantined | None]:
    """Stream one data file: a Record or a Quarantined per input record, None per blank line.

    Memory stays bounded by one line (plus the ids seen, to catch a repeated id). With
    ``fields.format`` ``auto``, the file's format is that of its first JSON object
    (``detect_format``); CSV files are always read by field names.

    Raises:
        DataError: When the file cannot be opened or its type is unsupported.
    """
    suffix = data_suffix(path)
    reader = READERS.get(suffix)
    if reader is None or (suffix == ".parquet" and path.suffix.lower() == ".gz"):
        raise DataError(f"{path}: unsupported data file type '{path.suffix}'")
    if fields.format in SHAPED_FORMATS and suffix not in SHAPED_SUFFIXES:
        raise DataError(
            f"{path}: data.format '{fields.format}' reads .jsonl, .json or .parquet files, "
            f"not '{suffix}'"
        )
    # a dataset_info.json entry or a materialized dataset is reported as what the spec names
    file = origin(path) or str(path)
    view = view_of(path)
    seen: dict[str, int] = {}
    # a record's default id is its line; in a .json array, where one line may hold every
    # record, it is its position in the array (1-based)
    by_position = suffix == ".json"
    try:
        items = reader(path)
        if view is not None:
            fields = _view_fields(path, view, fields)
            items = _viewed(items, view, fields.id)
        elif hf_source_of(path) is not None:
            items = _unreadable(items)
        fields, items = _resolve_format(path, items, fields)
        for position, (line, raw, obj, error) in enumerate(items, start=1):
            if error == "blank":
                yield None
                continue
            default_id = str(position if by_position else line)
            outcome = error or _validate(obj, fields, default_id=default_id)
            if isinstance(outcome, Record):
                outcome = _lone_surrogate(outcome) or outcome
            if isinstance(outcome, Record):
                if outcome.id in seen:
                    outcome = f"duplicate id '{outcome.id}' (first at line {seen[outcome.id]})"
                else:
                    seen[outcome.id] = line
                    yield replace(outcome, file=file, line=line)
                    continue
            reason = _view_reason(outcome, view) if view is not None else outcome
            yield Quarantined(file, line, reason, _printable(raw))
    except DataError:
        raise  # the reader's own message (a .json file that is not one array)
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: a damaged gzip file: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # a corrupt Parquet or CSV container, not a bad record
        raise DataError(f"{path}: cannot parse as {path.suffix[1:]}: {exc}") from None


def read_records(path: Path, fields: Fields) -> ReadResult:
    """Read one data file, quarantining every record that cannot be used.

    Args:
        path: A .jsonl, .csv or .parquet file.
        fields: Which fields hold the id, text, label and target, or the input format.

    Returns:
        The usable records in file order and the quarantined ones.

    Raises:
        DataError: When the file cannot be opened or its type is unsupported.
    """
    result = ReadResult()
    for item in iter_records(path, fields):
        if item is None:
            result.blank_lines += 1
        elif isinstance(item, Record):
            result.records.append(item)
        else:
            result.quarantined.append(item)
    return result


CURATED_FIELDS = ("id", "text", "label", "target", "rejected", "context", "steps", "tools")


def record_rows(records: list[Record]) -> list[dict[str, Any]]:
    """Records as plain dicts (``CURATED_FIELDS``), without empty optional fields.

    ``context`` (a conversation's earlier turns) appears only for multi-turn records,
    ``rejected`` only for preference pairs, and ``steps`` and ``tools`` only for conversations
    that call tools, so other curated output is unchanged.
    """
    rows = []
    for record in records:
        row = asdict(record)
        rows.append({k: row[k] for k in CURATED_FIELDS if row[k] is not None})
    return rows
