"""The curation stage end to end (no Prefect): input = kept + dropped + quarantined, always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import built_corpus, pii_canaries

from adaptflow.errors import DataError
from adaptflow.spec import CurationSpec, NearDedupSpec
from tasks.curate.dedup import jaccard, shingles
from tasks.curate.records import Fields
from tasks.curate.stage import CurationInputs, curate_dataset


def _inputs(name: str, train: Path, **changes) -> CurationInputs:
    values = {
        "name": name,
        "train": train,
        "eval": None,
        "fields": Fields(id=None),
        "eval_fraction": 0.25,
        "seed": 1,
        "needs_labels": True,
    } | changes
    return CurationInputs(**values)


def _rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _identity(summary: dict) -> None:
    assert summary["input"] == (
        summary["kept"] + sum(summary["dropped"].values()) + summary["quarantined"]
    )
    assert summary["kept"] == len(_rows(summary["train_file"])) + len(_rows(summary["eval_file"]))
    assert summary["quarantined"] == len(_rows(summary["quarantine"]))
    assert sum(summary["dropped"].values()) == len(_rows(summary["dropped_file"]))


def test_broken_file_corpus_accounts_for_every_record(tmp_path: Path) -> None:
    ten_mb = "word " * 2_000_000
    lines = [
        '\ufeff{"text": "first line after a BOM", "label": "a"}',
        '{"text": "windows line ending", "label": "b"}\r',
        '["an", "array", "not", "an", "object"]',
        '{"text": {"body": "nested"}, "label": "a"}',
        json.dumps({"text": ten_mb, "label": "a"}),
        '{"text": "the same words here", "label": "a"}',
        '{"text": "the same words here", "label": "b"}',
        '{"text": "send it to ops@example.com today", "label": "b"}',
        '{"text": "send it to ops@example.com today", "label": "b"}',
        '{"text": "another fine record for a", "label": "a"}',
        '{"text": "another fine record for b", "label": "b"}',
        '{"text": "more text for label a here", "label": "a"}',
        '{"text": "more text for label b here", "label": "b"}',
        '{"text": "truncated',
    ]
    data = tmp_path / "broken.jsonl"
    data.write_bytes("\n".join(lines).encode("utf-8"))
    summary = curate_dataset(_inputs("broken", data), tmp_path / "out", tmp_path)
    _identity(summary)
    assert summary["input"] == 14
    quarantine = {(q["line"], q["reason"]) for q in _rows(summary["quarantine"])}
    assert quarantine == {
        (3, "expected an object, got list"),
        (4, "field 'text' must be a string, got dict"),
        (6, "label conflict: same text also labelled 'b'"),
        (7, "label conflict: same text also labelled 'a'"),
        (14, "truncated last line"),
    }
    assert summary["dropped"] == {"quality: too many words": 1, "exact duplicate": 1}
    dropped = {d["line"]: (d["block"], d["detail"]) for d in _rows(summary["dropped_file"])}
    assert dropped == {5: ("quality", "2000000 > 20000"), 9: ("exact_dedup", "of id 8")}
    kept_text = {r["text"] for r in _rows(summary["train_file"]) + _rows(summary["eval_file"])}
    assert "first line after a BOM" in kept_text and "windows line ending" in kept_text
    assert "send it to <EMAIL> today" in kept_text
    assert summary["pii"] == {"email": 2}
    assert [step for step, _ in summary["funnel"]][:3] == ["input", "valid", "normalize"]
    assert summary["funnel"][0] == ["input", 14] or summary["funnel"][0] == ("input", 14)
    assert Path(summary["funnel_chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = Path(summary["report"]).read_text()
    assert "- exact duplicate: 1" in report and "- email: 2" in report


def test_empty_file_is_a_clear_error_and_writes_the_set_aside_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable records left"):
        curate_dataset(_inputs("empty", empty), tmp_path / "out", tmp_path)
    assert (tmp_path / "out" / "empty" / "quarantine.jsonl").read_text() == ""


def test_pii_canaries_never_reach_the_curated_output(tmp_path: Path) -> None:
    canaries = pii_canaries(seed=5)
    rows = [
        {"id": str(i), "text": f"Ticket {i}: customer wrote {value} in the form.", "label": kind}
        for i, (kind, value) in enumerate(canaries)
    ]
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = curate_dataset(
        _inputs("pii", data, fields=Fields(id="id")), tmp_path / "out", tmp_path
    )
    _identity(summary)
    curated = Path(summary["train_file"]).read_text() + Path(summary["eval_file"]).read_text()
    leaked = [value for _, value in canaries if value in curated]
    assert leaked == []
    caught = sum(summary["pii"].values())
    assert caught / len(canaries) >= 0.99
    # "Ticket N: customer wrote <X> in the form." differ only by N: short texts stay apart
    assert summary["kept"] + sum(summary["dropped"].values()) == len(canaries)


def test_split_leakage_is_zero_even_with_near_dedup_off(tmp_path: Path) -> None:
    records = built_corpus(seed=11)
    data = tmp_path / "corpus.jsonl"
    data.write_text(
        "".join(json.dumps({"id": r.id, "text": r.text, "label": r.label}) + "\n" for r in records)
    )
    blocks = CurationSpec(near_dedup=NearDedupSpec(enabled=False))
    inputs = _inputs("leak", data, fields=Fields(id="id"), blocks=blocks, eval_fraction=0.2)
    summary = curate_dataset(inputs, tmp_path / "out", tmp_path)
    _identity(summary)
    train, evaluation = _rows(summary["train_file"]), _rows(summary["eval_file"])
    train_sets = [shingles(r["text"], 5) for r in train]
    leaks = [
        (e["id"], t["id"])
        for e in evaluation
        for t, t_set in zip(train, train_sets, strict=True)
        if jaccard(shingles(e["text"], 5), t_set) >= 0.8
    ]
    assert leaks == []
    # near duplicates were kept (not deduplicated), each cluster on one side
    assert "near duplicate" not in summary["dropped"]
    assert summary["kept"] + sum(summary["dropped"].values()) == len(records)


def test_folder_of_mixed_documents(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "billing").mkdir(parents=True)
    (folder / "shipping").mkdir()
    (folder / "billing" / "a.txt").write_text("I was charged twice for my order.")
    (folder / "billing" / "b.md").write_text("# Refund\n\nPlease **refund** [my order](http://x).")
    (folder / "shipping" / "c.html").write_text(
        "<html><head><title>t</title><style>p{}</style></head>"
        "<body><p>Where is my <b>parcel</b>?</p><script>x()</script></body></html>"
    )
    (folder / "shipping" / "d.txt").write_text("The courier never came.")
    (folder / "shipping" / "e.pdf").write_bytes(b"%PDF-1.7")
    (folder / "shipping" / "f.txt").write_bytes(b"\xff\xfe broken")
    (folder / "shipping" / "g.html").write_text("<script>only()</script>")
    (folder / "loose.txt").write_text("not in a label folder")
    inputs = _inputs("folder", folder, eval_fraction=0.5)
    summary = curate_dataset(inputs, tmp_path / "out", tmp_path)
    _identity(summary)
    assert summary["input"] == 8
    kept = {r["id"]: r for r in _rows(summary["train_file"]) + _rows(summary["eval_file"])}
    assert set(kept) == {"billing/a.txt", "billing/b.md", "shipping/c.html", "shipping/d.txt"}
    assert kept["billing/b.md"]["text"] == "Refund\nPlease refund my order."
    assert kept["shipping/c.html"]["text"] == "Where is my parcel?"
    assert kept["shipping/c.html"]["label"] == "shipping"
    reasons = {Path(q["file"]).name: q["reason"] for q in _rows(summary["quarantine"])}
    assert reasons == {
        "e.pdf": "unsupported file type '.pdf'",
        "f.txt": "invalid UTF-8",
        "g.html": "no text after removing markup",
        "loose.txt": "no label: put documents in one sub-folder per label",
    }


def test_the_data_hash_moves_with_the_data_not_with_the_report(tmp_path: Path) -> None:
    """A redrawn chart or a reworded report is not new data: retraining must not fire."""
    from tasks.curate.version import version_with_dvc

    home = tmp_path / "home"
    out = home / "curated" / "name"
    out.mkdir(parents=True)
    (out / "train.jsonl").write_text('{"id": "1", "text": "a", "label": "x"}\n')
    (out / "report.md").write_text("# report\n")
    (out / "funnel.png").write_bytes(b"\x89PNG one")
    first = version_with_dvc(out, home)
    (out / "report.md").write_text("# report, reworded by a newer release\n")
    (out / "funnel.png").write_bytes(b"\x89PNG drawn by a newer matplotlib")
    assert version_with_dvc(out, home) == first
    (out / "train.jsonl").write_text('{"id": "1", "text": "b", "label": "x"}\n')
    changed = version_with_dvc(out, home)
    assert changed != first
    lines = (home / ".dvcignore").read_text().splitlines()
    ignored = [line for line in lines if line and not line.startswith("#")]
    assert ignored == ["/curated/name/report.md", "/curated/name/funnel.png"]  # added once
