"""Continued pre-training: replay, the general-text split, scores and the forgetting gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO

from adaptflow.errors import DataError, SpecError
from adaptflow.spec import parse_spec
from runtime.generate import score_texts
from runtime.prompts import Encoded, chunk_text
from tasks.curate.general import load_general, split_general
from tasks.evaluate.gate import decide_promotion
from tasks.train.cpt import mix_replay

CODE_EXAMPLE = REPO / "examples" / "stdlib-code"


def _windows(*sizes: int) -> list[Encoded]:
    return [Encoded(list(range(n)), list(range(n))) for n in sizes]


def test_replay_reaches_its_share_of_tokens_and_cycles_small_general_sets() -> None:
    domain = _windows(60, 60, 30)  # 150 domain tokens
    general = _windows(10, 20, 30)
    chosen, tokens = mix_replay(domain, general, 0.25, seed=1)
    # 0.25 of all tokens -> 50 general tokens wanted: windows are added until it is reached
    assert tokens == sum(len(w.input_ids) for w in chosen)
    assert 50 <= tokens < 50 + 30
    assert mix_replay(domain, general, 0.25, seed=1) == (chosen, tokens)  # seeded
    many, many_tokens = mix_replay(domain, general, 0.8, seed=1)  # 600 wanted from 60 tokens
    assert many_tokens >= 600 and len(many) >= 30  # the general set is cycled ~10 times
    assert {len(w.input_ids) for w in many} == {10, 20, 30}
    assert mix_replay(domain, general, 0.0, seed=1) == ([], 0)
    assert mix_replay(domain, [], 0.5, seed=1) == ([], 0)


def test_general_split_is_by_content_disjoint_and_order_independent() -> None:
    texts = [f"general text number {i}" for i in range(50)]
    replay, check = split_general(texts, 0.2, max_check=200)
    assert len(check) == 10 and len(replay) == 40
    assert not set(replay) & set(check) and set(replay) | set(check) == set(texts)
    replay2, check2 = split_general(list(reversed(texts)), 0.2, max_check=200)
    assert check2 == check and set(replay2) == set(replay)
    assert len(split_general(texts, 0.2, max_check=3)[1]) == 3
    assert split_general(["only one"], 0.2, 200) == ([], ["only one"])


def test_load_general_quarantines_bad_lines_and_refuses_empty(tmp_path: Path) -> None:
    path = tmp_path / "general.jsonl"
    lines = [json.dumps({"text": f"plain english sentence {i}"}) for i in range(9)]
    path.write_text("\n".join(lines + ["{broken", json.dumps({"text": 3})]) + "\n")
    general = load_general(path, "text", 0.2, 200)
    assert general.input == 11 and len(general.replay) + len(general.check) == 9
    assert [(q.line, q.reason) for q in general.quarantined] == [
        (10, "invalid JSON: Expecting property name enclosed in double quotes"),
        (11, "field 'text' must be a string, got int"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{broken\n")
    with pytest.raises(DataError, match="no usable text"):
        load_general(empty, "text")


def test_chunk_text_and_score_texts_match_the_models_own_loss() -> None:
    from runtime.loading import load_base, load_base_tokenizer

    tokenizer = load_base_tokenizer("tiny-gpt")
    model = load_base("tiny-gpt")
    model.eval()
    text = "Return the number of items in a container. " * 12
    windows = chunk_text(tokenizer, text, 32)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [w.input_ids for w in windows] == [ids[i : i + 32] for i in range(0, len(ids), 32)]
    score = score_texts(model, tokenizer, [text, "Open a file."], 32)
    expected_nll, expected_tokens = 0.0, 0
    with torch.no_grad():
        for w in windows + chunk_text(tokenizer, "Open a file.", 32):
            ids_t = torch.tensor([w.input_ids])
            expected_nll += float(model(input_ids=ids_t, labels=ids_t).loss) * (
                len(w.input_ids) - 1
            )
            expected_tokens += len(w.input_ids) - 1
    assert score.tokens == expected_tokens
    assert score.nll == pytest.approx(expected_nll, rel=1e-4)
    assert score.perplexity == pytest.approx(math.exp(expected_nll / expected_tokens), rel=1e-4)
    assert 0 <= score.accuracy <= 1


def _report(before: float, after: float, limit: float = 0.1) -> dict[str, object]:
    return {
        "measured": True,
        "general_perplexity_before": before,
        "general_perplexity_after": after,
        "perplexity_increase": after / before - 1,
        "max_increase": limit,
        "passed": after / before - 1 <= limit,
    }


def test_gate_blocks_a_candidate_that_forgot_too_much() -> None:
    base, cand = {"perplexity": 300.0}, {"perplexity": 100.0}
    kept = decide_promotion("perplexity", cand, base, None, "base", _report(300.0, 320.0))
    assert kept.promote
    assert kept.reasons[-1].endswith("(+6.7%) within the allowed +10.0%")
    forgot = decide_promotion("perplexity", cand, base, None, "base", _report(300.0, 1500.0))
    assert not forgot.promote
    assert forgot.reasons[0] == "perplexity 100.0000 beats baseline (base) 300.0000"
    assert "300.00 -> 1500.00 (+400.0%) exceeds the allowed +10.0%" in forgot.reasons[-1]
    unmeasured = {"measured": False, "passed": True, "reason": "encoder-decoder"}
    assert decide_promotion("perplexity", cand, base, None, "", unmeasured).promote


def test_cpt_spec_needs_general_text_to_replay(tmp_path: Path) -> None:
    raw = yaml.safe_load((CODE_EXAMPLE / "spec.yaml").read_text())
    raw["data"].pop("general")
    with pytest.raises(SpecError, match="data.general, or cpt.replay: 0"):
        parse_spec(raw, CODE_EXAMPLE)
    raw["cpt"] = {"replay": 0}
    assert parse_spec(raw, CODE_EXAMPLE).cpt.replay == 0
    raw["cpt"] = {"replay": 1.0}
    with pytest.raises(SpecError, match="cpt.replay"):
        parse_spec(raw, CODE_EXAMPLE)


def _cpt_spec(folder: Path, name: str, replay: float, lr: float, epochs: float) -> Path:
    raw = yaml.safe_load((CODE_EXAMPLE / "spec.yaml").read_text())
    code = (CODE_EXAMPLE / "data" / "code.jsonl").read_text().splitlines()[:120]
    (folder / "code.jsonl").write_text("\n".join(code) + "\n")
    raw |= {"name": name, "cpt": {"replay": replay}}
    raw["data"] |= {
        "train": str(folder / "code.jsonl"),
        "general": str(CODE_EXAMPLE / "data" / "general.jsonl"),
    }
    raw["train"] |= {"epochs": epochs, "learning_rate": lr, "max_length": 64, "batch_size": 8}
    path = folder / f"{name}-{replay}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.integration
def test_harmful_cpt_is_blocked_and_replayed_cpt_is_promoted(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import models

    harmful = adapt_pipeline(str(_cpt_spec(tmp_path, "e2e-cpt", 0.0, 0.01, 3)))
    assert harmful["method"] == "cpt" and harmful["train"]["replay_tokens"] == 0
    # it fits the domain far better than the base model ...
    assert harmful["metrics"]["perplexity"] < harmful["baseline"]["perplexity"] / 2
    # ... but forgot general English, so the gate refuses it
    report = harmful["forgetting"]
    assert report["measured"] and not report["passed"]
    assert report["perplexity_increase"] > 0.5
    assert report["general_accuracy_after"] < report["general_accuracy_before"]
    assert not harmful["promoted"] and harmful["champion_version"] is None
    assert "exceeds the allowed +10.0%" in harmful["gate"][-1]
    assert models.champion_version("e2e-cpt") is None

    gentle = adapt_pipeline(str(_cpt_spec(tmp_path, "e2e-cpt", 0.5, 0.001, 1)))
    share = gentle["train"]["replay_share"]
    assert 0.5 <= share < 0.6
    assert gentle["forgetting"]["passed"]
    assert gentle["metrics"]["perplexity"] < gentle["baseline"]["perplexity"]
    assert gentle["promoted"] and gentle["champion_version"] == gentle["model_version"] == "2"


def _plan_spec(folder: Path) -> Path:
    import unicodedata

    raw = yaml.safe_load((REPO / "examples" / "unicode-lowercase" / "spec.yaml").read_text())
    pairs = (REPO / "examples" / "unicode-lowercase" / "data" / "pairs.jsonl").read_text()
    (folder / "pairs.jsonl").write_text("\n".join(pairs.splitlines()[:120]) + "\n")
    names = [unicodedata.name(chr(c), "") for c in range(0x100, 0x600)]
    names = [n for n in names if n]
    corpus = [{"text": "\n".join(names[i : i + 40])} for i in range(0, len(names), 40)]
    (folder / "names.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    raw |= {"name": "e2e-plan", "method": "lora"}
    raw["data"] |= {
        "train": str(folder / "pairs.jsonl"),
        "general": str(CODE_EXAMPLE / "data" / "general.jsonl"),
    }
    raw["cpt"] = {"corpus": str(folder / "names.jsonl"), "replay": 0.25, "epochs": 1}
    raw["forgetting"] = {"max_increase": 5.0}
    raw["train"] |= {"epochs": 2}
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cpt_corpus_is_for_sft_tasks_and_needs_general_text(tmp_path: Path) -> None:
    raw = yaml.safe_load(_plan_spec(tmp_path).read_text())
    assert parse_spec(raw, tmp_path).cpt.corpus == (tmp_path / "names.jsonl").resolve()
    raw["data"].pop("general")
    with pytest.raises(SpecError, match="the CPT stage replays general text"):
        parse_spec(raw, tmp_path)
    code = yaml.safe_load((CODE_EXAMPLE / "spec.yaml").read_text())
    code["cpt"] = {"corpus": str(tmp_path / "names.jsonl")}
    with pytest.raises(SpecError, match="task 'language-modeling' cannot use it"):
        parse_spec(code, CODE_EXAMPLE)
    raw["cpt"]["corpus"] = "missing.jsonl"
    with pytest.raises(SpecError, match="cpt.corpus: not found"):
        parse_spec(raw, tmp_path)


@pytest.mark.integration
def test_sequential_plan_cpt_then_lora_makes_a_self_contained_package(tmp_path: Path) -> None:
    import shutil

    from flows.pipeline import adapt_pipeline
    from registry import models, tracking
    from runtime.generate import Generator

    result = adapt_pipeline(str(_plan_spec(tmp_path)))
    package = Path(result["train"]["package_dir"])
    assert result["method"] == "lora" and (package / "adapter").is_dir()
    assert (package / "base" / "model.safetensors").is_file()  # the CPT weights travel along
    run = tracking.client().get_run(result["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["cpt.domain_tokens"] > 0 and 0.25 <= metrics["cpt.replay_share"] < 0.35
    kept, dropped, quarantined = (metrics[f"cpt.{k}"] for k in ("kept", "dropped", "quarantined"))
    assert metrics["cpt.input"] == kept + dropped + quarantined and kept > 0
    assert run.data.tags["adaptflow.cpt_data_hash"]
    assert result["forgetting"]["measured"] and "forgetting.perplexity_increase" in metrics

    # the registered package loads without the CPT stage's work folder
    shutil.rmtree(package.parent / "cpt")
    answers = [
        json.loads(line)
        for line in (package.parent / "eval" / "eval_answers.jsonl").read_text().splitlines()[:4]
    ]
    served = models.load_model(f"models:/e2e-plan/{result['model_version']}")
    predicted = served.predict([a["text"] for a in answers])
    assert list(predicted) == [a["prediction"] for a in answers]
    again = Generator.from_package(package).predict([a["text"] for a in answers])
    assert again == [a["prediction"] for a in answers]
