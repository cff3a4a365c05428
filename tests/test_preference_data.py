"""Preference and KTO data: every input shape read into curated rows, and curated end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptflow.spec import CurationSpec, parse_spec, spec_json_schema
from tasks.curate.records import Fields, detect_format, read_records, record_rows
from tasks.curate.stage import CurationInputs, curate_dataset

SYSTEM = {"role": "system", "content": "Answer briefly."}


def _lines(path: Path, lines: list[object]) -> Path:
    """Write each item as one JSONL line (strings are written as they are)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _msg(role: str, content: object) -> dict:
    return {"role": role, "content": content}


def _gpt(speaker: str, value: object) -> dict:
    return {"from": speaker, "value": value}


def _parts(*texts: str) -> list[dict]:
    return [{"type": "text", "text": t} for t in texts]


def _rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _curated(summary: dict) -> dict[str, dict]:
    rows = _rows(summary["train_file"]) + _rows(summary["eval_file"])
    return {row["id"]: row for row in rows}


def _inputs(name: str, train: Path, fields: Fields, **blocks: object) -> CurationInputs:
    return CurationInputs(
        name=name,
        train=train,
        eval=None,
        fields=fields,
        eval_fraction=0.25,
        seed=1,
        needs_labels=False,
        task="instruction",
        blocks=CurationSpec(**blocks),
    )


def _identity(summary: dict) -> None:
    """input = kept + dropped + quarantined, and every count matches its file."""
    assert summary["input"] == (
        summary["kept"] + sum(summary["dropped"].values()) + summary["quarantined"]
    )
    assert summary["kept"] == len(_rows(summary["train_file"])) + len(_rows(summary["eval_file"]))
    assert summary["quarantined"] == len(_rows(summary["quarantine"]))
    assert sum(summary["dropped"].values()) == len(_rows(summary["dropped_file"]))


# --- the input shapes ---------------------------------------------------------------------

PREFERENCE_SHAPES: list[object] = [
    {  # a string prompt
        "id": "string",
        "prompt": "What is the boiling point of water at sea level?",
        "chosen": "100 degrees Celsius.",
        "rejected": "50 degrees Celsius.",
    },
    {  # a conversation so far, and one assistant turn per side
        "id": "messages",
        "prompt": [
            SYSTEM,
            _msg("user", "Name a prime number."),
            _msg("assistant", "7"),
            _msg("user", "Name an even prime."),
        ],
        "chosen": [_msg("assistant", "2")],
        "rejected": [_msg("assistant", "4")],
    },
    {  # TRL's implicit prompt: two whole conversations, the shared turns are the prompt
        "id": "implicit",
        "chosen": [
            _msg("system", "You are a geography tutor."),
            _msg("user", "What is the capital of France?"),
            _msg("assistant", "Paris."),
        ],
        "rejected": [
            _msg("system", "You are a geography tutor."),
            _msg("user", "What is the capital of France?"),
            _msg("assistant", "Lyon."),
        ],
    },
    {  # LLaMA-Factory's ShareGPT ranking form
        "id": "sharegpt",
        "conversations": [
            _gpt("human", "Hi there."),
            _gpt("gpt", "Hello! How can I help?"),
            _gpt("human", "Which planet is the largest?"),
        ],
        "chosen": _gpt("gpt", "Jupiter."),
        "rejected": _gpt("gpt", "Mars."),
    },
    {  # content as a list of text parts
        "id": "parts",
        "prompt": [_msg("user", _parts("Translate 'chat' ", "from French."))],
        "chosen": [_msg("assistant", _parts("Cat."))],
        "rejected": "Chat.",
    },
]

PREFERENCE_ROWS = [
    {
        "id": "string",
        "text": "What is the boiling point of water at sea level?",
        "target": "100 degrees Celsius.",
        "rejected": "50 degrees Celsius.",
    },
    {
        "id": "messages",
        "text": "Name an even prime.",
        "context": [SYSTEM, _msg("user", "Name a prime number."), _msg("assistant", "7")],
        "target": "2",
        "rejected": "4",
    },
    {
        "id": "implicit",
        "text": "What is the capital of France?",
        "context": [_msg("system", "You are a geography tutor.")],
        "target": "Paris.",
        "rejected": "Lyon.",
    },
    {
        "id": "sharegpt",
        "text": "Which planet is the largest?",
        "context": [_msg("user", "Hi there."), _msg("assistant", "Hello! How can I help?")],
        "target": "Jupiter.",
        "rejected": "Mars.",
    },
    {"id": "parts", "text": "Translate 'chat' from French.", "target": "Cat.", "rejected": "Chat."},
]

KTO_SHAPES: list[object] = [
    {"prompt": "Is the sky blue on a clear day?", "completion": "Yes, it is.", "label": True},
    {
        "prompt": [SYSTEM, _msg("user", "Is fire cold?")],
        "completion": [_msg("assistant", "Yes, very cold.")],
        "label": False,
    },
    {
        "prompt": [_msg("user", _parts("Name a ", "colour."))],
        "completion": [_msg("assistant", _parts("Blue."))],
        "label": True,
    },
]

KTO_ROWS = [
    {
        "id": "1",
        "text": "Is the sky blue on a clear day?",
        "target": "Yes, it is.",
        "label": "desirable",
    },
    {
        "id": "2",
        "text": "Is fire cold?",
        "context": [SYSTEM],
        "target": "Yes, very cold.",
        "label": "undesirable",
    },
    {"id": "3", "text": "Name a colour.", "target": "Blue.", "label": "desirable"},
]


@pytest.mark.parametrize("fmt", ["preference", "auto"])
def test_every_preference_shape_reads_into_its_curated_row(tmp_path: Path, fmt: str) -> None:
    path = _lines(tmp_path / "pairs.jsonl", PREFERENCE_SHAPES)
    result = read_records(path, Fields(id="id", format=fmt))
    assert not result.quarantined
    assert record_rows(result.records) == PREFERENCE_ROWS
    assert [r.line for r in result.records] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("fmt", ["kto", "auto"])
def test_every_kto_shape_reads_into_its_curated_row(tmp_path: Path, fmt: str) -> None:
    path = _lines(tmp_path / "kto.jsonl", KTO_SHAPES)
    result = read_records(path, Fields(format=fmt))
    assert not result.quarantined
    assert record_rows(result.records) == KTO_ROWS


def test_parquet_preference_and_kto_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = [
        {
            "prompt": [_msg("user", "Name a prime number.")],
            "chosen": [_msg("assistant", "7")],
            "rejected": [_msg("assistant", "8")],
        },
        {"prompt": [_msg("user", "Name a vowel.")], "chosen": [], "rejected": []},
    ]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pairs.parquet")
    result = read_records(tmp_path / "pairs.parquet", Fields(format="auto"))
    assert record_rows(result.records) == [
        {"id": "1", "text": "Name a prime number.", "target": "7", "rejected": "8"}
    ]
    assert [(q.line, q.reason) for q in result.quarantined] == [(2, "field 'chosen' is empty")]
    rated = [
        {"prompt": "Is ice cold?", "completion": "Yes.", "label": True},
        {"prompt": "Is ice hot?", "completion": "Yes.", "label": False},
    ]
    pq.write_table(pa.Table.from_pylist(rated), tmp_path / "kto.parquet")
    result = read_records(tmp_path / "kto.parquet", Fields(format="kto"))
    assert record_rows(result.records) == [
        {"id": "1", "text": "Is ice cold?", "target": "Yes.", "label": "desirable"},
        {"id": "2", "text": "Is ice hot?", "target": "Yes.", "label": "undesirable"},
    ]


def test_auto_detects_preference_and_kto_from_the_first_object() -> None:
    assert detect_format({"prompt": "q", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_format({"chosen": [], "rejected": []}) == "preference"
    sharegpt = {"conversations": [], "chosen": {}, "rejected": {}}
    assert detect_format(sharegpt) == "preference"
    assert detect_format({"prompt": "q", "completion": "a", "label": True}) == "kto"
    assert detect_format({"prompt": "q", "completion": "a"}) == "fields"  # no label: not KTO
    assert detect_format({"messages": [], "chosen": "a", "rejected": "b"}) == "messages"


# --- broken records -----------------------------------------------------------------------


def test_broken_preference_records_are_quarantined_with_line_and_reason(tmp_path: Path) -> None:
    user, bot = (lambda c: _msg("user", c)), (lambda c: _msg("assistant", c))
    human, gpt = (lambda v: _gpt("human", v)), (lambda v: _gpt("gpt", v))
    image = [{"type": "image_url", "image_url": "x"}]
    lines: list[object] = [
        {"prompt": "Fine?", "chosen": "Yes.", "rejected": "No."},
        {"prompt": "Q", "chosen": "A"},
        {"prompt": "   ", "chosen": "A", "rejected": "B"},
        {"prompt": "Q", "chosen": "", "rejected": "B"},
        {"prompt": "Q", "chosen": "A", "rejected": []},
        {"prompt": [user(3)], "chosen": "A", "rejected": "B"},
        {"prompt": [_msg("bot", "Q")], "chosen": "A", "rejected": "B"},
        {"prompt": [user("Q"), bot("A")], "chosen": "A", "rejected": "B"},
        {"prompt": "Q", "chosen": [user("A")], "rejected": "B"},
        {"prompt": "Q", "chosen": [bot("A"), bot("B")], "rejected": "B"},
        {"chosen": [user("Q1"), bot("A")], "rejected": [user("Q2"), bot("B")]},
        {
            "chosen": [user("Q"), bot("A"), user("Q2"), bot("B")],
            "rejected": [user("Q"), bot("C"), user("Q2"), bot("D")],
        },
        {"chosen": [user("Q"), bot("A"), user("Q2")], "rejected": [user("Q"), bot("B")]},
        {"chosen": "A", "rejected": "B"},
        {"conversations": [human("Q")], "chosen": human("A"), "rejected": gpt("B")},
        {"conversations": [human("Q"), gpt("A")], "chosen": gpt("B"), "rejected": gpt("C")},
        {"conversations": [_gpt("user", "Q")], "chosen": gpt("A"), "rejected": gpt("B")},
        {"conversations": [human("Q")], "chosen": "A", "rejected": gpt("B")},
        {"prompt": [user(image)], "chosen": "A", "rejected": "B"},
        {"prompt": 5, "chosen": "A", "rejected": "B"},
        {"prompt": "Q", "chosen": {"role": "assistant", "content": "A"}, "rejected": "B"},
        {"prompt": [user("Q"), user("Q again")], "chosen": "A", "rejected": "B"},
        ["not", "an", "object"],
    ]  # fmt: skip
    path = _lines(tmp_path / "pairs.jsonl", lines)
    result = read_records(path, Fields(format="preference"))
    assert [r.line for r in result.records] == [1]
    assert [(q.line, q.reason) for q in result.quarantined] == [
        (2, "missing field 'rejected'"),
        (3, "field 'prompt' is empty"),
        (4, "field 'chosen' is empty"),
        (5, "field 'rejected' is empty"),
        (6, "prompt[0].content must be a string or a list of text parts, got int"),
        (7, "prompt[0].role must be one of 'system', 'user', 'assistant', got 'bot'"),
        (8, "the last message of 'prompt' must be from the user"),
        (9, "chosen[0].role must be 'assistant', got 'user'"),
        (10, "field 'chosen' must hold one assistant message, got 2"),
        (11, "'chosen' and 'rejected' share no leading turns, and there is no 'prompt' field"),
        (
            12,
            "'chosen' and 'rejected' must be the same conversation up to their last message; "
            "they differ from message 1 on",
        ),
        (13, "the last message of 'chosen' must be from the assistant"),
        (14, "missing field 'prompt'"),
        (15, "chosen.from must be 'gpt', got 'human'"),
        (16, "the last message of 'conversations' must be from the human"),
        (17, "conversations[0].from must be one of 'system', 'human', 'gpt', got 'user'"),
        (18, "chosen must be an object, got str"),
        (19, "prompt[0].content[0] must be a text part {'type': 'text', 'text': ...}"),
        (20, "field 'prompt' must be a string or a list of messages, got int"),
        (21, "field 'chosen' must be a string or a list of messages, got dict"),
        (22, "prompt[1].role must be 'assistant', got 'user'"),
        (23, "expected an object, got list"),
    ]
    assert result.input == len(lines)


def test_broken_kto_records_are_quarantined_with_line_and_reason(tmp_path: Path) -> None:
    lines: list[object] = [
        {"prompt": "Fine?", "completion": "Yes.", "label": True},
        {"prompt": "Q", "completion": "A", "label": "yes"},
        {"prompt": "Q", "completion": "A", "label": 1},
        {"prompt": "Q", "completion": "A", "label": None},
        {"prompt": "Q", "completion": "A"},
        {"prompt": "Q", "label": True},
        {"prompt": "Q", "completion": "  ", "label": True},
        {"prompt": "Q", "completion": [_msg("assistant", "A")] * 2, "label": True},
        {"completion": "A", "label": False},
        {"prompt": [SYSTEM], "completion": "A", "label": False},
    ]  # fmt: skip
    path = _lines(tmp_path / "kto.jsonl", lines)
    result = read_records(path, Fields(format="kto"))
    assert [r.line for r in result.records] == [1]
    assert [(q.line, q.reason) for q in result.quarantined] == [
        (2, "field 'label' must be true or false, got str"),
        (3, "field 'label' must be true or false, got int"),
        (4, "field 'label' must be true or false, got null"),
        (5, "missing field 'label'"),
        (6, "missing field 'completion'"),
        (7, "field 'completion' is empty"),
        (8, "field 'completion' must hold one assistant message, got 2"),
        (9, "missing field 'prompt'"),
        (10, "the last message of 'prompt' must be from the user"),
    ]


def test_fuzz_preference_and_kto_objects_never_crash(tmp_path_factory) -> None:
    """Any mix of the fields' shapes: a Record or a quarantine reason, and rows that encode."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tasks.curate.records import Quarantined, iter_records

    texts = st.text(max_size=8) | st.text(st.characters(categories=["Cs", "Ll"]), max_size=3)
    scalars = st.none() | st.booleans() | st.integers() | texts
    content = scalars | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}))
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "x"]), "content": content}
    ) | st.fixed_dictionaries(
        {"from": st.sampled_from(["system", "human", "gpt", "user"]), "value": content}
    )
    side = scalars | message | st.lists(message, max_size=4)
    keys = ["prompt", "chosen", "rejected", "completion", "label", "conversations"]
    objects = st.dictionaries(st.sampled_from(keys), side, max_size=6)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(objects, min_size=1, max_size=4), st.sampled_from(["preference", "kto"]))
    def check(rows: list[dict], fmt: str) -> None:
        path = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        outcomes = list(iter_records(path, Fields(format=fmt)))
        assert len(outcomes) == len(rows)
        for item in outcomes:
            if not isinstance(item, Quarantined):
                json.dumps(record_rows([item]), ensure_ascii=False).encode("utf-8")

    check()


# --- curation end to end ------------------------------------------------------------------


def test_curating_every_preference_shape_gives_the_exact_rows(tmp_path: Path) -> None:
    path = _lines(tmp_path / "pairs.jsonl", PREFERENCE_SHAPES)
    summary = curate_dataset(
        _inputs("shapes", path, Fields(id="id", format="auto")), tmp_path / "out", tmp_path
    )
    _identity(summary)
    assert (summary["input"], summary["kept"], summary["quarantined"]) == (5, 5, 0)
    assert summary["dropped"] == {}
    curated = _curated(summary)
    assert [curated[row["id"]] for row in PREFERENCE_ROWS] == PREFERENCE_ROWS
    assert "chosen_equals_rejected" in summary["blocks"]
    assert summary["labels"] == []


def _pair(i: int, chosen: str | None = None, rejected: str | None = None) -> dict:
    return {
        "prompt": f"Question {i}: what is {i} plus {i}?",
        "chosen": chosen or f"It is {2 * i}.",
        "rejected": rejected or f"It is {2 * i + 1}.",
    }


def test_curating_pairs_drops_equal_sides_and_repeated_prompts_and_redacts_rejected(
    tmp_path: Path,
) -> None:
    lines: list[object] = [
        _pair(1),
        _pair(2, chosen="Paris.", rejected="  Paris.  "),  # equal once normalised
        _pair(3, rejected="Write to bob.smith@example.com for help."),
        _pair(1, chosen="Two.", rejected="Three."),  # the prompt of line 1 again
        *[_pair(i) for i in range(5, 11)],
        {"prompt": "Q", "chosen": "A"},
        {"chosen": [_msg("user", "Q1"), _msg("assistant", "A")],
         "rejected": [_msg("user", "Q2"), _msg("assistant", "B")]},
    ]  # fmt: skip
    path = _lines(tmp_path / "pairs.jsonl", lines)
    summary = curate_dataset(
        _inputs("pairs", path, Fields(format="preference")), tmp_path / "out", tmp_path
    )
    _identity(summary)
    assert summary["input"] == 12
    assert summary["kept"] == 8
    assert summary["dropped"] == {"chosen equals rejected": 1, "exact duplicate": 1}
    assert summary["quarantined"] == 2
    assert summary["pii"] == {"email": 1}
    curated = _curated(summary)
    assert sorted(curated, key=int) == ["1", "3", "5", "6", "7", "8", "9", "10"]
    assert curated["3"] == {
        "id": "3",
        "text": "Question 3: what is 3 plus 3?",
        "target": "It is 6.",
        "rejected": "Write to <EMAIL> for help.",
    }
    assert curated["1"]["target"] == "It is 2."  # the first pair of a prompt is the one kept
    dropped = {row["id"]: row for row in _rows(summary["dropped_file"])}
    assert dropped["2"] == {
        "id": "2",
        "text": "Question 2: what is 2 plus 2?",
        "target": "Paris.",
        "rejected": "Paris.",
        "file": str(path),
        "line": 2,
        "block": "chosen_equals_rejected",
        "reason": "chosen equals rejected",
        "detail": "the two answers are the same after normalisation",
    }
    assert (dropped["4"]["block"], dropped["4"]["reason"], dropped["4"]["detail"]) == (
        "exact_dedup",
        "exact duplicate",
        "of id 1",
    )
    quarantined = [(q["line"], q["reason"]) for q in _rows(summary["quarantine"])]
    assert quarantined == [
        (11, "missing field 'rejected'"),
        (12, "'chosen' and 'rejected' share no leading turns, and there is no 'prompt' field"),
    ]
    assert "@example.com" not in json.dumps(list(curated.values()))


def test_pairs_with_one_prompt_stay_on_one_side_without_dedup(tmp_path: Path) -> None:
    lines = [_pair(i % 4, chosen=f"Answer {i}.", rejected=f"Wrong {i}.") for i in range(16)]
    path = _lines(tmp_path / "pairs.jsonl", lines)
    inputs = _inputs(
        "pairs", path, Fields(format="preference"), exact_dedup=False, near_dedup=False
    )
    summary = curate_dataset(inputs, tmp_path / "out", tmp_path)
    _identity(summary)
    assert (summary["input"], summary["kept"]) == (16, 16)
    train = {row["text"] for row in _rows(summary["train_file"])}
    evaluation = {row["text"] for row in _rows(summary["eval_file"])}
    assert train and evaluation and not train & evaluation


COMPLETIONS = ("Yes, that is right.", "No, that is wrong.", "Maybe; it depends on the case.")


def test_kto_prompts_stay_on_one_side_and_conflicting_ratings_are_quarantined(
    tmp_path: Path,
) -> None:
    def rated(topic: int, answer: int, label: bool) -> dict:
        prompt = f"Rate this answer about topic number {topic} for me."
        return {"prompt": prompt, "completion": COMPLETIONS[answer], "label": label}

    lines: list[object] = [
        rated(topic, answer, answer != 1) for topic in range(8) for answer in range(3)
    ]
    lines.append(rated(0, 0, False))  # line 25: line 1's answer, rated the other way
    lines.append(rated(0, 1, False))  # line 26: line 2 again
    path = _lines(tmp_path / "kto.jsonl", lines)
    summary = curate_dataset(
        _inputs("kto", path, Fields(format="auto")), tmp_path / "out", tmp_path
    )
    _identity(summary)
    assert (summary["input"], summary["kept"], summary["quarantined"]) == (26, 23, 2)
    assert summary["dropped"] == {"exact duplicate": 1}
    assert summary["labels"] == ["desirable", "undesirable"]
    quarantined = [(q["line"], q["reason"]) for q in _rows(summary["quarantine"])]
    assert quarantined == [
        (1, "label conflict: same text also labelled 'undesirable'"),
        (25, "label conflict: same text also labelled 'desirable'"),
    ]
    (duplicate,) = _rows(summary["dropped_file"])
    assert (duplicate["line"], duplicate["detail"]) == (26, "of id 2")
    train, evaluation = _rows(summary["train_file"]), _rows(summary["eval_file"])
    assert evaluation
    sides: dict[str, set[str]] = {}
    for side, rows in (("train", train), ("eval", evaluation)):
        for row in rows:
            sides.setdefault(row["text"], set()).add(side)
    assert all(len(found) == 1 for found in sides.values()), sides
    # every prompt keeps all its rated completions: near dedup compares prompt *and* answer
    answers = [row["target"] for row in train + evaluation]
    assert len(answers) == 23 and set(answers) == set(COMPLETIONS)
    assert {row["label"] for row in evaluation} == {"desirable", "undesirable"}


# --- the spec -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["preference", "kto"])
def test_the_spec_takes_the_formats(tmp_path: Path, fmt: str) -> None:
    _lines(tmp_path / "train.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    raw = {"name": "prefs", "task": "instruction", "base_model": "tiny-gpt"}
    spec = parse_spec(raw | {"data": {"train": "train.jsonl", "format": fmt}}, tmp_path)
    assert spec.input_format == fmt
    schema = json.dumps(spec_json_schema())
    assert '"preference"' in schema and '"kto"' in schema
