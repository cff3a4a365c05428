"""The interaction store (SQLite and PostgreSQL) and harvest's exact kept, dropped and quarantined.

Rows are written through ``InteractionStore.log`` exactly as ``adaptflow serve`` writes them,
so every case of harvest is checked without a model; tests/test_serve.py runs the whole loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import postgres_cluster

from adaptflow.errors import DataError, ServiceError
from runtime.interactions import InteractionStore
from serve.run import redactor
from tasks.harvest import harvest


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Iterator[InteractionStore]:
    if request.param == "sqlite":
        opened = InteractionStore(f"sqlite:///{tmp_path / 'log.db'}", redactor())
        yield opened
        opened.dispose()
        return
    with postgres_cluster(("interactions",)) as cluster:
        opened = InteractionStore(cluster.url("interactions", "postgresql+psycopg"), redactor())
        yield opened
        opened.dispose()


def _chat(store: InteractionStore, id: str, question: str, *answers: str, model: str = "m") -> None:
    store.log(
        id,
        model,
        "1",
        "chat",
        {"model": model, "messages": [{"role": "user", "content": question}]},
        {"choices": [{"index": i, "message": {"content": a}} for i, a in enumerate(answers)]},
        12.5,
    )


def test_the_store_keeps_what_it_is_given_redacted_and_refuses_bad_feedback(store) -> None:
    _chat(store, "a", "mail bob@example.com please", "done, card 4111 1111 1111 1111")
    found = store.get("a")
    assert found is not None and found.version == "1" and found.latency_ms == 12.5
    assert found.request["messages"][0]["content"] == "mail <EMAIL> please"
    assert found.response["choices"][0]["message"]["content"] == "done, card <CARD_NUMBER>"
    assert store.get("nope") is None
    with pytest.raises(DataError, match="no interaction with id 'nope'"):
        store.add_feedback("nope", rating="up")
    with pytest.raises(DataError, match="at least one of"):
        store.add_feedback("a")
    with pytest.raises(DataError, match="rating must be 'up' or 'down'"):
        store.add_feedback("a", rating="meh")
    with pytest.raises(DataError, match=r"one of the interaction's 1 choice\(s\) \(0..0\), got 3"):
        store.add_feedback("a", preferred=3)
    saved = store.add_feedback("a", correction="write to bob@example.com")
    assert saved.correction == "write to <EMAIL>"
    assert [f.correction for f in store.feedback_of("m")] == ["write to <EMAIL>"]
    assert store.feedback_of("other-model") == []


def test_harvest_keeps_drops_and_quarantines_exactly(store, tmp_path: Path) -> None:
    _chat(store, "i1", "q1", "a1")
    _chat(store, "i2", "q2", "a2")
    _chat(store, "i3", "q3", "x", "y", "x")  # three sampled choices
    _chat(store, "i4", "q4", "same", "same")  # two equal choices
    _chat(store, "i5", "q5", "")  # an empty answer
    _chat(store, "i6", "q1", "a1")  # the same exchange as i1
    _chat(store, "other", "q", "a", model="another-model")
    store.log("c1", "m", "1", "classify", {"input": "t"}, {"data": [{"label": "x"}]}, 1.0)
    store.add_feedback("i1", rating="down")
    store.add_feedback("i1", rating="up", correction="better a1")  # supersedes the "down"
    store.add_feedback("i2", rating="down")
    store.add_feedback("i3", preferred=1)
    store.add_feedback("i4", preferred=0)
    store.add_feedback("i5", rating="up")
    store.add_feedback("i6", rating="up")  # the same record as i1's: a duplicate
    store.add_feedback("c1", rating="up")
    store.add_feedback("other", rating="up")  # another model's: not harvested

    summary = harvest("m", store, tmp_path / "harvest", tmp_path)

    assert summary["interactions"] == 7 and summary["feedback"] == 8
    assert summary["dropped"] == {
        "superseded": 1,
        "chosen_equals_rejected": 1,
        "exact_duplicate": 1,  # i6's record equals i1's
    }
    assert summary["quarantined"] == 2
    # the unit: one dataset's share of one feedback (i1's second feedback feeds sft and kto)
    assert (summary["input"], summary["kept"]) == (9, 4)
    assert summary["input"] == summary["kept"] + 3 + summary["quarantined"]
    out = Path(summary["output"])

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (out / name).read_text().splitlines()]

    user = [{"role": "user", "content": "q1"}]
    assert rows("sft.jsonl") == [
        {"id": "i1-sft", "messages": [*user, {"role": "assistant", "content": "better a1"}]}
    ]
    assert [(r["id"], r["label"], r["completion"][0]["content"]) for r in rows("kto.jsonl")] == [
        ("i1-kto", True, "a1"),
        ("i2-kto", False, "a2"),
    ]
    assert rows("dpo.jsonl") == [  # choice 2 says "x" too: one pair per different text
        {
            "id": "i3-dpo-0",
            "prompt": [{"role": "user", "content": "q3"}],
            "chosen": [{"role": "assistant", "content": "y"}],
            "rejected": [{"role": "assistant", "content": "x"}],
        }
    ]
    assert {r["reason"] for r in rows("quarantine.jsonl")} == {
        "no_conversation: a classify interaction",
        "empty_answer",
    }
    assert len(rows("dropped.jsonl")) == 3
    assert sum(d["records"] for d in summary["datasets"].values()) == 4
    assert summary["data_hash"].endswith(".dir")
    again = harvest("m", store, tmp_path / "harvest", tmp_path)
    assert again["data_hash"] == summary["data_hash"]
    store.add_feedback("i2", correction="a2, but better")
    changed = harvest("m", store, tmp_path / "harvest", tmp_path)
    assert changed["data_hash"] != summary["data_hash"]
    assert changed["datasets"]["sft"]["records"] == 2


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    from adaptflow.servers import free_port

    url = f"postgresql+psycopg://u:secret-pw@127.0.0.1:{free_port()}/none"
    with pytest.raises(ServiceError, match="interaction store at .* is not reachable") as caught:
        InteractionStore(url, redactor())
    assert "secret-pw" not in str(caught.value)
    with pytest.raises(ServiceError, match="not usable"):
        InteractionStore("nosuchdialect://x", redactor())


def test_the_commands_say_what_is_wrong_without_a_traceback() -> None:
    from helpers import run_cli

    served = run_cli("serve", "no-such-model", "--port", "8123")
    assert served.returncode == 2
    assert "registered model 'no-such-model' has no alias 'champion'" in served.stderr
    feedback = run_cli("feedback", "chatcmpl-nope", "--rating", "up", "--json")
    assert feedback.returncode == 2
    assert json.loads(feedback.stdout)["error"] == "no interaction with id 'chatcmpl-nope'"
    bad = run_cli("feedback", "chatcmpl-nope", "--rating", "meh")
    assert bad.returncode == 2 and "rating must be 'up' or 'down'" in bad.stderr
    port = run_cli("serve", "x", "--port", "70000")
    assert port.returncode == 2 and "--port must be 1..65535" in port.stderr
    for done in (served, feedback, bad, port):
        assert "Traceback" not in done.stderr
