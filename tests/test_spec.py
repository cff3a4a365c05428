from pathlib import Path

import pytest

from adaptflow.errors import SpecError
from adaptflow.spec import load_spec, parse_spec, spec_json_schema


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


GOOD = """
name: support-triage
task: classification
base_model: minilm
data:
  train: data/train.jsonl
"""


def test_minimal_spec_gets_defaults_and_resolves_paths(data_dir: Path) -> None:
    spec = load_spec(_write(data_dir, GOOD))
    assert spec.data.train == (data_dir / "data" / "train.jsonl").resolve()
    assert spec.method == "auto"
    assert spec.metric == "f1_macro"
    assert spec.target.min is None
    assert spec.needs.hallucination_tolerance == "medium"
    assert spec.budget.hardware == "cpu"
    assert spec.seed == 42
    assert len(spec.spec_hash()) == 16


def test_spec_hash_is_independent_of_where_the_spec_lives(data_dir: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "data").mkdir()
    (other / "data" / "train.jsonl").write_text('{"text": "b", "label": "y"}\n')
    assert (
        load_spec(_write(data_dir, GOOD)).spec_hash() == load_spec(_write(other, GOOD)).spec_hash()
    )
    changed = GOOD.replace("support-triage", "other-name")
    assert (
        load_spec(_write(other, changed)).spec_hash()
        != load_spec(_write(data_dir, GOOD)).spec_hash()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "colour: blue\n", "colour: unknown key"),
        (GOOD + "needs:\n  hurry: true\n", "needs.hurry: unknown key"),
        (GOOD.replace("task: classification", "task: clasification"), "task: Input should be"),
        (GOOD.replace("name: support-triage", "name: 'bad name!'"), "name: expected 1-100"),
        (GOOD.replace("data/train.jsonl", "data/missing.jsonl"), "data.train: not found"),
        (
            GOOD.replace("base_model: minilm", "base_model: nosuchmodel"),
            "base_model: unknown base model",
        ),
        (GOOD + "target: {metric: rougeL}\n", "does not apply to task 'classification'"),
        (
            GOOD + "budget: {gpu_hours: -1}\n",
            "budget.gpu_hours: Input should be greater than or equal to 0",
        ),
        (GOOD + "needs: {hallucination_tolerance: none}\n", "needs.hallucination_tolerance"),
        (GOOD + "method: magic\n", "method: Input should be"),
        (GOOD + "train: {epochs: zero}\n", "train.epochs"),
        ("name: x\ntask: classification\n", "data: required field is missing"),
        ("name: x\ntask: classification\ndata: {}\n", "task 'classification' needs data.train"),
        (
            "name: x\ntask: retrieval-qa\ndata: {questions: data/train.jsonl}\n",
            "task 'retrieval-qa' needs data.knowledge",
        ),
        (
            "name: x\ntask: retrieval-qa\ndata: {knowledge: data/train.jsonl, "
            "questions: data/train.jsonl}\n",
            "data.knowledge: expected an existing folder",
        ),
        (
            "name: x\ntask: retrieval-qa\ndata: {knowledge: data, questions: data}\n",
            "data.questions is a folder",
        ),
        (
            "name: x\ntask: retrieval-qa\ndata: {knowledge: data, questions: data/train.jsonl}\n"
            "retrieval: {chunk_tokens: 50, overlap: 50}\n",
            "retrieval.overlap (50) must be smaller than retrieval.chunk_tokens (50)",
        ),
        (
            "name: x\ntask: retrieval-qa\ndata: {knowledge: data, questions: data/train.jsonl}\n"
            "retrieval: {mode: fuzzy}\n",
            "retrieval.mode: Input should be 'dense', 'bm25' or 'hybrid'",
        ),
    ],
)
def test_bad_specs_name_file_field_and_expectation(
    data_dir: Path, text: str, expected: str
) -> None:
    path = _write(data_dir, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message


def test_unsupported_file_type_is_rejected(data_dir: Path) -> None:
    (data_dir / "data" / "train.xlsx").write_text("not really")
    with pytest.raises(SpecError, match=r"unsupported file type '\.xlsx'"):
        load_spec(_write(data_dir, GOOD.replace("train.jsonl", "train.xlsx")))


def test_yaml_syntax_error_points_at_line(data_dir: Path) -> None:
    path = _write(data_dir, "name: x\ntask: [classification\n")
    with pytest.raises(SpecError, match=rf"{path}:\d+:\d+: invalid YAML"):
        load_spec(path)


def test_empty_and_non_mapping_specs(data_dir: Path) -> None:
    with pytest.raises(SpecError, match="got an empty file"):
        load_spec(_write(data_dir, ""))
    with pytest.raises(SpecError, match="got list"):
        load_spec(_write(data_dir, "- a\n- b\n"))


def test_missing_spec_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(tmp_path)


def test_local_model_folder_and_hub_id_are_accepted(data_dir: Path) -> None:
    (data_dir / "my-model").mkdir()
    spec = load_spec(_write(data_dir, GOOD.replace("minilm", "my-model")))
    assert spec.base_model == str((data_dir / "my-model").resolve())
    hub = parse_spec(
        {
            "name": "n",
            "task": "classification",
            "base_model": "org/model",
            "data": {"train": "data/train.jsonl"},
        },
        base_dir=data_dir,
    )
    assert hub.base_model == "org/model"


def test_schema_lists_contract_fields() -> None:
    schema = spec_json_schema()
    assert schema["additionalProperties"] is False
    assert {"name", "task", "base_model", "method", "data", "needs", "budget", "target"} <= set(
        schema["properties"]
    )
    assert schema["required"] == ["name", "task", "data"]


def test_retrieval_qa_needs_no_training_data(data_dir: Path) -> None:
    spec = load_spec(
        _write(
            data_dir,
            "name: kb\ntask: retrieval-qa\ndata: {knowledge: data, questions: data/train.jsonl}\n",
        )
    )
    assert spec.data.train is None
    assert spec.metric == "recall@5"
    assert spec.retrieval.model_dump() == {
        "mode": "hybrid",
        "fusion": "convex",
        "lexical_weight": 0.2,
        "reranker": None,
        "rerank_depth": 20,
        "chunk_tokens": 200,
        "overlap": 40,
        "k": 5,
        "per_source": 3,
        "candidates": 50,
        "generator": None,  # passages only, no generated answers
        "max_new_tokens": 64,
    }


def test_spec_literals_name_exactly_the_methods_and_tasks_the_code_knows() -> None:
    """``Method`` and ``Task`` stay static Literals (pydantic, the UI enums): keep them in step."""
    from typing import get_args

    from adaptflow.advisor import METHODS
    from adaptflow.methods import CHOSEN_BY_ADVISOR, RUNNABLE
    from adaptflow.spec import Method, Task

    assert set(get_args(Method)) == {*CHOSEN_BY_ADVISOR, *METHODS}
    assert {m for ms in RUNNABLE.values() for m in ms} <= set(METHODS)
    assert set(get_args(Task)) == set(RUNNABLE)


@pytest.mark.parametrize("field", ["generator", "reranker"])
def test_a_blank_model_name_is_a_spec_error(data_dir: Path, field: str) -> None:
    text = (
        "name: kb\ntask: retrieval-qa\ndata: {knowledge: data, questions: data/train.jsonl}\n"
        f"retrieval: {{{field}: '   '}}\n"
    )
    with pytest.raises(SpecError, match=f"retrieval.{field} must name a model"):
        load_spec(_write(data_dir, text))


def test_a_key_given_twice_is_refused_with_both_lines(data_dir: Path) -> None:
    path = _write(data_dir, GOOD + "name: other-name\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == (
        f"{path}: key 'name' is given twice (lines 2 and 7); YAML would keep only the last: "
        "remove one"
    )
    nested = GOOD + "train: {epochs: 2, epochs: 3}\n"
    with pytest.raises(SpecError, match=r"key 'epochs' is given twice \(lines 7 and 7\)"):
        load_spec(_write(data_dir, nested))
    merged = GOOD + "base: &b {epochs: 2}\ntrain:\n  <<: *b\n  epochs: 3\n"
    with pytest.raises(SpecError, match="base: unknown key"):  # merges may be overridden
        load_spec(_write(data_dir, merged))
    assert load_spec(_write(data_dir, GOOD + "train:\n  epochs: 3\n")).train.epochs == 3


def test_every_curation_block_takes_false_for_enabled_false(data_dir: Path) -> None:
    blocks = ("quality", "near_dedup", "semantic_dedup", "decontaminate")
    text = GOOD + "curation:\n" + "".join(f"  {b}: false\n" for b in blocks) + "  pii: false\n"
    curation = load_spec(_write(data_dir, text)).curation
    assert [getattr(curation, b).enabled for b in blocks] == [False] * 4
    assert curation.pii is False
    assert curation.decontaminate.ngram == 8  # the block's other settings keep their defaults
    on = load_spec(_write(data_dir, GOOD + "curation: {semantic_dedup: true}\n")).curation
    assert on.semantic_dedup.enabled and on.semantic_dedup.threshold == 0.95
    with pytest.raises(SpecError, match="curation.near_dedup"):
        load_spec(_write(data_dir, GOOD + "curation: {near_dedup: 3}\n"))
