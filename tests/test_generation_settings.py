"""A spec's ``generation`` settings: refused where nothing generates, recorded in the package,
decoded by ``Generator`` (seeded sampling repeats, the repetition penalty breaks repeats),
served for whatever a request leaves out, logged as params and shown on the card.

One tiny-gpt package is fully fine-tuned here (6 steps, ~15 s) to answer "Repeat the word: W"
with W six times, so its greedy answers repeat tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import write_jsonl

from adaptflow.errors import SpecError
from adaptflow.spec import parse_spec
from runtime.generate import Generator, Sampling

WORDS = (
    "cat dog sun moon tree fish bird rock star lake road door book milk salt rain snow wind "
    "fire leaf seed ship coin bell"
)
SETTINGS = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.3, "max_new_tokens": 5}
PROMPT = "Repeat the word: cat"


def _raw(**changes: Any) -> dict[str, Any]:
    return {
        "name": "gen-settings",
        "task": "instruction",
        "base_model": "tiny-gpt",
        "method": "full",
        "data": {"train": "train.jsonl", "target_field": "target"},
        "train": {"epochs": 6, "learning_rate": 0.005, "batch_size": 24, "max_length": 32},
        "generation": SETTINGS,
    } | changes


def _repeats(generator: Generator, text: str) -> int:
    """Tokens of ``text`` that repeat an earlier one."""
    ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) - len(set(ids))


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A package trained from a spec with generation settings, recorded as the pipeline does."""
    from flows.steps import record_generation
    from tasks.train.peft import Hyper
    from tasks.train.sft import train_generator

    folder = tmp_path_factory.mktemp("generation")
    rows = [
        {"id": str(i), "text": f"Repeat the word: {w}", "target": " ".join([w] * 6)}
        for i, w in enumerate(WORDS.split())
    ]
    write_jsonl(folder / "train.jsonl", rows)
    spec = parse_spec(_raw(), base_dir=folder)
    assert spec.data.train is not None
    hyper = Hyper(**spec.train.model_dump(), seed=spec.seed)  # as flows/adapt.py builds it
    trained = train_generator(
        spec.data.train, spec.base_model, "full", hyper, folder / "package", folder / "ckpt"
    )
    record_generation(spec, "full", trained.package_dir)
    return Path(trained.package_dir)


@pytest.fixture(scope="module")
def generator(package: Path) -> Generator:
    return Generator.from_package(package)


def test_the_spec_refuses_generation_settings_where_nothing_generates(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}])
    classify: dict[str, Any] = {"task": "classification", "base_model": "minilm", "method": "icl"}
    classify["data"] = {"train": "train.jsonl", "label_field": "label"}
    with pytest.raises(SpecError) as refused:
        parse_spec(_raw(**classify, train={}), base_dir=tmp_path)
    assert str(refused.value) == (
        "invalid spec <spec>:\n  - (top level): generation.temperature, generation.top_p, "
        "generation.max_new_tokens, generation.repetition_penalty: generation settings apply "
        "to the answers of tasks instruction, qa, summarization; task 'classification' "
        "generates no answers"
    )
    with pytest.raises(SpecError, match="method 'reward' trains a reward model"):
        parse_spec(_raw(method="reward", generation={"top_p": 0.5}), base_dir=tmp_path)
    # the defaults, written out, are no settings at all
    spec = parse_spec(_raw(**classify, train={}, generation={"temperature": 0}), tmp_path)
    assert spec.generation.changed() == []
    # generation.max_new_tokens wins over train.max_new_tokens, which takes its value
    both = parse_spec(_raw(train={"max_new_tokens": 40}), base_dir=tmp_path)
    assert (both.train.max_new_tokens, both.generation.max_new_tokens) == (5, 5)
    left = parse_spec(_raw(generation={}, train={"max_new_tokens": 40}), base_dir=tmp_path)
    assert (left.train.max_new_tokens, left.generation.max_new_tokens) == (40, None)


def test_the_package_records_the_spec_settings(package: Path, generator: Generator) -> None:
    options = json.loads((package / "adaptflow_model.json").read_text())["options"]
    assert options["generation"] == SETTINGS | {"seed": 42}
    assert options["max_new_tokens"] == 5  # train.max_new_tokens took generation's
    assert generator.sampling == Sampling(0.7, 0.9, 42, 1.3)
    assert generator.max_new_tokens == 5
    # a package from before generation settings: greedy, no penalty, its own max_new_tokens
    older = package.parent / "older"
    shutil.copytree(package, older)
    manifest = json.loads((older / "adaptflow_model.json").read_text())
    del manifest["options"]["generation"]
    manifest["options"]["max_new_tokens"] = 7
    (older / "adaptflow_model.json").write_text(json.dumps(manifest))
    old = Generator.from_package(older)
    assert (old.sampling, old.max_new_tokens) == (Sampling(), 7)


def test_the_pipeline_records_them_and_the_candidate_is_scored_with_them(
    package: Path, tmp_path: Path
) -> None:
    from flows.steps import record_generation
    from tasks.evaluate.generation import evaluate_generator

    bare = tmp_path / "candidate"
    shutil.copytree(package, bare)
    manifest = json.loads((bare / "adaptflow_model.json").read_text())
    del manifest["options"]["generation"]  # as the recipe wrote it
    (bare / "adaptflow_model.json").write_text(json.dumps(manifest))
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "target": "b"}])
    record_generation(parse_spec(_raw(), base_dir=tmp_path), "full", str(bare))
    options = json.loads((bare / "adaptflow_model.json").read_text())["options"]
    assert options["generation"] == SETTINGS | {"seed": 42}
    # the gate's evaluation answers with them: the seeded draw, not the greedy answer
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"id": "1", "text": PROMPT, "target": "x"}])
    scored = evaluate_generator(bare, eval_file, tmp_path / "eval")
    lines = Path(scored["artifacts"][0]).read_text().splitlines()
    answers = [json.loads(line) for line in lines]
    generator = Generator.from_package(bare)
    assert [a["prediction"] for a in answers] == generator.predict(
        [PROMPT], sampling=Sampling(0.7, 0.9, 42, 1.3)
    )


def test_seeded_sampling_repeats_and_the_penalty_breaks_repeats(generator: Generator) -> None:
    # the package's default decoding samples, seeded as it was scored: the same text twice
    first = generator.predict([PROMPT])
    assert generator.predict([PROMPT]) == first
    # and it does sample: other seeds draw other answers
    draws = {generator.predict([PROMPT], sampling=Sampling(0.7, 0.9, s, 1.3))[0] for s in range(6)}
    assert len(draws) > 1
    seeded = Sampling(0.7, 0.9, 42, 1.3)
    assert generator.predict([PROMPT], sampling=seeded) == first
    greedy = generator.predict([PROMPT], max_new_tokens=12, sampling=Sampling())[0]
    penalty = Sampling(repetition_penalty=1.3)
    penalised = generator.predict([PROMPT], max_new_tokens=12, sampling=penalty)[0]
    # trained to repeat, the greedy answer repeats; the penalty (greedy too) breaks that
    assert _repeats(generator, greedy) >= 3
    assert _repeats(generator, penalised) < _repeats(generator, greedy)
    assert penalised != greedy


def test_serving_uses_the_package_settings_unless_the_request_sets_its_own(
    generator: Generator, package: Path, adaptflow_home: Path
) -> None:
    from fastapi.testclient import TestClient

    from registry.models import log_model_package, promote, register_candidate
    from registry.tracking import start_run
    from serve.app import ServeConfig, create_app
    from serve.follow import AliasFollower

    run_id = start_run("gen-settings", "full", {})
    uri = log_model_package(run_id, package, "# generation settings\n")
    promote("gen-settings", register_candidate("gen-settings", uri, run_id, {}, "test"))
    follower = AliasFollower("gen-settings", "champion", adaptflow_home / "serve")
    loaded = follower.start()
    client = TestClient(create_app(follower, None, ServeConfig()))

    def chat(**fields: Any) -> str:
        body = {"model": "gen-settings", "messages": [{"role": "user", "content": PROMPT}]}
        reply = client.post("/v1/chat/completions", json=body | fields)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["choices"][0]["message"]["content"])

    predict = generator.predict
    try:
        # no temperature: the package's sampling (with the request's seed)
        assert chat(seed=3) == predict([PROMPT], sampling=Sampling(0.7, 0.9, 3, 1.3))[0]
        # temperature 0: greedy through the batcher, with the package's repetition penalty
        penalised = chat(temperature=0)
        assert penalised == predict([PROMPT], sampling=Sampling(repetition_penalty=1.3))[0]
        # the request's penalty wins: plain greedy, another answer
        greedy = chat(temperature=0, repetition_penalty=1.0)
        assert greedy == predict([PROMPT], sampling=Sampling())[0] and greedy != penalised
        assert loaded.batcher is not None and loaded.batcher.batches == [1, 1]
        reply = client.post(
            "/v1/completions",
            json={"model": "gen-settings", "prompt": PROMPT, "temperature": 0.2, "top_p": 0.5}
            | {"seed": 1, "max_tokens": 3},
        )
        assert reply.status_code == 200, reply.text
        assert (
            reply.json()["choices"][0]["text"]
            == predict([PROMPT], max_new_tokens=3, sampling=Sampling(0.2, 0.5, 1, 1.3))[0]
        )
        # /invocations answers as predict does: the package's seeded sampling, not the batcher
        reply = client.post("/invocations", json={"inputs": [PROMPT]})
        assert reply.json()["predictions"] == predict([PROMPT])
        assert loaded.batcher.batches == [1, 1]
        bad = client.post(
            "/v1/chat/completions",
            json={"model": "gen-settings", "messages": [{"role": "user", "content": PROMPT}]}
            | {"repetition_penalty": 0},
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "repetition_penalty"
    finally:
        follower.stop()


def test_settings_are_logged_as_params_and_shown_on_the_card(tmp_path: Path) -> None:
    from flows.steps import generation_settings, run_params
    from registry import tracking
    from registry.card import render_model_card
    from tasks.tracking import open_run

    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "target": "b"}])
    spec = parse_spec(_raw(), base_dir=tmp_path)
    run_id = open_run.fn("gen-settings", "params", run_params(spec, "full"), {})
    params = tracking.client().get_run(run_id).data.params
    logged = {k: v for k, v in params.items() if k.startswith("generation.")}
    assert logged == {
        "generation.temperature": "0.7",
        "generation.top_p": "0.9",
        "generation.max_new_tokens": "5",
        "generation.repetition_penalty": "1.3",
    }
    assert generation_settings(spec, "reward") is None  # a reward model generates nothing

    curation = {"data_hash": "h", "input": 2, "kept": 2, "train_examples": 1}
    curation |= {"eval_examples": 1, "dropped": {}, "quarantined": 0}
    facts = {
        "name": "gen-settings",
        "task": "instruction",
        "method": "full",
        "base_model": "tiny-gpt",
        "target": {"metric": "rougeL", "min": None},
        "data": {},
        "curation": curation,
        "metrics": {"rougeL": 0.5},
        "trainable_params": 1,
        "total_params": 1,
        "mlflow_run_id": run_id,
        "generation": generation_settings(spec, "full"),
    }
    lines = render_model_card(facts).splitlines()
    assert (
        "- Decoding: sampled at temperature 0.7, top_p 0.9 (the evaluation's draw seeded with "
        "42); repetition penalty 1.3; at most 5 new tokens"
    ) in lines
    assert any(line.startswith("- Answers are sampled") for line in lines)
    greedy = parse_spec(_raw(generation={}), base_dir=tmp_path)
    card = render_model_card(facts | {"generation": generation_settings(greedy, "full")})
    assert "- Decoding: greedy; repetition penalty 1.0; at most 64 new tokens\n" in card
    assert "## Generation" not in render_model_card(facts | {"generation": None})


def test_the_no_training_baseline_decodes_as_the_candidate(package: Path, tmp_path: Path) -> None:
    from tasks.evaluate.generation import base_model_baseline

    # a base that answers (the untrained tiny GPT ends every answer at once): the trained
    # package's weights and tokenizer as a plain model folder
    base = tmp_path / "base"
    shutil.copytree(package / "weights", base)
    shutil.copytree(package / "tokenizer", base, dirs_exist_ok=True)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"id": "1", "text": PROMPT, "target": "x"}])
    penalised = Sampling(repetition_penalty=1.3)
    plain = base_model_baseline(str(base), eval_file, 64, 12)["predictions"]
    baseline = base_model_baseline(str(base), eval_file, 64, 12, sampling=penalised)
    generator = Generator.from_base(str(base), 64, 12)
    assert baseline["predictions"] == generator.predict([PROMPT], sampling=penalised)
    assert plain == generator.predict([PROMPT]) and plain != baseline["predictions"]
