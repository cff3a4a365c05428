"""Read labelled records from JSONL, CSV or Parquet, quarantining malformed ones.

Every input record ends up either in the returned records or in the quarantine list with its
file, line, reason and raw text, so input = kept + quarantined always holds. Reading never
stops on a bad line. JSONL and CSV files may be gzip-compressed (named ``.jsonl.gz``, or a
compressed file under the plain name): they are read through ``gzip`` transparently.

Generative data may also come in two common shapes (``Fields.format``, JSONL and Parquet):
Alpaca (``instruction``, optional ``input``, ``output``) and OpenAI chat messages
(``messages``: an optional system turn, then user/assistant turns ending with the assistant's).
A conversation's last user turn becomes the record's ``text``, the turns before it its
``context`` and the final assistant turn its ``target``. A message's ``content`` is a string or
a list of text parts (``{"type": "text", "text": ...}``, joined).

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
from adaptflow.jsonl import read_jsonl, write_jsonl  # noqa: F401  (importable from here too)
from adaptflow.spec import data_suffix

LABEL_TYPES = (str, int, bool)
#: Input formats: ``fields`` (the spec's text/label/target fields), ``alpaca``, ``messages``,
#: ``preference``, ``kto``, or ``auto`` (per file, from its first JSON object).
FORMATS = ("auto", "fields", "alpaca", "messages", "preference", "kto")
#: Formats that carry a record's fields themselves, and the file types they are read from.
SHAPED_FORMATS = ("alpaca", "messages", "preference", "kto")
SHAPED_SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")
#: ShareGPT's speaker names (``from``) and the roles they stand for.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
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
    """

    id: str
    text: str
    label: str | None = None
    target: str | None = None
    file: str = ""  # where it was read (for the quarantine); not written to curated output
    line: int = 0
    context: list[dict[str, str]] | None = None
    rejected: str | None = None

    @property
    def full_text(self) -> str:
        """The prompt side as one string: earlier turns' contents, then ``text``.

        What the blocks that compare records use (dedup, decontamination), so two
        conversations that end with the same user turn are not taken for duplicates.
        """
        if not self.context:
            return self.text
        return "\n\n".join([turn["content"] for turn in self.context] + [self.text])


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
    values += [
        (f"turn {i + 1}", turn.get("content")) for i, turn in enumerate(record.context or [])
    ]
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


def _content(where: str, content: Any) -> str:
    """A message's content as one string: a string, or a list of text parts joined."""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise ValueError(
                    f"{where}[{j}] must be a text part {{'type': 'text', 'text': ...}}"
                )
            texts.append(part["text"])
        content = "".join(texts)  # as the OpenAI API joins them (serve/schemas.py too)
    elif not isinstance(content, str):
        raise ValueError(
            f"{where} must be a string or a list of text parts, got {_type_name(content)}"
        )
    if _has_surrogates(content):
        raise ValueError(f"invalid UTF-8 in {where}")
    if not content.strip():
        raise ValueError(f"{where} is empty")
    return content


def _turn(where: str, message: Any, sharegpt: bool = False) -> dict[str, str]:
    """One message as {"role", "content"} (other keys dropped), or ValueError.

    An OpenAI message (``role``, ``content``), or with ``sharegpt`` a ShareGPT one (``from``:
    ``system``, ``human`` or ``gpt``; ``value``).
    """
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    roles = SHAREGPT_ROLES if sharegpt else {role: role for role in ROLES}
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object, got {_type_name(message)}")
    for key in (role_key, content_key):
        if key not in message:
            raise ValueError(f"{where}: missing field '{key}'")
    role = message[role_key]
    if not isinstance(role, str) or role not in roles:
        expected = ", ".join(f"'{r}'" for r in roles)
        raise ValueError(f"{where}.{role_key} must be one of {expected}, got {role!r}")
    return {
        "role": roles[role],
        "content": _content(f"{where}.{content_key}", message[content_key]),
    }


def _turns(name: str, value: Any, sharegpt: bool = False) -> list[dict[str, str]]:
    """Field ``name`` as a conversation, or ValueError.

    An optional system turn first, then user and assistant turns alternating, the user's first.
    """
    if not isinstance(value, list):
        raise ValueError(f"field '{name}' must be a list, got {_type_name(value)}")
    if not value:
        raise ValueError(f"field '{name}' is empty")
    turns = [_turn(f"{name}[{i}]", message, sharegpt) for i, message in enumerate(value)]
    role_key = "from" if sharegpt else "role"
    shown = {v: k for k, v in SHAREGPT_ROLES.items()} if sharegpt else {r: r for r in ROLES}
    first = 1 if turns[0]["role"] == "system" else 0
    for i in range(first, len(turns)):
        role = turns[i]["role"]
        if role == "system":
            raise ValueError(f"{name}[{i}]: a system message may only come first")
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"{name}[{i}].{role_key} must be '{shown[expected]}', got '{shown[role]}'"
            )
    return turns


def _prompt_side(turns: list[dict[str, str]]) -> Shaped:
    """``text`` (the last turn, the user's) and ``context`` (the turns before it, or None)."""
    return {"text": turns[-1]["content"], "context": turns[:-1] or None}


def _messages(obj: dict[str, Any]) -> Shaped:
    """A chat: the last user turn, the turns before it, and the final assistant turn."""
    if "messages" not in obj:
        raise ValueError("missing field 'messages'")
    turns = _turns("messages", obj["messages"])
    if turns[-1]["role"] != "assistant":
        raise ValueError("last message must be from the assistant")
    return _prompt_side(turns[:-1]) | {"target": turns[-1]["content"]}


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
    ``rejected``, ``kto`` when it has ``completion`` and ``label``, ``alpaca`` when it has
    ``instruction`` and ``output``, else ``fields``.
    """
    if isinstance(obj, dict) and "messages" in obj:
        return "messages"
    if isinstance(obj, dict) and "chosen" in obj and "rejected" in obj:
        return "preference"
    if isinstance(obj, dict) and "completion" in obj and "label" in obj:
        return "kto"
    if isinstance(obj, dict) and "instruction" in obj and "output" in obj:
        return "alpaca"
    return "fields"


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
    file = str(path)
    seen: dict[str, int] = {}
    # a record's default id is its line; in a .json array, where one line may hold every
    # record, it is its position in the array (1-based)
    by_position = suffix == ".json"
    try:
        fields, items = _resolve_format(path, reader(path), fields)
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
            yield Quarantined(file, line, outcome, _printable(raw))
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


CURATED_FIELDS = ("id", "text", "label", "target", "rejected", "context")


def record_rows(records: list[Record]) -> list[dict[str, Any]]:
    """Records as plain dicts (``CURATED_FIELDS``), without empty optional fields.

    ``context`` (a conversation's earlier turns) appears only for multi-turn records and
    ``rejected`` only for preference pairs, so other curated output is unchanged.
    """
    rows = []
    for record in records:
        row = asdict(record)
        rows.append({k: row[k] for k in CURATED_FIELDS if row[k] is not None})
    return rows
