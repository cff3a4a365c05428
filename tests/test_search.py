"""Hyperparameter search: the grid, the validation split, the pick, and child runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from adaptflow.errors import SpecError
from adaptflow.spec import parse_spec
from tasks.evaluate.search import best_trial, split_validation, trial_configs

LOWERCASE = REPO / "examples" / "unicode-lowercase"


def test_trial_configs_are_the_grid_or_a_seeded_sample_of_it() -> None:
    space = {"lora_r": [4, 8], "learning_rate": [0.001, 0.003, 0.01]}
    grid = trial_configs(space, max_trials=10, seed=0)
    assert grid == [
        {"learning_rate": lr, "lora_r": r} for lr in (0.001, 0.003, 0.01) for r in (4, 8)
    ]
    sample = trial_configs(space, max_trials=3, seed=7)
    assert len(sample) == 3 and all(c in grid for c in sample)
    assert sample == sorted(sample, key=grid.index)  # grid order kept
    assert trial_configs(space, max_trials=3, seed=7) == sample
    assert trial_configs({}, max_trials=3, seed=0) == [{}]


def test_best_trial_follows_the_metric_direction_and_breaks_ties_early() -> None:
    trials = [
        {"trial": 1, "metrics": {"rougeL": 0.5, "perplexity": 9.0}},
        {"trial": 2, "metrics": {"rougeL": 0.7, "perplexity": 3.0}},
        {"trial": 3, "metrics": {"rougeL": 0.7, "perplexity": 4.0}},
    ]
    assert best_trial(trials, "rougeL")["trial"] == 2
    assert best_trial(trials, "perplexity")["trial"] == 2
    assert best_trial(trials[::-1], "rougeL")["trial"] == 2


def test_validation_split_is_disjoint_stratified_and_complete(tmp_path: Path) -> None:
    rows = [{"id": str(i), "text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(40)]
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit, validation = split_validation(source, 0.25, 3, tmp_path / "out")
    fit_rows = [json.loads(x) for x in fit.read_text().splitlines()]
    val_rows = [json.loads(x) for x in validation.read_text().splitlines()]
    assert len(val_rows) == 10 and len(fit_rows) == 30
    assert sorted(r["id"] for r in fit_rows + val_rows) == sorted(r["id"] for r in rows)
    assert sum(r["label"] == "b" for r in val_rows) == 2  # 10 b's, a quarter held out
    again = split_validation(source, 0.25, 3, tmp_path / "again")[1].read_text()
    assert again == validation.read_text()


def _spec(**search: object) -> dict:
    raw = yaml.safe_load((LOWERCASE / "spec.yaml").read_text())
    return raw | {"search": search}


def test_search_space_is_validated_against_train_keys() -> None:
    ok = parse_spec(_spec(space={"learning_rate": [0.001, 0.01], "lora_r": [4]}), LOWERCASE)
    assert ok.search.space == {"learning_rate": [0.001, 0.01], "lora_r": [4]}
    with pytest.raises(SpecError, match="'rank' is not a train key; searchable: epochs"):
        parse_spec(_spec(space={"rank": [4]}), LOWERCASE)
    with pytest.raises(SpecError, match=r"search.space.learning_rate: -1 is invalid"):
        parse_spec(_spec(space={"learning_rate": [0.1, -1]}), LOWERCASE)
    with pytest.raises(SpecError, match="search.space.epochs is empty"):
        parse_spec(_spec(space={"epochs": []}), LOWERCASE)


@pytest.mark.integration
def test_search_runs_child_trials_and_trains_the_best(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import tracking

    raw = _spec(space={"learning_rate": [0.00001, 0.003]}, validation_fraction=0.25)
    lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:160]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    raw |= {"name": "e2e-search", "method": "full"}
    raw["data"]["train"] = str(tmp_path / "pairs.jsonl")
    raw["train"] |= {"epochs": 4}
    # reference perplexity separates the trials even where 90 rows and 4 epochs leave ROUGE-L
    # at 0 for both; it also checks the lower-is-better direction end to end
    raw["target"] = {"metric": "perplexity"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))

    result = adapt_pipeline(str(path))
    trials = result["search"]["trials"]
    assert [t["config"] for t in trials] == [{"learning_rate": 0.00001}, {"learning_rate": 0.003}]
    scores = [t["metrics"]["perplexity"] for t in trials]
    best = result["search"]["best"]
    assert result["search"]["metric"] == "perplexity"
    assert best["metrics"]["perplexity"] == min(scores)
    # 1e-5 barely moves the weights in 4 epochs; 3e-3 is the example's learning rate
    assert best["config"] == {"learning_rate": 0.003}, scores
    assert scores[1] < scores[0] / 2, scores
    for trial in trials:
        run = tracking.client().get_run(trial["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]
        assert run.data.tags["adaptflow.search_trial"] == str(trial["trial"])
        assert float(run.data.params["search.learning_rate"]) == trial["config"]["learning_rate"]
        validation = run.data.metrics["validation.perplexity"]
        assert validation == pytest.approx(trial["metrics"]["perplexity"])
        assert run.info.status == "FINISHED"
    parent = tracking.client().get_run(result["mlflow_run_id"])
    assert parent.data.metrics["search.best.learning_rate"] == pytest.approx(0.003)
    # the validation part is carved from train (never from eval); the final run used all train
    search = result["search"]
    train_examples = result["curation"]["train_examples"]
    assert search["fit_examples"] + search["validation_examples"] == train_examples
    assert search["validation_examples"] == round(train_examples * 0.25)


def _ids_of(path: Path) -> set[str]:
    return {json.loads(line)["id"] for line in path.read_text().splitlines()}


def _one_auto_trial(tmp_path: Path, raw: dict) -> tuple[dict, dict]:
    """Run the pipeline on ``raw``; settings chosen on validation in exactly one trial."""
    from flows.pipeline import adapt_pipeline

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = adapt_pipeline(str(path))
    assert result["search"]["auto"] and len(result["search"]["trials"]) == 1
    return result, result["search"]["trials"][0]


@pytest.mark.integration
@pytest.mark.slow  # ~75 s; the classification path of the same choice runs in make test
def test_generative_epochs_are_chosen_on_validation_and_logged_once(tmp_path: Path) -> None:
    """Unset epochs: one early-stopped trial on a validation part of train, then the refit."""
    import math

    from adaptflow.settings import load_settings
    from registry import tracking
    from tasks.train.tune import GENERATIVE_NOTE

    raw = _spec(validation_fraction=0.25)
    lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:320]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    raw |= {"name": "e2e-auto-epochs", "method": "full"}
    raw["data"]["train"] = str(tmp_path / "pairs.jsonl")
    del raw["train"]["epochs"]
    raw["train"]["patience"] = 2
    result, trial = _one_auto_trial(tmp_path, raw)
    search, run_id = result["search"], result["mlflow_run_id"]
    epochs = trial["best_epoch"]
    history = trial["validation_history"]
    # 320 pairs, not 160: on some CPUs 3 epochs on 90 training rows scored ROUGE-L 0 on every
    # epoch, and a flat curve (rightly) falls back to the default epochs instead
    assert len({score for _, score in history}) > 1, f"no signal on validation: {history}"
    assert epochs == max(history, key=lambda item: (item[1], -item[0]))[0]
    assert len(history) == min(10, int(epochs) + 2)  # up to 10 epochs, patience 2
    # the trial's package scores on validation what its best epoch scored there
    assert trial["metrics"]["rougeL"] == pytest.approx(dict(history)[epochs], abs=1e-9)
    assert search["best"]["config"] == {"epochs": epochs}, (history, search.get("reason"))
    assert result["choice"]["chosen"] == {"epochs": epochs}

    # the validation part comes out of train; the eval split is never seen by the choice
    folder = load_settings().work_dir / "e2e-auto-epochs" / run_id / "search"

    parts = ("search_train", "search_validation")
    ids = {name: _ids_of(folder / f"{name}.jsonl") for name in parts}
    train_ids = _ids_of(Path(result["curation"]["train_file"]))
    eval_ids = _ids_of(Path(result["curation"]["eval_file"]))
    assert ids["search_train"] | ids["search_validation"] == train_ids
    assert not ids["search_train"] & ids["search_validation"]
    assert not (ids["search_train"] | ids["search_validation"]) & eval_ids
    assert len(ids["search_validation"]) == round(len(train_ids) * 0.25)

    # the candidate refits the chosen epochs on the whole training split (batches of 16)
    assert result["train"]["steps"] == int(epochs) * math.ceil(len(train_ids) / 16)

    run = tracking.client().get_run(run_id)
    assert float(run.data.params["train.epochs"]) == epochs
    assert run.data.params["train.chosen_on_validation"] == "epochs"
    reason = run.data.tags["adaptflow.choice"]
    assert reason.startswith(f"learning rate 0.003, epochs {epochs:g} (early stopping): rougeL")
    assert reason.endswith(GENERATIVE_NOTE)
    assert run.data.metrics["search.best.epochs"] == epochs  # logged once, from the choice
    history_of = tracking.client().get_metric_history(run_id, "search.best.epochs")
    assert len(history_of) == 1
    local = tracking.client().download_artifacts(run_id, "search.json", str(tmp_path))
    logged = json.loads(Path(local).read_text())
    assert logged["chosen"] == {"epochs": epochs} and logged["reason"] == reason
    child = tracking.client().get_run(trial["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == run_id
    assert child.data.metrics["validation.rougeL"] == pytest.approx(trial["metrics"]["rougeL"])


@pytest.mark.integration
@pytest.mark.slow  # the same early stopping as the generative case above, on perplexity
def test_continued_pretraining_epochs_are_chosen_on_validation_perplexity(
    tmp_path: Path,
) -> None:
    """Unset CPT epochs: validation perplexity after every epoch picks them, then the refit."""
    from adaptflow.settings import load_settings
    from registry import tracking
    from tasks.train.tune import LM_NOTE

    code = REPO / "examples" / "stdlib-code"
    raw = yaml.safe_load((code / "spec.yaml").read_text())
    lines = (code / "data" / "code.jsonl").read_text().splitlines()[:70]
    (tmp_path / "code.jsonl").write_text("\n".join(lines) + "\n")
    raw |= {"name": "e2e-cpt-epochs", "cpt": {"replay": 0}, "search": {"min_validation": 10}}
    raw["data"] = {"train": str(tmp_path / "code.jsonl"), "id_field": "id"}
    raw["train"] = {"learning_rate": 0.01, "batch_size": 8, "max_length": 64, "patience": 1}
    raw["target"] = {"metric": "perplexity"}
    result, trial = _one_auto_trial(tmp_path, raw)
    run_id = result["mlflow_run_id"]
    epochs, history = trial["best_epoch"], trial["validation_history"]
    assert epochs == min(history, key=lambda item: (item[1], item[0]))[0]  # lower is better
    assert len(history) == min(10, int(epochs) + 1)  # up to 10 epochs, patience 1
    assert history[0][1] < result["baseline"]["perplexity"]  # one epoch already fits the domain
    # the trial's package is its best epoch: it scores on validation what that epoch scored
    assert trial["metrics"]["perplexity"] == pytest.approx(dict(history)[epochs], rel=1e-6)
    assert result["choice"]["chosen"] == {"epochs": epochs}

    # the validation documents come out of train, never out of the eval split
    folder = load_settings().work_dir / "e2e-cpt-epochs" / run_id / "search"

    fit, held = (_ids_of(folder / f"{n}.jsonl") for n in ("search_train", "search_validation"))
    train_ids = _ids_of(Path(result["curation"]["train_file"]))
    assert fit | held == train_ids and not fit & held
    assert not train_ids & _ids_of(Path(result["curation"]["eval_file"]))

    # the candidate refits the chosen epochs on the whole split: same windows per epoch
    assert result["train"]["train_tokens"] == int(epochs) * result["train"]["domain_tokens"]
    assert result["train"]["validation_history"] == []  # the refit does not stop early
    run = tracking.client().get_run(run_id)
    assert float(run.data.params["train.epochs"]) == epochs
    reason = run.data.tags["adaptflow.choice"]
    assert reason.startswith(f"learning rate 0.01, epochs {epochs:g} (early stopping): perplex")
    assert reason.endswith(LM_NOTE)
