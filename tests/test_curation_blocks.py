"""Each curation block on small inline cases: exact records kept, dropped and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import pytest
from helpers import built_corpus, pii_canaries

from tasks.curate.blocks import run_blocks
from tasks.curate.decontaminate import DecontaminationSettings, decontaminate
from tasks.curate.dedup import (
    ENGINES,
    NearDupParams,
    clusters,
    exact_dedup,
    jaccard,
    label_conflicts,
    near_dedup,
    near_detail,
    near_duplicate_pairs,
    shingles,
)
from tasks.curate.normalize import normalize, normalize_text
from tasks.curate.pii import luhn_valid, redact_pii, redact_text
from tasks.curate.quality import DOCUMENT_RULES, EXAMPLE_RULES, quality_filter, quality_problem
from tasks.curate.records import Record
from tasks.curate.split import stratified_split


def _records(*items: tuple[str, str | None]) -> list[Record]:
    return [Record(id=str(i), text=text, label=label) for i, (text, label) in enumerate(items)]


def test_normalisation_repairs_mojibake_composes_and_trims_only() -> None:
    assert normalize_text("The Mona Lisa doesnâ€™t have eyebrows.") == (
        "The Mona Lisa doesn’t have eyebrows."
    )
    assert normalize_text("cafe\u0301  au\tlait ") == "café au lait"  # NFC + whitespace
    assert normalize_text("“quoted” ﬁ ＡＢＣ") == "“quoted” ﬁ ＡＢＣ"  # nothing else rewritten
    assert normalize_text("para one\n\n\n\npara two") == "para one\n\npara two"
    outcome = normalize(_records(("ok text", "a"), ("  padded ", "a")))
    assert [r.text for r in outcome.kept] == ["ok text", "padded"]
    assert outcome.counts == Counter({"normalised": 1}) and not outcome.dropped


def test_label_conflicts_are_quarantined_with_the_other_label_named() -> None:
    records = _records(("refund please", "billing"), ("refund please", "shipping"), ("hi", "x"))
    outcome = label_conflicts(records)
    assert [r.id for r in outcome.kept] == ["2"]
    assert [(q.record.id, q.reason, q.detail) for q in outcome.quarantined] == [
        ("0", "label conflict", "same text also labelled 'shipping'"),
        ("1", "label conflict", "same text also labelled 'billing'"),
    ]


def test_exact_dedup_keeps_the_first_and_names_it() -> None:
    records = _records(("a b c", "x"), ("a b c", "x"), ("a b d", "x"), ("a b c", "x"))
    outcome = exact_dedup(records)
    assert [r.id for r in outcome.kept] == ["0", "2"]
    assert [(d.record.id, d.reason, d.detail) for d in outcome.dropped] == [
        ("1", "exact duplicate", "of id 0"),
        ("3", "exact duplicate", "of id 0"),
    ]


def test_near_dedup_drops_only_confirmed_near_duplicates() -> None:
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    records = _records(
        (base, "x"),
        (base + " again", "x"),  # 14 words -> 10 shingles; one more word: Jaccard 10/11
        ("completely different words about databases and query planners in postgres", "x"),
        (base.replace("lazy", "sleepy"), "x"),  # 5 of 10 shingles change: Jaccard 5/15
    )
    params = NearDupParams()
    outcome = near_dedup(records, params)
    assert [r.id for r in outcome.kept] == ["0", "2", "3"]
    (dropped,) = outcome.dropped
    expected = jaccard(shingles(base, 5), shingles(base + " again", 5))
    assert expected == pytest.approx(10 / 11)
    assert (dropped.record.id, dropped.reason) == ("1", "near duplicate")
    assert dropped.detail == f"of id 0 (Jaccard {expected:.2f})"


A_TEXT = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet "
    "kilo lima mike november oscar papa quebec romeo sierra tango"
)  # 20 words: 16 word 5-grams
B_TEXT = (
    "the curation stage reads every record once and keeps only compact arrays in memory "
    "while the shards run on a dask cluster"
)  # 22 words: 18 word 5-grams


def _first_kept_match(records: list[Record], threshold: float) -> dict[str, tuple[str, float]]:
    """Brute force: each record's first earlier *kept* record at exact Jaccard >= threshold."""
    sets = [shingles(r.text, 5) for r in records]
    kept: list[int] = []
    out = {}
    for i in range(len(records)):
        match = next((j for j in kept if jaccard(sets[j], sets[i]) >= threshold), None)
        if match is None:
            kept.append(i)
        else:
            out[records[i].id] = (records[match].id, jaccard(sets[match], sets[i]))
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_near_dedup_drops_exactly_the_known_near_duplicates(engine: str) -> None:
    words = A_TEXT.split()
    records = _records(
        (A_TEXT, None),  # 0
        (A_TEXT + " uniform", None),  # 1: 16 of 17 shingles -> of 0 at 0.94
        (B_TEXT, None),  # 2
        (" ".join(words[:10] + ["zulu"] + words[11:]), None),  # 3: 5 shingles change: 11/21
        (B_TEXT.replace("cluster", "cluster."), None),  # 4: last shingle changes: 17/19 of 2
        (A_TEXT + " uniform", None),  # 5: same as 1, but 1 was dropped: of 0 again
        ("Hello  World", None),  # 6: under 5 words, one shingle: "hello world"
        ("hello world", None),  # 7: the same shingle after lower-casing: of 6 at 1.00
        (A_TEXT + " uniform victor whiskey xray", None),  # 8: 16/20 = 0.80, at the threshold
        (A_TEXT + " uniform victor whiskey xray yankee", None),  # 9: 16/21 = 0.76, kept
        (B_TEXT.upper(), None),  # 10: lower-cased it is record 2: of 2 at 1.00
    )
    params = NearDupParams(engine=engine)
    outcome = near_dedup(records, params)
    dropped = {d.record.id: d.detail for d in outcome.dropped}
    assert [r.id for r in outcome.kept] == ["0", "2", "3", "6", "9"]
    assert dropped == {
        "1": "of id 0 (Jaccard 0.94)",
        "4": "of id 2 (Jaccard 0.89)",
        "5": "of id 0 (Jaccard 0.94)",
        "7": "of id 6 (Jaccard 1.00)",
        "8": "of id 0 (Jaccard 0.80)",
        "10": "of id 2 (Jaccard 1.00)",
    }
    assert all(d.reason == "near duplicate" for d in outcome.dropped)
    # the same as brute force over every earlier kept record, and the same on a second run
    brute = _first_kept_match(records, params.threshold)
    assert dropped == {i: near_detail(j, s) for i, (j, s) in brute.items()}
    again = near_dedup(records, params)
    assert [d.record.id for d in again.dropped] == [d.record.id for d in outcome.dropped]


def test_near_duplicate_recall_against_exact_jaccard() -> None:
    records = built_corpus()
    params = NearDupParams()
    sets = [shingles(r.text, params.ngram) for r in records]
    truth = {
        (i, j)
        for i, j in combinations(range(len(records)), 2)
        if jaccard(sets[i], sets[j]) >= params.threshold
    }
    found = {(i, j) for i, j, _ in near_duplicate_pairs(records, params)}
    assert len(truth) > 50  # the corpus really has near duplicates
    assert found <= truth  # every reported pair is confirmed by exact Jaccard
    assert len(found) / len(truth) >= 0.95


def test_quality_rules_depend_on_the_task_type() -> None:
    one_liner = "Stainless steel water bottle, 750 ml"
    assert quality_problem(one_liner, EXAMPLE_RULES) is None
    assert quality_problem(one_liner, DOCUMENT_RULES) == ("too few words", "6 < 10")
    spam = "buy now " * 20
    assert quality_problem(spam, EXAMPLE_RULES) == (
        "repeated n-grams",
        "top word 3-gram covers 0.97 > 0.5",  # all but the last "now"
    )
    symbols = " ".join(["#tag ... word"] * 20)
    rule, detail = quality_problem(symbols, DOCUMENT_RULES)
    assert rule == "short words" or rule == "symbols", detail
    numbers = " ".join(str(i) for i in range(60))
    assert quality_problem(numbers, DOCUMENT_RULES)[0] in ("short words", "non-alphabetic")
    prose = " ".join(["Curation keeps the records that teach the model and drops the rest."] * 6)
    no_repeats = replace(DOCUMENT_RULES, max_top_ngram_ratio=None)
    assert quality_problem(prose, no_repeats) is None
    outcome = quality_filter(_records(("", "a"), ("fine text", "a")), EXAMPLE_RULES)
    assert [r.id for r in outcome.kept] == ["1"]
    assert [(d.reason, d.detail) for d in outcome.dropped] == [("quality: too few words", "0 < 1")]


def test_pii_is_replaced_by_typed_placeholders_and_counted() -> None:
    text = (
        "Mail jane.roe@example.org or call +1 (415) 555-0134; card 4111 1111 1111 1111, "
        "not 4111 1111 1111 1112; host 10.0.0.7, not version 1.2.3.4.5; "
        "key sk-proj-abcdefghijklmnopqrstuvwx12, order 1234567890123, year 2024."
    )
    redacted, counts = redact_text(text)
    assert redacted == (
        "Mail <EMAIL> or call <PHONE>; card <CARD_NUMBER>, "
        "not 4111 1111 1111 1112; host <IP_ADDRESS>, not version 1.2.3.4.5; "
        "key <API_KEY>, order 1234567890123, year 2024."
    )
    assert counts == Counter(email=1, phone=1, card_number=1, ip_address=1, api_key=1)
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    outcome = redact_pii(_records(("write to a@b.io", "x"), ("LATIN CAPITAL LETTER A", "y")))
    assert [r.text for r in outcome.kept] == ["write to <EMAIL>", "LATIN CAPITAL LETTER A"]
    assert outcome.counts == Counter({"pii.email": 1})


def test_pii_canaries_are_caught() -> None:
    canaries = pii_canaries()
    caught = 0
    for kind, value in canaries:
        redacted, counts = redact_text(f"Customer note: please use {value} from now on.")
        if value not in redacted and counts[kind] == 1:
            caught += 1
    assert caught / len(canaries) >= 0.99, caught


def test_document_rules_keep_technical_pages_and_drop_garbage() -> None:
    # a real-looking CLI page: JSON output repeats its braces and key lines, table borders
    # and Markdown headings are layout; Gopher's web limits dropped pages like this one
    listing = "\n".join(
        ["## Listing clusters", "The following example lists the clusters in your account."]
        + [f'{{\n"Name": "cluster-{i:03d}",\n"State": "available",\n}},' for i in range(8)]
        + ["│ Interface │ Attribute │ Value │", "├───────────┼───────────┼───────┤"] * 3
        + ["For more information, see Clusters in the user guide."]
    )
    assert quality_problem(listing, DOCUMENT_RULES) is None
    # the same line over most of a page, a base64 blob, hash-tag spam and a number dump go
    menu = "\n".join(["Home | Products | Contact us | Login"] * 12 + ["Welcome to our shop."])
    assert quality_problem(menu, DOCUMENT_RULES) == (
        "repeated lines",
        "characters in repeated lines 0.88 > 0.6",
    )
    blob = "Certificate: " + " ".join(["MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQsw"] * 12)
    assert quality_problem(blob, DOCUMENT_RULES)[0] == "long words"
    tags = " ".join(["#deal #sale #buy now"] * 10)
    assert quality_problem(tags, DOCUMENT_RULES)[0] == "symbols"
    assert quality_problem(" ".join(str(i) for i in range(60)), DOCUMENT_RULES)[0] in (
        "short words",
        "non-alphabetic",
    )


def test_decontamination_drops_training_records_that_are_largely_eval_content() -> None:
    template = "Licensed under the Apache License, Version 2.0; see the LICENSE file. "
    topics = [" ".join(f"w{i}x{j}" for j in range(30)) for i in range(12)]  # 30 words each
    evaluation = _records((template + topics[0], "x"), ("one two three four five", "x"))
    train = _records(
        *[(template + t, "x") for t in topics[1:]],  # the licence line is in every record
        (topics[0] + " and a short note", "x"),  # most of eval record 0's content
        (" ".join(topics[0].split()[:9]) + " and then thirty other words " * 5, "x"),  # 2 8-grams
        ("one two three four five", "x"),  # a short eval record, compared whole
        ("one two three four five six", "x"),  # not the same text
    )
    outcome = decontaminate(train, evaluation)
    dropped = {d.record.text: d.detail for d in outcome.dropped}
    share = "of its content 8-grams are in the eval set"
    assert dropped == {
        # 23 of its 27 8-grams are eval record 0's (the 7 that cross from the licence line into
        # the topic are content too, and this record lacks them)
        topics[0] + " and a short note": f"85% {share} (eval id 0)",
        "one two three four five": f"100% {share} (eval id 1)",
    }
    assert len(outcome.kept) == len(train) - 2  # the boilerplate alone drops nothing
    assert all(d.reason == "overlaps eval set" for d in outcome.dropped)
    # GPT-3's rule (any shared 8-gram, no boilerplate filter) would have dropped them all
    any_gram = DecontaminationSettings(min_share=1e-9, boilerplate=1)
    strict = decontaminate(train, evaluation, any_gram)
    assert len(strict.dropped) == len(train) - 1


def test_split_keeps_near_duplicate_clusters_together() -> None:
    records = built_corpus(seed=11)
    params = NearDupParams()
    pairs = near_duplicate_pairs(records, params)
    groups = clusters(len(records), pairs)
    assert len(set(groups)) < len(records)
    train, evaluation = stratified_split(records, 0.2, seed=5, groups=groups)
    assert len(train) + len(evaluation) == len(records)
    assert 0.1 < len(evaluation) / len(records) < 0.3
    side = {r.id: "eval" for r in evaluation} | {r.id: "train" for r in train}
    assert all(side[records[a].id] == side[records[b].id] for a, b, _ in pairs)

    def leaks(train_part: list[Record], eval_part: list[Record]) -> list[tuple[str, str]]:
        train_sets = [(t.id, shingles(t.text, params.ngram)) for t in train_part]
        return [
            (e.id, t_id)
            for e in eval_part
            for t_id, t_set in train_sets
            if jaccard(shingles(e.text, params.ngram), t_set) >= params.threshold
        ]

    # LSH misses ~1% of true pairs, so the grouped split is nearly leak-free on its own; the
    # curation stage's decontamination removes the rest (tested in test_curation_stage.py).
    grouped = leaks(train, evaluation)
    plain = leaks(*stratified_split(records, 0.2, seed=5))
    assert len(grouped) <= 1
    assert len(plain) > 10 * max(1, len(grouped))  # without groups the same corpus leaks


def test_run_blocks_records_the_funnel_and_accounts_for_everything() -> None:
    records = _records(
        ("refund please", "billing"),
        ("refund please", "shipping"),
        ("mail a@b.io", "x"),
        ("mail a@b.io", "x"),
        ("", "x"),
        ("ok", "y"),
    )
    blocks = [
        ("quality", lambda rs: quality_filter(rs, EXAMPLE_RULES)),
        ("pii", redact_pii),
        ("label_conflicts", label_conflicts),
        ("exact_dedup", exact_dedup),
    ]
    kept, funnel = run_blocks(records, blocks)
    assert [r.id for r in kept] == ["2", "5"]
    assert funnel.steps == [
        ("read", 6),
        ("quality", 5),
        ("pii", 5),
        ("label_conflicts", 3),
        ("exact_dedup", 2),
    ]
    assert len(kept) + len(funnel.dropped) + len(funnel.quarantined) == len(records)
    assert funnel.counts == Counter({"pii.email": 2})


def test_semantic_dedup_drops_paraphrases_by_cosine() -> None:
    from tasks.curate.dedup import semantic_dedup

    records = _records(
        ("The cat sat on the mat.", "x"),
        ("Interest rates rose again this quarter.", "x"),
        ("A cat sat on the mat.", "x"),  # cosine 0.993 with record 0
    )
    outcome = semantic_dedup(records, threshold=0.95, base_model="minilm")
    assert [r.id for r in outcome.kept] == ["0", "1"]
    (dropped,) = outcome.dropped
    assert (dropped.record.id, dropped.reason) == ("2", "semantic duplicate")
    assert dropped.detail.startswith("of id 0 (cosine 0.9")
    assert semantic_dedup(records, threshold=0.9999, base_model="minilm").dropped == []


def test_invariants_are_real_errors_that_survive_python_dash_o() -> None:
    """A block that loses a record is an error even under ``python -O`` (no ``assert``)."""
    import ast
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    probe = (
        "from adaptflow.errors import InvariantError\n"
        "from tasks.curate.blocks import Outcome, run_blocks\n"
        "from tasks.curate.records import Record\n"
        "records = [Record(id=str(i), text=f'text {i}') for i in range(3)]\n"
        "def lossy(rs): return Outcome(kept=rs[:1])\n"
        "try:\n"
        "    run_blocks(records, [('lossy', lossy)])\n"
        "except InvariantError as exc:\n"
        "    print('raised:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", probe], capture_output=True, text=True, cwd=repo, check=True
    )
    assert done.stdout.strip() == "raised: block lossy lost records: 3 in, 1 out"
    found = [
        f"{path.relative_to(repo)}:{node.lineno}"
        for package in ("adaptflow", "runtime", "registry", "tasks", "flows")
        for path in sorted((repo / package).rglob("*.py"))  # runtime/: once it exists
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert found == [], f"assert statements vanish under python -O: {found}"
