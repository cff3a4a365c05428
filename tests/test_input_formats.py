"""Alpaca and OpenAI-messages input for generative tasks: reading, curation and prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import write_jsonl

from adaptflow.errors import DataError, SpecError
from adaptflow.spec import Spec, parse_spec
from runtime.prompts import IGNORE, PLAIN_TEMPLATE, encode_sft, render_prompt, source_text
from tasks.curate.dedup import content_key
from tasks.curate.normalize import normalize
from tasks.curate.pii import redact_pii
from tasks.curate.records import Fields, Quarantined, Record, detect_format, read_records
from tasks.curate.stage import CurationInputs, curate_dataset

SYSTEM = {"role": "system", "content": "Answer briefly."}


def _lines(path: Path, lines: list[object]) -> Path:
    """Write each item as one JSONL line (strings are written as they are)."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text)
    return path


def _kept(records: list[Record]) -> list[tuple]:
    return [(r.id, r.text, r.target, r.context, r.line) for r in records]


def _reasons(quarantined: list[Quarantined]) -> list[tuple[int, str]]:
    return [(q.line, q.reason) for q in quarantined]


def _chat(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# --- reading -----------------------------------------------------------------------------


def test_alpaca_records_and_reasons(tmp_path: Path) -> None:
    path = _lines(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Name the capital of France.", "input": "", "output": "Paris"},
            {"instruction": "Summarise.", "input": "The cat sat on the mat.", "output": "A cat."},
            {"instruction": "No answer here."},
            {"instruction": "  ", "output": "x"},
            {"instruction": "Q", "input": ["a"], "output": "x"},
            {"instruction": "Q", "output": 3},
            '{"instruction": "broken',
            {"instruction": "Spell it.", "input": None, "output": "i-t"},
            {"instruction": "Q", "input": "   ", "output": "   "},
            ["not", "an", "object"],
        ],
    )
    result = read_records(path, Fields(format="alpaca"))
    assert _kept(result.records) == [
        ("1", "Name the capital of France.", "Paris", None, 1),
        ("2", "Summarise.\n\nThe cat sat on the mat.", "A cat.", None, 2),
        ("8", "Spell it.", "i-t", None, 8),
    ]
    assert _reasons(result.quarantined) == [
        (3, "missing field 'output'"),
        (4, "field 'instruction' is empty"),
        (5, "field 'input' must be a string, got list"),
        (6, "field 'output' must be a string, got int"),
        (7, "invalid JSON: Unterminated string starting at"),
        (9, "field 'output' is empty"),
        (10, "expected an object, got list"),
    ]
    assert result.quarantined[2].raw == '{"instruction": "Q", "input": ["a"], "output": "x"}'
    assert result.input == 10 == len(result.records) + len(result.quarantined)


def test_messages_records_and_reasons(tmp_path: Path) -> None:
    two_turns = _chat(
        ("system", "Answer briefly."),
        ("user", "What is 2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
        ("assistant", "6"),
    )
    path = _lines(
        tmp_path / "chat.jsonl",
        [
            _chat(("user", "Hi"), ("assistant", "Hello.")),
            two_turns,
            _chat(("system", "Answer briefly."), ("user", "Hi"), ("assistant", "Hey.")),
            _chat(("user", "a"), ("assistant", "b"), ("assistant", "c")),
            _chat(("user", "a"), ("assistant", "b"), ("user", "c")),
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
            _chat(("user", "a"), ("tool", "b")),
            {"messages": "hi"},
            {"prompt": "x", "completion": "y"},
            _chat(("user", "a"), ("system", "b"), ("assistant", "c")),
            _chat(("user", "a"), ("assistant", None)),
            {"messages": []},
            _chat(("assistant", "a")),
            _chat(("user", "a"), ("assistant", "")),
            {"messages": ["hello"]},
            _chat(("system", "only a system turn")),
        ],
    )
    result = read_records(path, Fields(format="messages"))
    assert _kept(result.records) == [
        ("1", "Hi", "Hello.", None, 1),
        (
            "2",
            "And 3+3?",
            "6",
            [
                SYSTEM,
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
            ],
            2,
        ),
        ("3", "Hi", "Hey.", [SYSTEM], 3),
    ]
    assert _reasons(result.quarantined) == [
        (4, "messages[2].role must be 'user', got 'assistant'"),
        (5, "last message must be from the assistant"),
        (6, "messages[0]: missing field 'content'"),
        (7, "messages[1]: a tool turn must answer a tool call of the assistant turn before it"),
        (8, "field 'messages' must be a list, got str"),
        (9, "missing field 'messages'"),
        (10, "messages[1]: a system message may only come first"),
        (11, "messages[1].content must be a string or a list of text parts, got null"),
        (12, "field 'messages' is empty"),
        (13, "messages[0].role must be 'user', got 'assistant'"),
        (14, "messages[1].content is empty"),
        (15, "messages[0] must be an object, got str"),
        (16, "last message must be from the assistant"),
    ]
    assert result.input == 16 == len(result.records) + len(result.quarantined)


def test_messages_honour_the_id_field_and_repeated_ids(tmp_path: Path) -> None:
    path = _lines(
        tmp_path / "chat.jsonl",
        [
            {"id": "a"} | _chat(("user", "one"), ("assistant", "1")),
            {"id": "a"} | _chat(("user", "two"), ("assistant", "2")),
            _chat(("user", "three"), ("assistant", "3")),
        ],
    )
    result = read_records(path, Fields(id="id", format="messages"))
    assert [(r.id, r.text) for r in result.records] == [("a", "one")]
    assert _reasons(result.quarantined) == [
        (2, "duplicate id 'a' (first at line 1)"),
        (3, "missing id field 'id'"),
    ]


def test_parquet_messages_are_read_like_jsonl(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        _chat(
            ("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "6")
        ),
        _chat(("user", "Hi"), ("assistant", "Hello.")),
        _chat(("user", "Hi"), ("user", "Hello.")),
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = read_records(path, Fields(format="auto"))
    assert _kept(result.records) == [
        (
            "1",
            "And 3+3?",
            "6",
            [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
            1,
        ),
        ("2", "Hi", "Hello.", None, 2),
    ]
    assert _reasons(result.quarantined) == [(3, "messages[1].role must be 'assistant', got 'user'")]


def test_shaped_formats_refuse_csv(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("instruction,output\nQ,A\n")
    with pytest.raises(DataError, match=r"data.format 'alpaca' reads .jsonl, .json or .parquet"):
        read_records(path, Fields(format="alpaca"))
    # auto reads a CSV file by field names, whatever its columns are called
    result = read_records(
        path, Fields(text="instruction", label=None, target="output", format="auto")
    )
    assert _kept(result.records) == [("2", "Q", "A", None, 2)]


# --- auto detection ----------------------------------------------------------------------


def test_detect_format_rules() -> None:
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"messages": [], "instruction": "x", "output": "y"}) == "messages"
    assert detect_format({"instruction": "x", "output": "y"}) == "alpaca"
    assert detect_format({"instruction": "x", "response": "y"}) == "fields"
    assert detect_format({"text": "x", "target": "y"}) == "fields"
    assert detect_format(["messages"]) == "fields"


def test_auto_picks_the_format_per_file_from_its_first_object(tmp_path: Path) -> None:
    chat = _lines(
        tmp_path / "chat.jsonl",
        [
            "{broken",
            ["a list is valid JSON but not an object"],
            _chat(("user", "Hi"), ("assistant", "Hello.")),
            {"instruction": "Q", "output": "A"},
        ],
    )
    result = read_records(chat, Fields(format="auto"))
    assert _kept(result.records) == [("3", "Hi", "Hello.", None, 3)]
    # the lines read to decide are still accounted for, in order
    assert _reasons(result.quarantined) == [
        (1, "invalid JSON: Expecting property name enclosed in double quotes"),
        (2, "expected an object, got list"),
        (4, "missing field 'messages'"),
    ]
    assert result.input == 4

    alpaca = _lines(
        tmp_path / "alpaca.jsonl", [{"instruction": "Q", "input": "ctx", "output": "A"}]
    )
    assert _kept(read_records(alpaca, Fields(format="auto")).records) == [
        ("1", "Q\n\nctx", "A", None, 1)
    ]

    fields = _lines(
        tmp_path / "plain.jsonl", [{"question": "Q?", "answer": "A"}, {"question": "R?"}]
    )
    result = read_records(
        fields, Fields(text="question", label=None, target="answer", format="auto")
    )
    assert _kept(result.records) == [("1", "Q?", "A", None, 1)]
    assert _reasons(result.quarantined) == [(2, "field 'answer' must be a non-empty string")]


# --- curation blocks ---------------------------------------------------------------------


def _conversation(first_user: str, system: str = "Answer briefly.") -> Record:
    return Record(
        id="c1",
        text="And my other address?",
        target="It is on file.",
        context=[
            {"role": "system", "content": system},
            {"role": "user", "content": first_user},
            {"role": "assistant", "content": "Noted."},
        ],
    )


def test_pii_in_earlier_turns_is_redacted() -> None:
    record = _conversation(
        "My email is jane.doe@example.com", system="Call +1 415-555-0134 if needed"
    )
    outcome = redact_pii([record])
    (kept,) = outcome.kept
    assert kept.context == [
        {"role": "system", "content": "Call <PHONE> if needed"},
        {"role": "user", "content": "My email is <EMAIL>"},
        {"role": "assistant", "content": "Noted."},
    ]
    assert (kept.text, kept.target) == (record.text, record.target)
    assert outcome.counts == {"pii.email": 1, "pii.phone": 1}
    assert record.context is not None and "jane.doe@example.com" in record.context[1]["content"]


def test_normalize_rewrites_earlier_turns_too() -> None:
    record = _conversation("caf\u00c3\u00a9   au   lait")  # mojibake and runs of spaces
    outcome = normalize([record])
    (kept,) = outcome.kept
    assert kept.context is not None and kept.context[1]["content"] == "caf\u00e9 au lait"
    assert outcome.counts == {"normalised": 1}
    assert normalize([kept]).counts == {}


def test_conversations_with_the_same_last_turn_are_not_duplicates() -> None:
    one = _conversation("Where do I live?")
    other = _conversation("Where do I work?")
    assert content_key(one) != content_key(other)
    assert content_key(one) == content_key(_conversation("Where do I live?"))
    assert one.full_text == "Answer briefly.\n\nWhere do I live?\n\nNoted.\n\nAnd my other address?"
    single = Record(id="s", text="t", target="u")
    assert single.full_text == "t"


def _inputs(name: str, train: Path, fields: Fields) -> CurationInputs:
    return CurationInputs(
        name=name,
        train=train,
        eval=None,
        fields=fields,
        eval_fraction=0.25,
        seed=1,
        needs_labels=False,
        task="instruction",
    )


def test_curating_a_messages_file_keeps_turns_and_redacts_them(tmp_path: Path) -> None:
    lines: list[object] = []
    for i in range(12):
        lines.append(
            _chat(
                ("system", "You are the helpdesk."),
                ("user", f"Ticket {i}: reach me at user{i}@example.org about case {i * 7}."),
                ("assistant", f"Noted for case {i * 7}."),
                ("user", f"Status of case {i * 7}?"),
                ("assistant", f"Case {i * 7} is {'open' if i % 2 else 'closed'}."),
            )
        )
    lines.append(_chat(("user", "Single turn question number one?"), ("assistant", "Yes.")))
    lines.append(_chat(("user", "a"), ("assistant", "b"), ("user", "c")))  # quarantined
    data = _lines(tmp_path / "chat.jsonl", lines)
    summary = curate_dataset(
        _inputs("chat", data, Fields(format="messages")), tmp_path / "out", tmp_path
    )
    assert summary["input"] == 14
    assert summary["input"] == (
        summary["kept"] + sum(summary["dropped"].values()) + summary["quarantined"]
    )
    assert summary["quarantined"] == 1
    assert summary["pii"] == {"email": 12}
    rows = [
        json.loads(line)
        for name in ("train_file", "eval_file")
        for line in Path(summary[name]).read_text().splitlines()
    ]
    assert len(rows) == summary["kept"] == 13
    curated = json.dumps(rows)
    assert "@example.org" not in curated
    by_id = {row["id"]: row for row in rows}
    assert by_id["13"] == {"id": "13", "text": "Single turn question number one?", "target": "Yes."}
    assert by_id["2"]["text"] == "Status of case 7?"
    assert by_id["2"]["target"] == "Case 7 is open."
    assert by_id["2"]["context"] == [
        {"role": "system", "content": "You are the helpdesk."},
        {"role": "user", "content": "Ticket 1: reach me at <EMAIL> about case 7."},
        {"role": "assistant", "content": "Noted for case 7."},
    ]
    (quarantined,) = [json.loads(x) for x in Path(summary["quarantine"]).read_text().splitlines()]
    assert (quarantined["line"], quarantined["reason"]) == (
        14,
        "last message must be from the assistant",
    )


# --- prompts -----------------------------------------------------------------------------

TWO_TURNS = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]


def test_render_prompt_of_a_two_turn_conversation_on_tiny_gpt() -> None:
    from runtime.loading import load_base_tokenizer

    tokenizer = load_base_tokenizer("tiny-gpt")
    prompt = render_prompt(tokenizer, "And 3+3?", TWO_TURNS)
    assert prompt == (
        "<|user|>\nWhat is 2+2?\n<|assistant|>\n4<|endoftext|>\n<|user|>\nAnd 3+3?\n<|assistant|>\n"
    )
    with_system = render_prompt(tokenizer, "And 3+3?", [SYSTEM, *TWO_TURNS])
    assert with_system == "<|system|>\nAnswer briefly.\n" + prompt
    # a single turn renders exactly as before (None and an empty context alike)
    assert (
        render_prompt(tokenizer, "hi", None)
        == render_prompt(tokenizer, "hi", [])
        == ("<|user|>\nhi\n<|assistant|>\n")
    )
    # in training only the final answer carries loss; the earlier answer is prompt
    item = encode_sft(tokenizer, "And 3+3?", "6", 128, TWO_TURNS)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("6", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert item.input_ids == prompt_ids + answer_ids
    assert item.labels == [IGNORE] * len(prompt_ids) + answer_ids


def test_render_prompt_plain_template_keeps_earlier_turns_in_order() -> None:
    plain = SimpleNamespace(chat_template=None)
    assert render_prompt(plain, "hi") == PLAIN_TEMPLATE.format(text="hi")
    assert render_prompt(plain, "And 3+3?", [SYSTEM, *TWO_TURNS]) == (
        "### System:\nAnswer briefly.\n\n"
        "### Instruction:\nWhat is 2+2?\n\n"
        "### Response:\n4\n\n"
        "### Instruction:\nAnd 3+3?\n\n### Response:\n"
    )


def test_encoder_decoder_source_text() -> None:
    assert source_text("Summarise this.") == "Summarise this."
    assert source_text("And 3+3?", [SYSTEM, *TWO_TURNS]) == (
        "System: Answer briefly.\n\nUser: What is 2+2?\n\nAssistant: 4\n\nUser: And 3+3?"
    )


# --- the spec ----------------------------------------------------------------------------


def _spec(tmp_path: Path, task: str, data: dict) -> Spec:
    write_jsonl(tmp_path / "train.jsonl", [{"instruction": "Q", "output": "A"}])
    (tmp_path / "train.csv").write_text("instruction,output\nQ,A\n")
    # a decoder base: generative tasks refuse the default encoder (minilm) at spec time
    raw = {"name": "formats", "task": task, "base_model": "tiny-gpt"}
    raw["data"] = {"train": "train.jsonl"} | data
    return parse_spec(raw, base_dir=tmp_path, source="spec.yaml")


def test_spec_format_defaults_to_auto_and_is_fields_for_other_tasks(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "instruction", {})
    assert (spec.data.format, spec.input_format) == ("auto", "auto")
    spec = _spec(tmp_path, "qa", {"format": "messages"})
    assert spec.input_format == "messages"
    spec = _spec(tmp_path, "instruction", {"format": "sharegpt"})
    assert spec.input_format == "sharegpt"
    spec = _spec(tmp_path, "language-modeling", {"format": "auto"})
    assert spec.input_format == "fields"


@pytest.mark.parametrize(
    ("task", "data", "expected"),
    [
        (
            "classification",
            {"format": "alpaca"},
            "data.format 'alpaca' applies only to tasks instruction, qa, summarization, "
            "not 'classification'",
        ),
        ("language-modeling", {"format": "messages"}, "data.format 'messages' applies only"),
        (
            "instruction",
            {"format": "alpaca", "target_field": "output"},
            "data.target_field does not apply with data.format 'alpaca'",
        ),
        (
            "summarization",
            {"format": "messages", "train": "train.csv"},
            "data.format 'messages' reads .jsonl, .json or .parquet files, but data.train is a",
        ),
        ("instruction", {"format": "openai"}, "data.format: Input should be 'auto'"),
    ],
)
def test_spec_rejects_formats_that_do_not_fit(
    tmp_path: Path, task: str, data: dict, expected: str
) -> None:
    with pytest.raises(SpecError) as caught:
        _spec(tmp_path, task, data)
    assert expected in str(caught.value)
    assert "spec.yaml" in str(caught.value)


def test_training_rows_and_eval_scoring_pass_the_earlier_turns(monkeypatch) -> None:
    import runtime.generate
    from runtime.generate import Generator, score_generator
    from runtime.loading import load_base_tokenizer
    from tasks.train.sft import encode_rows

    tokenizer = load_base_tokenizer("tiny-gpt")
    rows = [
        {"id": "1", "text": "And 3+3?", "target": "6", "context": TWO_TURNS},
        {"id": "2", "text": "hi", "target": "hello"},
    ]
    encoded = encode_rows(tokenizer, rows, "decoder", 128)
    assert encoded[0] == encode_sft(tokenizer, "And 3+3?", "6", 128, TWO_TURNS)
    assert encoded[1] == encode_sft(tokenizer, "hi", "hello", 128)

    seen: list[tuple[str, object]] = []

    def spy(tok, text, context=None, **tooling):  # tools and steps: None for these rows
        assert not any(tooling.values())
        seen.append((text, context))
        return render_prompt(tok, text, context, **tooling)

    def encode_spy(tok, text, target, max_length, context=None, **tooling):
        assert not any(tooling.values())
        seen.append((text, context))
        return encode_sft(tok, text, target, max_length, context, **tooling)

    # generation renders prompts in runtime.generate, perplexity scoring encodes the pairs
    monkeypatch.setattr(runtime.generate, "render_prompt", spy)
    monkeypatch.setattr(runtime.generate, "encode_sft", encode_spy)
    scored = score_generator(Generator.from_base("tiny-gpt", 128, 2), rows)
    assert len(scored["predictions"]) == 2
    # generation, then perplexity scoring: both see each row's own earlier turns
    assert seen == [("And 3+3?", TWO_TURNS), ("hi", None)] * 2


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_a_json_array_file_is_read_record_by_record(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.curate.records as records

    monkeypatch.setattr(records, "JSON_CHUNK", chunk)  # 7: every element crosses a chunk
    rows: list[object] = [{"instruction": f"Say {i}\nplease", "output": f"{i}"} for i in range(4)]
    rows += [5, {"instruction": "no output"}, {"instruction": "Say 9", "output": "9", "input": ""}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows, indent=2))
    read = read_records(path, Fields(format="auto", label=None))
    # ids default to the position in the array; quarantine names the line a record starts on
    assert [(r.id, r.line, r.text, r.target) for r in read.records] == [
        ("1", 2, "Say 0\nplease", "0"),
        ("2", 6, "Say 1\nplease", "1"),
        ("3", 10, "Say 2\nplease", "2"),
        ("4", 14, "Say 3\nplease", "3"),
        ("7", 22, "Say 9", "9"),
    ]
    assert _reasons(read.quarantined) == [
        (18, "expected an object, got int"),
        (19, "missing field 'output'"),
    ]
    assert all(q.file == str(path) for q in read.quarantined)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must hold one array of records"),
        ('{"text": "a"}', "must hold one array of records ([{...}, ...]), not '{'"),
        ('[{"text": "a"},\n', "line 2: the array is not closed"),
        ('[{"text": "a"},]', "line 1: a ',' with no record after it before ']'"),
        ('[{"text": "a"} {"text": "b"}]', "line 1: expected ',' or ']' between records"),
        ('[{"text": "a"}] []', "text after the array's closing ']'"),
        ('[\n{"text": "a"},\n{"text": "b",}]', "line 3: invalid JSON in a record"),
    ],
)
def test_a_json_file_that_is_not_one_array_is_one_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(message)) as raised:
        read_records(path, Fields(format="auto", label=None))
    assert str(raised.value).startswith(str(path))


def test_a_large_json_array_streams_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    from tasks.curate.records import iter_records

    path = tmp_path / "big.json"
    answer = "x" * 4000
    with path.open("w") as handle:  # ~12 MB
        handle.write("[")
        handle.write(
            ",".join(json.dumps({"text": f"q{i}", "target": answer}) for i in range(3_000))
        )
        handle.write("]")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        ids = [
            item.id
            for item in iter_records(path, Fields(target="target", label=None))
            if isinstance(item, Record)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one line holds every record: each is kept, with its position as its id
    assert ids == [str(i) for i in range(1, 3_001)]
    # the file is never held whole: a chunk of read-ahead and the ids seen, well under its size
    assert peak < size / 2, (peak, size)
