"""Training data named the way other trainers name it (``adaptflow.inputs.resolve``).

LLaMA-Factory's ``dataset_info.json#NAME`` entries (their ``columns``/``tags`` mapping applied by
the readers; pre-training entries read as documents), folders written by ``datasets``'
``save_to_disk``, and ``hf://ORG/NAME[:CONFIG][@REVISION][#SPLIT]`` loaded by the real
``datasets.load_dataset`` from a local dataset folder (or a ``datasets`` cache built like a hub
download's) with the hub switched off. Each is read with the usual accounting: input = kept +
quarantined, a bad record named by file, line and reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))


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


# hf:// with a config (subset) and a revision ----------------------------------------------

FIRST = [{"text": f"first {i}"} for i in range(3)]
SECOND_TRAIN = [{"text": "second a", "n": 1}, {"text": "second b", "n": 2}]
SECOND_TEST = [{"text": "second held out", "n": 3}]
CARD = """---
configs:
- config_name: first
  data_files:
  - split: train
    path: first/*.jsonl
- config_name: second
  data_files:
  - split: train
    path: second/train.jsonl
  - split: test
    path: second/test.jsonl
---
# Two configs, no default one
"""


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _configs_folder(root: Path) -> Path:
    """A dataset repository whose card (README.md front matter) declares two configs."""
    repo = root / "acme" / "multi"
    _jsonl(repo / "first" / "all.jsonl", FIRST)
    _jsonl(repo / "second" / "train.jsonl", SECOND_TRAIN)
    _jsonl(repo / "second" / "test.jsonl", SECOND_TEST)
    (repo / "README.md").write_text(CARD)
    return repo


def test_hf_config_reads_that_configs_rows(tmp_path: Path) -> None:
    repo = _configs_folder(tmp_path)
    train = _spec(tmp_path, "hf://acme/multi:second#train").data.train
    assert _rows(train) == SECOND_TRAIN
    assert display(train) == "hf://acme/multi:second#train"
    source = hf_source_of(train)
    assert source is not None
    assert (source.config, source.rev, source.split, source.rows) == ("second", "", "train", 2)
    recorded = json.loads((train.parent / "source.json").read_text())
    assert (recorded["config"], recorded["url"]) == ("second", "hf://acme/multi:second#train")
    tags = input_lineage("train", train)
    prefix = "adaptflow.input.train."
    assert tags[prefix + "hf_config"] == "second"
    assert tags[prefix + "hf_split"] == "train"
    assert tags[prefix + "hf_dataset"] == str(repo.absolute())
    assert prefix + "hf_revision" not in tags  # a folder has no hub commit
    # the other split, and the other config (split default train), each keyed apart
    test = _spec(tmp_path, "hf://acme/multi:second#test").data.train
    assert _rows(test) == SECOND_TEST
    first = _spec(tmp_path, "hf://acme/multi:first").data.train
    assert _rows(first) == FIRST
    assert len({train.parent, test.parent, first.parent}) == 3
    # a reference without a config: no tag, as before
    _hub_folder(tmp_path)
    plain = input_lineage("train", _spec(tmp_path, "hf://acme/support").data.train)
    assert prefix + "hf_config" not in plain


def test_hf_config_errors_name_the_configs(tmp_path: Path) -> None:
    _configs_folder(tmp_path)
    with pytest.raises(
        SpecError,
        match=r"data.train: 'hf://acme/multi:third': datasets.load_dataset\(.*name='third'.*\) "
        r"failed: no config 'third' \(configs: first, second\)",
    ):
        _spec(tmp_path, "hf://acme/multi:third")
    with pytest.raises(
        SpecError,
        match=r"'hf://acme/multi': .*several configs, name one as "
        r"hf://acme/multi:CONFIG \(first, second\)",
    ):
        _spec(tmp_path, "hf://acme/multi")


@pytest.mark.parametrize(
    ("train", "reason"),
    [
        ("hf://acme/multi:", "empty config after ':'"),
        ("hf://acme/multi@", "empty revision after '@'"),
        ("hf://acme/multi:second@#train", "empty revision after '@'"),
        ("hf://acme/multi#", "empty split after '#'"),
        ("hf://:second", "no dataset"),
        ("hf://acme/not a name", "neither a folder nor a hub dataset id"),
        ("hf://a/b/c", "neither a folder nor a hub dataset id"),
    ],
)
def test_malformed_hf_references(tmp_path: Path, train: str, reason: str) -> None:
    _configs_folder(tmp_path)
    with pytest.raises(SpecError, match=f"data.train: '{train}': .*{reason}"):
        _spec(tmp_path, train)


def test_a_revision_on_a_folder_is_refused(tmp_path: Path) -> None:
    # datasets.load_dataset ignores revision= for a folder: it would read the files as they are
    _configs_folder(tmp_path)
    with pytest.raises(
        SpecError, match=r"'hf://acme/multi:second@v1': .*is a folder, read as it is on disk.*'@v1'"
    ):
        _spec(tmp_path, "hf://acme/multi:second@v1")


def test_an_uncached_revision_offline_names_the_revision(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        _spec(tmp_path, "hf://acme/absent:main@v1.0#train")
    message = str(caught.value)
    assert "revision='v1.0'" in message and "name='main'" in message
    assert "revision 'v1.0' of acme/absent is not in the Hugging Face cache" in message


def test_an_uncached_revision_is_one_message_from_the_cli(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: byod\ntask: instruction\nbase_model: tiny-gpt\nmethod: icl\n"
        "data: {train: 'hf://acme/absent@v1.0'}\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "adaptflow", "recommend", str(spec), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = json.loads(result.stdout)["error"]
    assert "'hf://acme/absent@v1.0'" in error and "revision 'v1.0'" in error


COMMIT = "c0ffee" + "0" * 34
OTHER = "1" * 40


@pytest.fixture
def cached_hub_dataset(tmp_path: Path) -> Path:
    """``acme/multi`` config ``second`` in the ``datasets`` cache as built from ``COMMIT``.

    Built the way ``datasets`` caches a hub dataset (``OWNER___NAME/CONFIG/VERSION/COMMIT``)
    from the local folder's own build; the hub itself stays off. The spec lives elsewhere, so
    ``acme/multi`` names the hub id, not a folder.
    """
    repo = _configs_folder(tmp_path / "download")
    datasets.load_dataset(str(repo), name="second", split="train")
    built = next((tmp_path / "hf-cache" / "multi" / "second").glob("*/*/dataset_info.json")).parent
    cached = tmp_path / "hf-cache" / "acme___multi" / "second" / "0.0.0" / COMMIT
    cached.parent.mkdir(parents=True)
    shutil.copytree(built, cached)
    spec_folder = tmp_path / "project"
    spec_folder.mkdir()
    return spec_folder


def test_a_cached_revision_is_read_and_tagged(cached_hub_dataset: Path) -> None:
    url = f"hf://acme/multi:second@{COMMIT}#train"
    train = _spec(cached_hub_dataset, url).data.train
    assert _rows(train) == SECOND_TRAIN
    assert display(train) == url
    source = hf_source_of(train)
    assert source is not None and (source.dataset, source.config) == ("acme/multi", "second")
    assert (source.rev, source.revision) == (COMMIT, COMMIT)
    tags = input_lineage("train", train)
    assert tags["adaptflow.input.train.hf_revision"] == COMMIT
    assert tags["adaptflow.input.train.hf_config"] == "second"
    assert tags["adaptflow.input.train.hf_dataset"] == "acme/multi"
    with pytest.raises(
        SpecError, match=r"config 'first' is not in the Hugging Face cache \(cached: second\)"
    ):
        _spec(cached_hub_dataset, f"hf://acme/multi:first@{COMMIT}")


def test_a_revision_the_cache_does_not_hold_is_refused(
    cached_hub_dataset: Path, tmp_path: Path
) -> None:
    # offline, load_dataset serves the newest cached copy whatever the revision: not trusted
    for rev in (OTHER, "v1"):
        with pytest.raises(
            SpecError,
            match=f"revision '{rev}' was asked for, but datasets returned commit {COMMIT}",
        ):
            _spec(cached_hub_dataset, f"hf://acme/multi:second@{rev}")
    # a tag the hub cache records at the cached commit is that commit
    refs = tmp_path / "hub-cache" / "datasets--acme--multi" / "refs"
    refs.mkdir(parents=True)
    (refs / "v1").write_text(COMMIT)
    train = _spec(cached_hub_dataset, "hf://acme/multi:second@v1").data.train
    assert _rows(train) == SECOND_TRAIN
    assert input_lineage("train", train)["adaptflow.input.train.hf_revision"] == COMMIT


# LLaMA-Factory pre-training entries (stage: pt) --------------------------------------------

DOCS = (
    "The turbine inspection found that the blade coating had worn thin along the leading edge.",
    "Operators should record the vibration readings of every pump at the start of each shift.",
    "A cracked weld on the cooling loop must be reported to the maintenance lead the same day.",
)
DOCUMENT_ROWS: list[Any] = [
    {"content": DOCS[0], "url": "a"},
    {"content": DOCS[1]},
    {"url": "no content column"},  # quarantined: missing
    {"content": 42},  # quarantined: not a string
    {"content": "   "},  # quarantined: empty
    "not an object",  # quarantined
    {"content": DOCS[2]},
]


def _document_registry(folder: Path) -> Path:
    data = folder / "lf"
    # one array element a line: element N of the array is on line N + 1
    (data / "web.json").parent.mkdir(parents=True, exist_ok=True)
    (data / "web.json").write_text(
        "[\n" + ",\n".join(json.dumps(r) for r in DOCUMENT_ROWS) + "\n]\n"
    )
    _write(data / "titled.json", [{"title": "A title", "body": "Its body."}, {"title": "Alone"}])
    _write(data / "qa.json", [{"instruction": "Sum 2 and 3.", "input": "ignored", "output": "5"}])
    entries = {
        "web": {"file_name": "web.json", "columns": {"prompt": "content"}},
        "c4_demo": {"file_name": "web.json", "columns": {"prompt": "text"}},
        "titled": {"file_name": "titled.json", "columns": {"prompt": "title", "query": "body"}},
        "qa": {"file_name": "qa.json", "columns": {"prompt": "instruction", "response": "output"}},
        "pt_system": {"file_name": "web.json", "columns": {"prompt": "content", "system": "s"}},
        "no_prompt": {"file_name": "qa.json", "columns": {"response": "output"}},
        "kto_pt": {"file_name": "qa.json", "columns": {"prompt": "instruction", "kto_tag": "k"}},
    }
    return _write(data / "dataset_info.json", entries)


def _lm_spec(folder: Path, train: str) -> Any:
    raw = {
        "name": "domain",
        "task": "language-modeling",
        "base_model": "tiny-gpt",
        "method": "cpt",
        "cpt": {"replay": 0},
        "data": {"train": train},
    }
    return parse_spec(raw, folder, source=str(folder / "spec.yaml"))


def _lm_fields(spec: Any) -> Fields:
    """The fields curation reads a spec's data with (``flows.curate``)."""
    return Fields(
        text=spec.data.text_field,
        label=None,
        target=spec.data.target_field,
        id=spec.data.id_field,
        format=spec.input_format,
    )


def test_a_pretraining_entry_reads_documents_for_cpt(tmp_path: Path) -> None:
    _document_registry(tmp_path)
    spec = _lm_spec(tmp_path, "lf/dataset_info.json#web")
    train = spec.data.train
    read = read_records(train, _lm_fields(spec))
    assert [(r.id, r.text, r.target, r.label) for r in read.records] == [
        ("1", DOCS[0], None, None),
        ("2", DOCS[1], None, None),
        ("7", DOCS[2], None, None),
    ]
    web = str((tmp_path / "lf" / "web.json").absolute())
    assert [(q.file, q.line, q.reason) for q in read.quarantined] == [
        (web, 4, "missing field 'content'"),
        (web, 5, "field 'content' must be a string, got int"),
        (web, 6, "field 'content' is empty"),
        (web, 7, "expected an object, got str"),
    ]
    # the same file through an entry whose prompt column is text (c4_demo's): the column named
    c4 = read_records(
        _lm_spec(tmp_path, "lf/dataset_info.json#c4_demo").data.train, _lm_fields(spec)
    )
    assert (c4.input, len(c4.records)) == (7, 0)
    assert c4.quarantined[0].reason == "missing field 'text'"


def test_a_pretraining_entry_joins_a_query_column(tmp_path: Path) -> None:
    _document_registry(tmp_path)
    spec = _lm_spec(tmp_path, "lf/dataset_info.json#titled")
    read = read_records(spec.data.train, _lm_fields(spec))
    assert [r.text for r in read.records] == ["A title\nIts body.", "Alone"]


def test_curating_a_pretraining_entry_end_to_end(tmp_path: Path) -> None:
    _document_registry(tmp_path)
    spec = _lm_spec(tmp_path, "lf/dataset_info.json#web")
    inputs = CurationInputs(
        name="domain",
        train=spec.data.train,
        eval=None,
        fields=_lm_fields(spec),
        eval_fraction=0.34,
        seed=1,
        needs_labels=False,
        task="language-modeling",
    )
    summary = curate_dataset(inputs, tmp_path / "out", tmp_path)
    assert (summary["input"], summary["kept"], summary["quarantined"]) == (7, 3, 4)
    assert summary["dropped"] == {}
    curated = [
        json.loads(line)
        for name in ("train.jsonl", "eval.jsonl")
        for line in (tmp_path / "out" / "domain" / name).read_text().splitlines()
    ]
    assert sorted(row["text"] for row in curated) == sorted(DOCS)
    assert all(set(row) == {"id", "text"} for row in curated)


def test_a_pretraining_entry_is_refused_for_instruction_data(tmp_path: Path) -> None:
    from adaptflow.errors import DataError

    _document_registry(tmp_path)
    train = _spec(tmp_path, "lf/dataset_info.json#web").data.train  # an SFT (instruction) spec
    with pytest.raises(
        DataError,
        match=r"lf/dataset_info.json#web: the entry names no response column, so it is "
        r"pre-training data \(documents: column 'content'.*this spec reads instruction or chat "
        r"records \(data.format 'auto'\): name a response column",
    ):
        read_records(train, Fields(format="auto", label=None))
    # and an instruction entry is not read as documents
    spec = _lm_spec(tmp_path, "lf/dataset_info.json#qa")
    with pytest.raises(DataError, match=r"#qa: plain text is read here .*alpaca records"):
        read_records(spec.data.train, _lm_fields(spec))


def test_an_entry_with_columns_reads_only_the_columns_named(tmp_path: Path) -> None:
    # LLaMA-Factory: with "columns" given, an unnamed query column is not read ("input" here)
    _document_registry(tmp_path)
    train = _spec(tmp_path, "lf/dataset_info.json#qa").data.train
    read = read_records(train, Fields(format="auto", label=None))
    assert [(r.text, r.target) for r in read.records] == [("Sum 2 and 3.", "5")]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (
            "pt_system",
            "names no response column, so it is pre-training data .*does not read system",
        ),
        ("no_prompt", "has columns but no 'prompt' column"),
        ("kto_pt", "has kto_tag but no response column"),
    ],
)
def test_broken_pretraining_entries(tmp_path: Path, entry: str, reason: str) -> None:
    _document_registry(tmp_path)
    with pytest.raises(SpecError, match=f"data.train: .*{reason}"):
        _lm_spec(tmp_path, f"lf/dataset_info.json#{entry}")
