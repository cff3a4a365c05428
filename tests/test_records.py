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


def test_lone_surrogate_escapes_are_quarantined_with_their_field(tmp_path: Path) -> None:
    """``"\\ud800"`` is valid JSON but no Unicode text: quarantined, never a crash later."""
    lines = [
        '{"text": "fine", "label": "a"}',
        '{"text": "bad \\ud800 text", "label": "a"}',
        '{"text": "bad label", "label": "x\\udfff"}',
        '{"text": "a pair is fine \\ud83d\\ude00", "label": "b"}',
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = read_records(path, FIELDS)
    assert [r.line for r in result.records] == [1, 4]
    assert result.records[1].text == "a pair is fine \U0001f600"
    assert _reasons(result) == {
        2: "field 'text' holds a lone surrogate escape (\\ud800): valid JSON, but not valid "
        "Unicode text",
        3: "field 'label' holds a lone surrogate escape (\\udfff): valid JSON, but not valid "
        "Unicode text",
    }
    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "system", "content": "be \ud800 brief"}, {"role": "user", "content": "q"},
             {"role": "assistant", "content": "a"}]  # fmt: skip
    chat.write_text(json.dumps({"messages": turns}) + "\n")
    shaped = read_records(chat, Fields(format="messages"))
    assert not shaped.records
    assert _reasons(shaped)[1].startswith("field 'turn 1' holds a lone surrogate escape")


def test_gzip_files_are_read_transparently_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    import gzip

    body = b'{"text": "one", "label": "a"}\nnot json\n{"text": "two", "label": "b"}\n'
    for name in ("train.jsonl.gz", "train.jsonl"):  # named .gz, or compressed under .jsonl
        path = tmp_path / name
        path.write_bytes(gzip.compress(body))
        result = read_records(path, FIELDS)
        assert [r.text for r in result.records] == ["one", "two"]
        assert _reasons(result) == {2: "invalid JSON: Expecting value"}
    csv_path = tmp_path / "train.csv.gz"
    csv_path.write_bytes(gzip.compress(b"text,label\nhello,a\n"))
    assert [r.text for r in read_records(csv_path, FIELDS).records] == ["hello"]
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(gzip.compress(body)[:30])
    with pytest.raises(DataError, match="damaged.jsonl: a damaged gzip file"):
        read_records(damaged, FIELDS)
    parquet = tmp_path / "rows.parquet.gz"
    parquet.write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(DataError, match="unsupported data file type '.gz'"):
        read_records(parquet, FIELDS)


def _fuzz_accounting(path: Path, fields: Fields, physical_records: int) -> None:
    """Never a traceback: records + quarantined + blank = what the file holds."""
    from tasks.curate.records import iter_records

    outcomes = list(iter_records(path, fields))
    assert len(outcomes) == physical_records
    for item in outcomes:
        if item is not None and hasattr(item, "text"):
            item.text.encode("utf-8")  # every kept record can be written out
            json.dumps({"t": item.text, "l": item.label}, ensure_ascii=False).encode("utf-8")


def _texts():
    """Any text, lone surrogates included (JSON escapes them as ``\\udXXX``)."""
    from hypothesis import strategies as st

    return st.text() | st.text(st.characters(categories=["Cs", "Ll", "Zs"]), max_size=6)


def _json_values():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    )


def test_fuzz_jsonl_lines_of_random_bytes_never_crash(tmp_path_factory) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    line = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(line, min_size=1, max_size=6))
    def check(lines: list[bytes]) -> None:
        path = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        if lines[0].startswith(b"\x1f\x8b"):  # gzip's magic: no JSON line starts so
            with pytest.raises(DataError, match="a damaged gzip file"):
                _fuzz_accounting(path, FIELDS, len(lines))
            return
        _fuzz_accounting(path, FIELDS, len(lines))

    check()


def test_fuzz_jsonl_of_random_json_values_never_crash(tmp_path_factory) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.one_of(
        _json_values(),
        st.fixed_dictionaries(
            {"text": _json_values() | _texts(), "label": _json_values() | _texts()}
        ),
        st.fixed_dictionaries(
            {
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {
                            "role": st.sampled_from(["system", "user", "assistant", "x"]),
                            "content": _json_values() | _texts(),
                        }
                    ),
                    max_size=4,
                )
            }
        ),  # fmt: skip
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(values, min_size=1, max_size=5), st.sampled_from(["fields", "auto"]))
    def check(rows: list[object], fmt: str) -> None:
        path = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
        fields = Fields(text="text", label="label", format=fmt)
        _fuzz_accounting(path, fields, len(rows))

    check()
