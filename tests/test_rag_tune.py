"""Retrieval settings chosen on a validation share of the questions (tasks/rag/tune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.rag.tune import choose_retrieval, search_candidates, split_questions

#: Eight one-topic pages; each question below names its page's topic in other words.
PAGES = {
    "kettles.md": "# Kettles\n\nAn electric kettle boils water with a heating element and "
    "switches off when a bimetallic strip senses steam.",
    "bridges.md": "# Bridges\n\nA suspension bridge hangs its deck from cables draped over "
    "towers and anchored in the ground at both ends.",
    "owls.md": "# Owls\n\nOwls hunt at night; soft fringed feathers let them fly almost "
    "silently, and their ears sit at different heights.",
    "glass.md": "# Glass\n\nGlass is made by melting sand with soda ash and lime, then cooling "
    "it fast enough that it cannot crystallise.",
    "tides.md": "# Tides\n\nThe Moon's gravity raises two bulges of ocean water, so most "
    "coasts see two high tides a day.",
    "yeast.md": "# Yeast\n\nBaker's yeast ferments sugar into carbon dioxide, whose bubbles "
    "make bread dough rise before baking.",
    "compass.md": "# Compass\n\nA magnetic compass needle lines up with the Earth's magnetic "
    "field and points roughly north.",
    "cheese.md": "# Cheese\n\nRennet curdles milk; the curds are pressed, salted and aged for "
    "weeks or years to make hard cheese.",
}
QUESTIONS = [
    ("kettles.md", "Why does my kettle turn itself off?"),
    ("kettles.md", "What heats the water in an electric kettle?"),
    ("bridges.md", "How does a suspension bridge hold up its road?"),
    ("bridges.md", "Where are the cables of a suspension bridge anchored?"),
    ("owls.md", "How can owls fly without making noise?"),
    ("owls.md", "Why are an owl's ears uneven?"),
    ("glass.md", "What raw materials go into glass?"),
    ("glass.md", "Why does molten glass not form crystals?"),
    ("tides.md", "Why are there two high tides each day?"),
    ("tides.md", "What pulls the ocean into bulges?"),
    ("yeast.md", "What makes bread dough rise?"),
    ("yeast.md", "What gas does yeast produce from sugar?"),
    ("compass.md", "Why does a compass point north?"),
    ("compass.md", "What does a compass needle align with?"),
    ("cheese.md", "What curdles milk for cheese?"),
    ("cheese.md", "How long is hard cheese aged?"),
    ("kettles.md", "What senses steam inside a kettle?"),
    ("owls.md", "When do owls hunt?"),
    ("tides.md", "Which body's gravity causes tides?"),
    ("yeast.md", "Which fungus ferments sugar for baking?"),
]


def _write(folder: Path, rows: list[tuple[str, str]], name: str) -> Path:
    path = folder / name
    lines = [{"id": f"q{i:02d}", "question": q, "source": s} for i, (s, q) in enumerate(rows)]
    path.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return path


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("knowledge")
    for name, text in PAGES.items():
        (folder / name).write_text(text)
    return folder


def _choose(knowledge: Path, questions: Path, out: Path, home: Path, **changes) -> dict:
    from adaptflow.spec import RetrievalSpec

    arguments = {
        "name": "tune-test",
        "knowledge": knowledge,
        "embedder": "minilm",
        "retrieval": RetrievalSpec().model_dump(),
        "unset": sorted(RetrievalSpec.model_fields),
        "questions_file": questions,
        "metric": "recall@5",
        "fraction": 0.3,
        "min_validation": 4,
        "seed": 7,
        "home": home,
        "chroma_url": None,
        "out": out,
    }
    return choose_retrieval(**(arguments | changes))


def test_search_candidates_vary_only_what_the_spec_left_unset() -> None:
    from adaptflow.spec import RetrievalSpec

    retrieval = RetrievalSpec().model_dump()
    every = search_candidates(retrieval, {"mode", "fusion", "lexical_weight"})
    assert every[0] == {"mode": "hybrid", "fusion": "convex", "lexical_weight": 0.2}  # default
    assert len(every) == 7  # convex 0.2 / 0.1 / 0.3 / 0.5, rrf, dense, bm25
    weights_only = search_candidates(retrieval, {"lexical_weight"})
    assert [c["lexical_weight"] for c in weights_only] == [0.2, 0.1, 0.3, 0.5]
    assert {c["mode"] for c in weights_only} == {"hybrid"}
    assert search_candidates(retrieval | {"mode": "dense"}, {"fusion", "lexical_weight"}) == [
        {"mode": "dense", "fusion": "convex", "lexical_weight": 0.2}
    ]


def test_the_question_split_is_seeded_disjoint_and_complete() -> None:
    rows = [{"id": str(i)} for i in range(20)]
    validation, evaluation = split_questions(rows, 0.3, seed=7)
    assert len(validation) == 6 and len(evaluation) == 14
    assert {r["id"] for r in validation}.isdisjoint(r["id"] for r in evaluation)
    assert split_questions(rows, 0.3, seed=7) == (validation, evaluation)
    assert split_questions(rows, 0.3, seed=8) != (validation, evaluation)


def test_the_choice_never_reads_the_eval_questions(knowledge: Path, tmp_path: Path) -> None:
    """Replacing every eval question changes nothing the choice saw or decided."""
    home = tmp_path / "home"
    questions = _write(tmp_path, QUESTIONS, "questions.jsonl")
    first = _choose(knowledge, questions, tmp_path / "first", home)
    held = {
        json.loads(line)["id"] for line in Path(first["validation_file"]).read_text().splitlines()
    }
    scored = {json.loads(line)["id"] for line in Path(first["eval_file"]).read_text().splitlines()}
    assert len(held) == 6 and len(scored) == 14 and held.isdisjoint(scored)
    # the eval questions swapped for others that all point at one page
    swapped = [
        row if f"q{i:02d}" in held else ("cheese.md", f"unrelated question {i}")
        for i, row in enumerate(QUESTIONS)
    ]
    second = _choose(knowledge, _write(tmp_path, swapped, "swapped.jsonl"), tmp_path / "2", home)
    assert second["retrieval"] == first["retrieval"] and second["chosen"] == first["chosen"]
    assert [c["metrics"] for c in second["candidates"]] == [
        c["metrics"] for c in first["candidates"]
    ]
    assert Path(second["validation_file"]).read_text() == Path(first["validation_file"]).read_text()
    # 7 searches over 2 chunkings (the defaults' and MiniLM's whole 254-token window)
    assert len(first["candidates"]) == 14
    assert {c["settings"]["chunk_tokens"] for c in first["candidates"]} == {200, 254}
    # the winner is the best on validation by the stated rule (recall@5 in questions, then MRR)
    best = max(
        enumerate(first["candidates"]),
        key=lambda item: (round(item[1]["metrics"]["recall@5"] * 6), item[1]["metrics"]["mrr"],
                          -item[0]),
    )[1]  # fmt: skip
    assert first["retrieval"] == best["settings"]
    assert "6 validation questions" in first["reason"]
    assert first["eval_questions"] == 14


def test_too_few_questions_fall_back_to_the_defaults_and_say_so(
    knowledge: Path, tmp_path: Path
) -> None:
    questions = _write(tmp_path, QUESTIONS[:10], "few.jsonl")
    result = _choose(knowledge, questions, tmp_path / "out", tmp_path / "home", min_validation=5)
    assert result["validation_file"] is None and result["chosen"] == {}
    assert result["eval_file"] == str(questions) and result["eval_questions"] == 10
    assert result["reason"].startswith(
        "too few questions to choose retrieval settings: 10 questions give 3 for validation "
        "(fewer than search.min_validation 5)"
    )
    assert not (tmp_path / "out").exists()  # nothing indexed for a choice never made
    every_set = _choose(knowledge, questions, tmp_path / "o2", tmp_path / "home", unset=["k"])
    assert every_set["reason"].startswith("nothing to choose")
