"""Training data named the way other trainers name it (``adaptflow.inputs.resolve``).

LLaMA-Factory's ``dataset_info.json#NAME`` entries (their ``columns``/``tags`` mapping applied by
the readers), folders written by ``datasets``' ``save_to_disk``, and ``hf://ORG/NAME`` loaded by
the real ``datasets.load_dataset`` from a local dataset folder with the hub switched off. Each
is read with the usual accounting: input = kept + quarantined, a bad record named by file, line
and reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from adaptflow.errors import SpecError
from adaptflow.inputs import display, hf_source_of
from adaptflow.provenance import input_lineage
from adaptflow.spec import parse_spec
from tasks.curate.records import Fields, read_records
from tasks.curate.stage import CurationInputs, curate_dataset


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, and a ``datasets`` cache of this test's own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _spec(folder: Path, train: str, **data: Any) -> Any:
    raw = {
        "name": "byod",
        "task": "instruction",
        "base_model": "tiny-gpt",
        "method": "icl",
        "data": {"train": train, **data},
    }
    return parse_spec(raw, folder, source=str(folder / "spec.yaml"))


def _write(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return path


ALPACA_ROWS = [
    {"q": "Name the colour of the sky.", "ctx": "", "a": "Blue.", "sys": "Be brief."},
    {"q": "Translate to French:", "ctx": "cat", "a": "chat", "sys": ""},
    {"q": "Sum 2 and 3.", "ctx": None, "a": "5", "sys": "Be brief."},
    {"q": "", "ctx": "x", "a": "y"},  # empty prompt: quarantined
    {"q": "No answer here."},  # no response column: quarantined
    ["not", "an", "object"],  # quarantined
]
SHAREGPT_ROWS = [
    {
        "dialog": [
            {"speaker": "client", "text": "Reset my password?"},
            {"speaker": "agent", "text": "Use the portal."},
        ],
        "sys": "Answer briefly.",
    },
    {
        "dialog": [
            {"speaker": "client", "text": "Hi"},
            {"speaker": "agent", "text": "Hello."},
            {"speaker": "client", "text": "Weather?"},
            {"speaker": "agent", "text": "Sunny."},
        ]
    },
    {"dialog": [{"speaker": "robot", "text": "?"}, {"speaker": "agent", "text": "!"}]},  # role
    {"dialog": [{"speaker": "client", "text": "only a question"}]},  # no answer
]
RANKING_ROWS = [
    {"instruction": "Reset my password?", "input": "", "good": "Use the portal.", "bad": "No."},
    {"instruction": "Capital of France?", "input": "", "good": "Paris.", "bad": "Lyon."},
    {"instruction": "Greet", "input": "", "good": "Hi.", "bad": ""},  # empty rejected
]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A LLaMA-Factory data folder: three usable entries and some broken ones."""
    data = tmp_path / "lf"
    _write(data / "qa.json", ALPACA_ROWS)
    (data / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT_ROWS))
    _write(data / "pairs.json", RANKING_ROWS)
    entries = {
        "qa": {"file_name": "qa.json", "columns": {"prompt": "q", "query": "ctx", "response": "a"}},
        "qa_system": {
            "file_name": "qa.json",
            "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys"},
        },
        "chat": {
            "file_name": "chat.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog", "system": "sys"},
            "tags": {
                "role_tag": "speaker",
                "content_tag": "text",
                "user_tag": "client",
                "assistant_tag": "agent",
            },
        },
        "pairs": {
            "file_name": "pairs.json",
            "ranking": True,
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "chosen": "good",
                "rejected": "bad",
            },
        },
        "missing_file": {"file_name": "gone.json"},
        "hub": {"hf_hub_url": "tatsu-lab/alpaca"},
        "odd": {"file_name": "qa.json", "formatting": "openai"},
    }
    return _write(data / "dataset_info.json", entries)


def _counts(path: Path, fmt: str = "auto") -> tuple[int, int, int]:
    read = read_records(path, Fields(format=fmt, label=None))
    return read.input, len(read.records), len(read.quarantined)


def test_an_alpaca_entry_reads_its_columns(tmp_path: Path, registry: Path) -> None:
    spec = _spec(tmp_path, "lf/dataset_info.json#qa")
    train = spec.data.train
    assert display(train) == "lf/dataset_info.json#qa"
    read = read_records(train, Fields(format="auto", label=None))
    assert (read.input, len(read.records), len(read.quarantined)) == (6, 3, 3)
    first, second, third = read.records
    assert (first.text, first.target, first.context) == (
        "Name the colour of the sky.",
        "Blue.",
        None,
    )
    assert (second.text, second.target) == ("Translate to French:\n\ncat", "chat")
    assert third.text == "Sum 2 and 3."
    # reported in the entry's own file, with the entry's column names
    reasons = [(q.file, q.line, q.reason) for q in read.quarantined]
    qa = str((tmp_path / "lf" / "qa.json").absolute())
    assert [r[0] for r in reasons] == [qa] * 3
    assert [r[2] for r in reasons] == [
        "field 'q' is empty",
        "missing field 'a'",
        "expected an object, got list",
    ]
    # and an explicit format of the entry's own formatting is accepted
    assert _counts(train, "alpaca") == (6, 3, 3)


def test_an_alpaca_entry_with_a_system_column_reads_as_a_chat(
    tmp_path: Path, registry: Path
) -> None:
    train = _spec(tmp_path, "lf/dataset_info.json#qa_system").data.train
    read = read_records(train, Fields(format="auto", label=None))
    assert (read.input, len(read.records), len(read.quarantined)) == (6, 3, 3)
    first = read.records[0]
    assert first.context == [{"role": "system", "content": "Be brief."}]
    assert (first.text, first.target) == ("Name the colour of the sky.", "Blue.")
    assert read.records[1].context is None  # an empty system column adds no turn


def test_a_sharegpt_entry_renames_its_tags(tmp_path: Path, registry: Path) -> None:
    train = _spec(tmp_path, "lf/dataset_info.json#chat").data.train
    read = read_records(train, Fields(format="auto", label=None))
    assert (read.input, len(read.records), len(read.quarantined)) == (4, 2, 2)
    first, second = read.records
    assert first.context == [{"role": "system", "content": "Answer briefly."}]
    assert (first.text, first.target) == ("Reset my password?", "Use the portal.")
    assert second.context == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    assert (second.text, second.target) == ("Weather?", "Sunny.")
    role, short = (q.reason for q in read.quarantined)
    assert role.startswith("dialog[0].speaker must be one of") and "got 'robot'" in role
    assert "must be from 'gpt'" in short
    assert [q.line for q in read.quarantined] == [3, 4]


def test_a_ranking_entry_reads_preference_pairs(tmp_path: Path, registry: Path) -> None:
    train = _spec(tmp_path, "lf/dataset_info.json#pairs").data.train
    read = read_records(train, Fields(format="auto", label=None))
    assert (read.input, len(read.records), len(read.quarantined)) == (3, 2, 1)
    assert [(r.text, r.target, r.rejected) for r in read.records] == [
        ("Reset my password?", "Use the portal.", "No."),
        ("Capital of France?", "Paris.", "Lyon."),
    ]
    assert read.quarantined[0].reason == "field 'bad' is empty"
    assert _counts(train, "preference") == (3, 2, 1)


@pytest.mark.parametrize(
    ("train", "reason"),
    [
        ("lf/dataset_info.json#nope", "no dataset 'nope' in .*entries: qa, qa_system, chat"),
        ("lf/dataset_info.json#missing_file", "'missing_file' file_name .*gone.json: not found"),
        ("lf/dataset_info.json#hub", "loads its data through hf_hub_url.*hf://tatsu-lab/alpaca"),
        ("lf/dataset_info.json#odd", "formatting 'openai'; adaptflow reads alpaca or sharegpt"),
        ("lf/dataset_info.json", "a dataset registry .*name the dataset to read"),
    ],
)  # fmt: skip
def test_broken_entries_are_spec_errors_naming_data_train(
    tmp_path: Path, registry: Path, train: str, reason: str
) -> None:
    with pytest.raises(SpecError, match=f"data.train: .*{reason}"):
        _spec(tmp_path, train)


def test_a_format_other_than_the_entrys_is_refused(tmp_path: Path, registry: Path) -> None:
    from adaptflow.errors import DataError

    train = _spec(tmp_path, "lf/dataset_info.json#qa").data.train
    with pytest.raises(DataError, match="data.format 'sharegpt', but the entry's records"):
        read_records(train, Fields(format="sharegpt", label=None))


ROWS = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_saved_dataset_round_trips(tmp_path: Path) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    train = _spec(tmp_path, "saved").data.train
    assert _rows(train) == ROWS
    assert display(train) == "saved"
    assert _counts(train) == (6, 6, 0)
    tags = input_lineage("train", train)
    assert tags["adaptflow.input.train.hf_dataset"] == str((tmp_path / "saved").absolute())
    assert tags["adaptflow.input.train.hf_fingerprint"]
    assert _spec(tmp_path, "saved").data.train == train  # written once per fingerprint
    with pytest.raises(SpecError, match="holds one Dataset, not a DatasetDict"):
        _spec(tmp_path, "saved#test")


def test_a_saved_dataset_dict_reads_the_split_named(tmp_path: Path) -> None:
    splits = {"train": ROWS[:4], "test": ROWS[4:]}
    saved = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    saved.save_to_disk(str(tmp_path / "dd"))
    assert _rows(_spec(tmp_path, "dd").data.train) == splits["train"]  # default: train
    test = _spec(tmp_path, "dd#test").data.train
    assert _rows(test) == splits["test"]
    assert display(test) == "dd#test"
    with pytest.raises(SpecError, match=r"data.train: .*no split 'dev' .*splits: train, test"):
        _spec(tmp_path, "dd#dev")


def test_rows_json_cannot_hold_are_quarantined(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"text": f"doc {i}", "blob": bytes([i])} for i in range(2)]
    rows.append({"text": "doc 2", "blob": None})
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bin"))
    train = _spec(tmp_path, "bin").data.train
    read = read_records(train, Fields(format="fields", label=None))
    assert (read.input, len(read.records), len(read.quarantined)) == (3, 1, 2)
    assert read.records[0].text == "doc 2"
    first = read.quarantined[0]
    assert (first.file, first.line) == ("bin", 1)
    assert first.reason.startswith("column 'blob' holds bytes, which is not text or JSON")


def _hub_folder(root: Path) -> Path:
    """A script-free dataset repository as ``load_dataset`` reads one (JSON lines per split)."""
    repo = root / "acme" / "support"
    repo.mkdir(parents=True)
    chat = [
        {"messages": [{"role": "user", "content": f"Reset password {i}?"},
                      {"role": "assistant", "content": f"Use portal {i}."}]}
        for i in range(10)
    ]  # fmt: skip
    chat.append({"messages": [{"role": "user", "content": "unanswered"}]})
    (repo / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    (repo / "test.jsonl").write_text(json.dumps(chat[0]) + "\n")
    return repo


def test_hf_reference_goes_through_load_dataset(tmp_path: Path) -> None:
    _hub_folder(tmp_path)
    spec = _spec(tmp_path, "hf://acme/support")
    train = spec.data.train
    source = hf_source_of(train)
    assert source is not None and (source.split, source.rows) == ("train", 11)
    assert display(train) == "hf://acme/support"
    read = read_records(train, Fields(format="auto", label=None))
    assert (read.input, len(read.records), len(read.quarantined)) == (11, 10, 1)
    assert (read.quarantined[0].file, read.quarantined[0].line) == ("hf://acme/support", 11)
    assert read.records[3].text == "Reset password 3?"
    tags = input_lineage("train", train)
    assert tags["adaptflow.input.train.hf_split"] == "train"
    assert tags["adaptflow.input.train.hf_fingerprint"] == source.fingerprint
    assert _counts(_spec(tmp_path, "hf://acme/support#test").data.train) == (1, 1, 0)
    with pytest.raises(SpecError, match=r"data.train: 'hf://nobody/nothing': datasets.load_"):
        _spec(tmp_path, "hf://nobody/nothing")


def test_curating_a_dataset_info_entry_end_to_end(tmp_path: Path, registry: Path) -> None:
    spec = _spec(tmp_path, "lf/dataset_info.json#chat")
    inputs = CurationInputs(
        name="chat",
        train=spec.data.train,
        eval=None,
        fields=Fields(format=spec.input_format, label=None),
        eval_fraction=0.5,
        seed=1,
        needs_labels=False,
        task="instruction",
    )
    summary = curate_dataset(inputs, tmp_path / "out", tmp_path)
    assert (summary["input"], summary["kept"], summary["quarantined"]) == (4, 2, 2)
    assert summary["input"] == (
        summary["kept"] + sum(summary["dropped"].values()) + summary["quarantined"]
    )
