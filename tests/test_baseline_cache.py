"""No-training baselines are scored once per (data, base model, settings) in a home."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import write_jsonl

from adaptflow.samples import example_rows


def _split(folder: Path, train: int, held_out: int) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in example_rows()][: train + held_out]
    return (
        write_jsonl(folder / "train.jsonl", rows[:train]),
        write_jsonl(folder / "eval.jsonl", rows[train:]),
    )


def test_the_knn_baseline_is_scored_once_per_data_and_model(tmp_path: Path) -> None:
    from prefect import flow

    from tasks.icl.knn import knn_baseline_task

    train, held_out = _split(tmp_path / "a", 60, 20)
    copy_train, copy_eval = _split(tmp_path / "b", 60, 20)  # the same bytes, elsewhere

    @flow(name="baseline-cache-test")
    def score(train: Path, held_out: Path, metric: str = "f1_macro") -> list[object]:
        return [knn_baseline_task(train, held_out, "minilm", metric, return_state=True)]

    [first] = score(train, held_out)
    [again] = score(train, held_out)
    [moved] = score(copy_train, copy_eval)
    assert (first.name, again.name, moved.name) == ("Completed", "Cached", "Cached")
    assert again.result() == first.result() == moved.result()
    # another eval split, or another metric to tune k for: scored anew
    write_jsonl(held_out, [json.loads(line) for line in example_rows()][80:100])
    [changed] = score(train, held_out)
    [other_metric] = score(train, copy_eval, "accuracy")
    assert (changed.name, other_metric.name) == ("Completed", "Completed")
    assert changed.result()["metrics"] != first.result()["metrics"]


def test_the_key_reads_model_files_and_refuses_code_it_cannot_see(tmp_path: Path) -> None:
    from tasks.cache import baseline_key, model_digest

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    before = model_digest(str(model))
    assert before == model_digest(str(model))
    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert model_digest(str(model)) != before  # re-saved weights: a new key
    assert model_digest("some-org/some-model") is None  # a hub id: never cached

    data = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a", "target": "b"}])
    key = baseline_key(("eval_path",))
    args = {"base_model": str(model), "eval_path": data, "max_length": 64, "rewards": None}
    assert key(None, args) == key(None, dict(args))
    assert key(None, args | {"max_length": 32}) != key(None, args)
    python = [{"kind": "python", "function": "mine:score"}]
    assert key(None, args | {"rewards": python}) is None
    assert key(None, args | {"rewards": [{"kind": "exact_match"}]}) is not None
    assert key(None, args | {"base_model": "some-org/some-model"}) is None


def _registered_icl(name: str, train: Path, folder: Path) -> str:
    """A kNN package logged on its own MLflow run and registered as ``name``'s champion."""
    from registry import models
    from registry.tracking import start_run
    from tasks.icl.knn import build_knn_classifier

    build_knn_classifier(train, "minilm", folder)
    run_id = start_run(name, "champion-cache-test", {})
    uri = models.log_model_package(run_id, folder, f"# {name}")
    version = models.register_candidate(name, uri, run_id, {}, "")
    models.promote(name, version)
    return version


def test_the_champion_is_scored_once_per_registered_version_and_eval_split(
    tmp_path: Path,
) -> None:
    from prefect import flow

    from registry.tracking import client
    from tasks.tracking import score_champion

    train, held_out = _split(tmp_path / "a", 60, 20)
    name = "champion-cache-test"
    first_version = _registered_icl(name, train, tmp_path / "pkg1")

    @flow(name="champion-cache-test")
    def score(version: str, held_out: Path) -> object:
        return score_champion(name, version, str(held_out), "classification", return_state=True)

    # no champion: nothing to score (a call the key refuses: see the test below)
    @flow(name="champion-cache-test-none")
    def nothing(held_out: Path) -> object:
        return score_champion(name, None, str(held_out), "classification", return_state=True)

    assert nothing(held_out).result() is None
    first, again = score(first_version, held_out), score(first_version, held_out)
    assert (first.name, again.name) == ("Completed", "Cached")
    assert again.result() == first.result()
    assert set(first.result()) >= {"accuracy", "f1_macro"}

    write_jsonl(held_out, [json.loads(line) for line in example_rows()][80:100])
    changed = score(first_version, held_out)
    assert changed.name == "Completed"  # another eval split: scored anew
    assert changed.result() != first.result()

    # the same number on a model deleted and registered again is another model: scored anew
    client().delete_registered_model(name)
    reborn = _registered_icl(name, train, tmp_path / "pkg2")
    assert reborn == first_version
    assert score(reborn, held_out).name == "Completed"
    assert score(reborn, held_out).name == "Cached"


def test_a_call_the_key_refuses_is_never_served_from_the_cache(tmp_path: Path) -> None:
    """A hub id has no key: each call runs, whatever another call of the task left cached."""
    from prefect import flow, task

    from tasks.cache import baseline_cache

    @task(name="refused-key-probe", cache_policy=baseline_cache(("path",)), persist_result=True)
    def count_lines(path: Path, base_model: str) -> int:
        return len(path.read_text().splitlines())

    @flow(name="refused-key-test")
    def probe(path: Path) -> object:
        return count_lines(path, "some-org/some-model", return_state=True)

    (tmp_path / "one.txt").write_text("a\n")
    (tmp_path / "two.txt").write_text("a\nb\n")
    one, two = probe(tmp_path / "one.txt"), probe(tmp_path / "two.txt")
    assert (one.name, two.name) == ("Completed", "Completed")
    assert (one.result(), two.result()) == (1, 2)
