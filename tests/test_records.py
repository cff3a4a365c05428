import json
from pathlib import Path

import pytest

from adaptflow.errors import DataError
from tasks.curate.records import Fields, read_records

FIELDS = Fields(text="text", label="label")


def _reasons(result) -> dict[int, str]:
    return {q.line: q.reason for q in result.quarantined}


def test_jsonl_bad_lines_are_quarantined_with_line_and_reason(tmp_path: Path) -> None:
    lines = [
        b'\xef\xbb\xbf{"text": "first, after a BOM", "label": "a"}',  # 1 kept
        b'{"text": "crlf line", "label": "b"}\r',  # 2 kept
        b"not json at all",  # 3
        b'["an", "array"]',  # 4
        b'{"label": "a"}',  # 5 missing text
        b'{"text": 5, "label": "a"}',  # 6 text not a string
        b'{"text": "no label"}',  # 7
        b'{"text": "null label", "label": null}',  # 8
        b'{"text": "dict label", "label": {"x": 1}}',  # 9
        b'{"text": "   ", "label": "a"}',  # 10 empty text
        b'{"text": "bad \xff\xfe utf8", "label": "a"}',  # 11
        b"",  # 12 blank: not a record
        b'{"text": "integer label", "label": 3}',  # 13 kept, label "3"
        b'{"text": "truncated", "lab',  # 14 last line, cut off
    ]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines))
    result = read_records(path, FIELDS)
    assert [(r.id, r.text, r.label) for r in result.records] == [
        ("1", "first, after a BOM", "a"),
        ("2", "crlf line", "b"),
        ("13", "integer label", "3"),
    ]
    assert _reasons(result) == {
        3: "invalid JSON: Expecting value",
        4: "expected an object, got list",
        5: "missing field 'text'",
        6: "field 'text' must be a string, got int",
        7: "missing field 'label'",
        8: "field 'label' is null",
        9: "field 'label' must be a string or integer, got dict",
        10: "field 'text' is empty",
        11: "invalid UTF-8 in text",
        14: "truncated last line",
    }
    assert result.blank_lines == 1
    assert result.input == len(result.records) + len(result.quarantined) == 13
    assert all(q.file == str(path) for q in result.quarantined)
    assert result.quarantined[0].raw == "not json at all"


def test_bad_last_line_with_newline_is_not_called_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "cut\n')
    assert _reasons(read_records(path, FIELDS)) == {
        2: "invalid JSON: Unterminated string starting at"
    }
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "cut')
    assert _reasons(read_records(path, FIELDS)) == {2: "truncated last line"}


def test_id_field_and_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [
        {"id": "t1", "text": "one", "label": "a"},
        {"id": "t2", "text": "two", "label": "b"},
        {"id": "t1", "text": "again", "label": "a"},
        {"text": "no id", "label": "a"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_records(path, Fields(id="id"))
    assert [r.id for r in result.records] == ["t1", "t2"]
    assert _reasons(result) == {
        3: "duplicate id 't1' (first at line 1)",
        4: "missing id field 'id'",
    }


def test_csv_with_ragged_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"hello, world",greet\nshort\n"x",y,extra\n,\nbye,farewell\n')
    result = read_records(path, FIELDS)
    assert [(r.id, r.text, r.label) for r in result.records] == [
        ("2", "hello, world", "greet"),
        ("6", "bye", "farewell"),
    ]
    assert _reasons(result) == {
        3: "row has 1 fields, header has 2",
        4: "row has 3 fields, header has 2",
    }
    assert result.blank_lines == 1


def test_parquet_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "label": ["x", "y", None]}), path)
    result = read_records(path, FIELDS)
    assert [(r.id, r.text) for r in result.records] == [("1", "a")]
    assert _reasons(result) == {
        2: "field 'text' must be a string, got null",
        3: "field 'label' is null",
    }


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = read_records(path, FIELDS)
    assert result.input == 0


def test_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_records(tmp_path / "gone.jsonl", FIELDS)
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="cannot parse as parquet"):
        read_records(corrupt, FIELDS)
