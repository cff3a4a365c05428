"""The advisor's table: which methods fit which use case, with reasons and stated-formula costs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from adaptflow.advisor import (
    CPT_MIN_CORPUS_TOKENS,
    HARDWARE,
    METHODS,
    PRUNE_CALIBRATION,
    UNSTATED_BUDGET_HOURS,
    Facts,
    advise,
    estimate,
)
from adaptflow.errors import SpecError
from adaptflow.methods import resolve_method, runnable_methods

REPO = Path(__file__).resolve().parents[1]
MINILM = {"params": 22_713_216, "layers": 6, "hidden": 384, "heads": 12}
LLAMA_1B = {"params": 1_235_814_400, "layers": 16, "hidden": 2048, "heads": 32}


def _facts(**overrides) -> Facts:
    base = {"task": "classification", "family": "encoder", **MINILM}
    return Facts(**(base | overrides))


def _by_method(advice) -> dict:
    return {item.method: item for item in advice.ranking}


def test_dynamic_external_knowledge_puts_rag_first() -> None:
    facts = _facts(
        task="qa",
        family="decoder",
        **LLAMA_1B,
        labelled=300,
        labelled_tokens=60_000,
        mean_tokens=200,
        has_knowledge=True,
        knowledge_tokens=2_000_000,
        external_knowledge=True,
        knowledge_changes_often=True,
        hallucination_tolerance="low",
        hardware="a10",
        gpu_hours=10,
    )
    advice = advise(facts)
    assert advice.recommended == "rag"
    assert advice.ranking[0].method == "rag"
    rag = _by_method(advice)["rag"]
    assert any("external knowledge" in r for r in rag.reasons)
    assert any("changes often" in r for r in rag.reasons)
    # fine-tuning is still possible but penalised: it would go stale
    lora = _by_method(advice)["lora"]
    assert lora.suitable and any("stale" in r for r in lora.reasons)
    assert rag.estimate.inference_tokens_per_query == pytest.approx(200 + 5 * 256 + 64)


def test_rag_without_a_corpus_is_unsuitable_and_says_why() -> None:
    advice = advise(_facts(task="qa", family="decoder", labelled=300, external_knowledge=True))
    rag = _by_method(advice)["rag"]
    assert not rag.suitable
    assert "no knowledge corpus" in rag.reasons[0]


def test_labelled_data_and_custom_behaviour_means_icl_or_peft_never_cpt() -> None:
    facts = _facts(labelled=780, labelled_tokens=6_073, mean_tokens=7.8, custom_behavior=True)
    advice = advise(facts, runnable=("icl", "lora", "dora", "ia3"))
    ranking = _by_method(advice)
    assert advice.recommended in ("icl", "lora", "dora", "ia3")
    assert advice.recommended == "lora"  # custom behaviour is what fine-tuning teaches
    assert ranking["icl"].suitable
    assert not ranking["cpt"].suitable
    assert not ranking["pretrain"].suitable
    assert any("needs.new_domain_language is false" in r for r in ranking["cpt"].reasons)
    assert any("20 per parameter" in r for r in ranking["pretrain"].reasons)
    assert advice.ladder()[0].method == "icl"
    assert [a.method for a in advice.ladder()] == ["icl", "lora"]  # one rung per family


def test_new_language_with_small_corpus_and_budget_still_rules_out_cpt() -> None:
    facts = _facts(
        task="instruction",
        family="decoder",
        **LLAMA_1B,
        labelled=2_000,
        labelled_tokens=400_000,
        mean_tokens=200,
        corpus_tokens=5_000_000,
        new_domain_language=True,
        gpu_hours=2,
        hardware="t4",
    )
    ranking = _by_method(advise(facts))
    assert not ranking["cpt"].suitable
    assert any("continued pre-training needs at least" in r for r in ranking["cpt"].reasons)
    assert not ranking["pretrain"].suitable
    # a 1.2B model does not fit full AdamW fine-tuning in a T4's 16 GB
    assert not ranking["full"].suitable
    assert any("GB at peak; t4 has 16 GB" in r for r in ranking["full"].reasons)


def test_new_language_large_corpus_and_large_budget_makes_cpt_suitable() -> None:
    facts = _facts(
        task="language-modeling",
        family="decoder",
        **LLAMA_1B,
        corpus_tokens=500_000_000,
        new_domain_language=True,
        gpu_hours=500,
        hardware="h100",
    )
    advice = advise(facts)
    cpt = _by_method(advice)["cpt"]
    assert cpt.suitable, cpt.reasons
    assert advice.recommended == "cpt"
    n, d = LLAMA_1B["params"], 500_000_000 * 1.25  # corpus, replay 20% of all tokens
    assert cpt.estimate.train_flops == pytest.approx(6 * n * d)
    h100 = HARDWARE["h100"]
    assert cpt.estimate.train_hours == pytest.approx(
        6 * n * d / (h100.peak_flops * h100.utilisation) / 3600
    )
    assert cpt.estimate.train_hours < 500
    # the same corpus on a tiny budget: over budget, not suitable
    poor = _by_method(advise(replace(facts, gpu_hours=0.5)))["cpt"]
    assert not poor.suitable
    assert any("the budget is 0.500 h" in r for r in poor.reasons)
    assert not _by_method(advice)["icl"].suitable  # nothing to show for language modelling


@pytest.mark.parametrize(
    "facts",
    [
        _facts(labelled=780, labelled_tokens=6_073, mean_tokens=7.8),
        _facts(labelled=12, labelled_tokens=100, mean_tokens=8.3),
        _facts(task="qa", family="decoder", **LLAMA_1B, has_knowledge=True, knowledge_tokens=1e6),
        _facts(task="language-modeling", family="decoder", corpus_tokens=CPT_MIN_CORPUS_TOKENS),
        _facts(params=None, layers=0, hidden=0, heads=0, labelled=500, labelled_tokens=5_000),
    ],
)
def test_every_method_has_reasons_and_an_estimate(facts: Facts) -> None:
    advice = advise(facts)
    assert sorted(a.method for a in advice.ranking) == sorted(METHODS)
    for item in advice.ranking:
        assert item.reasons, item.method
        entry = item.as_dict()
        assert set(entry) >= {"method", "suitable", "reasons", "estimate"}
        est = entry["estimate"]
        assert {"train_gpu_hours", "peak_memory_gb", "inference_tokens_per_query"} <= set(est)
        if facts.params is None:
            assert est["train_gpu_hours"] is None
        else:
            assert est["train_gpu_hours"] >= 0 and est["peak_memory_gb"] > 0
    # suitable methods come first
    verdicts = [a.suitable for a in advice.ranking]
    assert verdicts == sorted(verdicts, reverse=True)


def test_too_few_labelled_examples_rules_out_fine_tuning() -> None:
    ranking = _by_method(advise(_facts(labelled=12, labelled_tokens=100, mean_tokens=8.3)))
    assert ranking["icl"].suitable
    for method in ("lora", "ia3", "full", "freeze"):
        assert not ranking[method].suitable
        assert "12 labelled examples; fine-tuning needs at least 100" in ranking[method].reasons


def test_estimates_follow_the_stated_formulas() -> None:
    facts = _facts(labelled=1_000, labelled_tokens=20_000, epochs=3, batch_size=8, max_length=64)
    n, d = MINILM["params"], 20_000 * 3
    lora, full = estimate("lora", facts), estimate("full", facts)
    assert lora.train_flops == pytest.approx(4 * n * d)
    assert full.train_flops == pytest.approx(6 * n * d)
    cpu = HARDWARE["cpu"]
    assert lora.train_hours == pytest.approx(4 * n * d / (cpu.peak_flops * cpu.utilisation) / 3600)
    # activations s*b*h*(34 + 5*a*s/h) per layer
    activations = 6 * 64 * 8 * 384 * (34 + 5 * 12 * 64 / 384)
    assert full.peak_memory_gb == pytest.approx((16 * n + activations) / 1e9)
    adapter = 6 * 2 * 8 * 2 * 384  # layers x (q, v) x r x (d_in + d_out)
    assert lora.trainable_params == adapter
    assert lora.peak_memory_gb == pytest.approx((2 * n + 16 * adapter + activations) / 1e9)
    assert facts.budget_hours == UNSTATED_BUDGET_HOURS


def test_auto_runs_the_best_runnable_suitable_method() -> None:
    facts = _facts(labelled=780, labelled_tokens=6_073, mean_tokens=7.8)
    advice = advise(facts, runnable=("icl", "lora")).as_dict()
    assert advice["recommended"] == "icl"  # no custom behaviour asked for: cheapest first
    assert resolve_method("classification", "auto", advice) == "icl"
    assert resolve_method("classification", "lora", advice) == "lora"
    nothing = advise(_facts(labelled=0), runnable=("lora",)).as_dict()
    with pytest.raises(SpecError, match="no suitable method this version can run"):
        resolve_method("classification", "auto", nothing)
    with pytest.raises(SpecError, match="not available for task 'classification'"):
        resolve_method("classification", "prefix", advice)


def test_facts_are_measured_from_the_real_data_and_model() -> None:
    from adaptflow.spec import load_spec
    from tasks.advise import spec_facts

    facts = spec_facts(load_spec(REPO / "examples" / "unicode-categories" / "spec.yaml"))
    assert facts.labelled == 780
    assert facts.params == 22_713_216  # all-MiniLM-L6-v2, counted from its config
    assert (facts.layers, facts.hidden, facts.heads) == (6, 384, 12)
    assert facts.family == "encoder"
    assert 780 * 5 < facts.labelled_tokens < 780 * 20  # short Unicode names, with [CLS]/[SEP]
    assert facts.mean_tokens == pytest.approx(facts.labelled_tokens / 780, abs=0.1)
    assert facts.custom_behavior is True and facts.hardware == "cpu"


def test_the_advisor_assumes_the_spec_defaults_it_estimates() -> None:
    """One value each: the advisor's replay share and virtual tokens are the spec's defaults."""
    from adaptflow import advisor
    from adaptflow.spec import CptSpec, TrainSpec
    from tasks.train.peft import Hyper

    assert advisor.CPT_REPLAY == CptSpec().replay == 0.2
    assert advisor.VIRTUAL_TOKENS == TrainSpec().virtual_tokens == Hyper().virtual_tokens == 16
    # replay is a share of all training tokens: 1e8 domain tokens at 20% make 1.25e8 in all
    assert (
        advisor._train_tokens(
            "cpt", advisor.Facts("language-modeling", "decoder", None, corpus_tokens=100_000_000)
        )
        == 1.25e8
    )
    assert "mix in 20% general text" in " ".join(r.reason for r in advisor.RULES)
    train = TrainSpec().model_dump()
    assert {k: v for k, v in vars(Hyper()).items() if k in train} == train


# --- preference tuning and RL ----------------------------------------------------------------

_ALIGNMENT = {
    "task": "instruction",
    "family": "decoder",
    **LLAMA_1B,
    "labelled": 2_000,
    "labelled_tokens": 800_000,
    "mean_tokens": 400,
    "hardware": "a100",
    "gpu_hours": 10,
}


def test_preference_pairs_recommend_dpo_and_quote_the_count() -> None:
    advice = advise(_facts(**_ALIGNMENT, pairs=2_000), runnable_methods("instruction"))
    by = _by_method(advice)
    assert advice.recommended == "dpo"
    assert any("2,000 preference pairs" in r for r in by["dpo"].reasons)
    assert not by["kto"].suitable and any("labelled good or bad" in r for r in by["kto"].reasons)
    assert not by["grpo"].suitable and any("no rewards declared" in r for r in by["grpo"].reasons)
    # one rung per family: the preference rung comes after the SFT rungs it costs more than
    rungs = [a.method for a in advice.ladder()]
    assert "dpo" in rungs and rungs.index("dpo") > rungs.index("lora")


def test_thumbs_only_recommend_kto_and_block_the_paired_methods() -> None:
    advice = advise(_facts(**_ALIGNMENT, thumbs=2_000))
    by = _by_method(advice)
    assert advice.recommended == "kto"
    assert any("2,000 answers marked good or bad" in r for r in by["kto"].reasons)
    for method in ("dpo", "orpo", "simpo"):
        assert not by[method].suitable


def test_rl_needs_rewards_and_a_fine_tuned_start() -> None:
    untuned = _by_method(advise(_facts(**_ALIGNMENT, rewards=1)))["grpo"]
    assert not untuned.suitable
    assert any("RL needs SFT'd behaviour" in r for r in untuned.reasons)
    tuned = advise(_facts(**_ALIGNMENT, rewards=2, tuned_base=True, num_generations=8))
    assert tuned.recommended == "grpo"
    assert any(
        "2 reward(s)" in r and "samples 8 per prompt" in r
        for r in _by_method(tuned)["grpo"].reasons
    )


def test_the_alignment_cost_formulas() -> None:
    facts = _facts(**_ALIGNMENT, pairs=2_000, epochs=1.0, max_new_tokens=64, num_generations=4)
    n, d = LLAMA_1B["params"], 800_000
    assert estimate("dpo", facts).train_flops == pytest.approx(6 * n * d)  # policy + reference
    assert estimate("orpo", facts).train_flops == pytest.approx(4 * n * d)  # no reference
    rl = 4 * (800_000 + 2_000 * 64)  # G x (prompt and reference tokens + sampled answers)
    assert estimate("grpo", facts).train_flops == pytest.approx(8 * n * rl)
    # a reward model: its forward and backward on both answers, no reference
    assert estimate("reward", facts).train_flops == pytest.approx(4 * n * d)
    assert METHODS[-8:] == ("dpo", "orpo", "simpo", "kto", "grpo", "reward", "prune", "distill")


def test_prune_needs_a_teacher_and_is_never_picked_by_auto_or_the_ladder() -> None:
    without = _by_method(advise(_facts(labelled=500, labelled_tokens=10_000)))["prune"]
    assert not without.suitable
    assert any("no trained model to compress" in r for r in without.reasons)
    facts = _facts(labelled=500, labelled_tokens=10_000, teacher=True, epochs=2.0)
    advice = advise(facts, runnable=("icl", "lora", "prune"))
    assert _by_method(advice)["prune"].suitable and advice.recommended_runnable != "prune"
    assert "prune" not in [a.method for a in advice.ladder()]
    # a half-size student trained in full (6·N/2·D) plus the teacher's logits (2·N·D)
    cost = estimate("prune", facts)
    assert cost.train_flops == pytest.approx(5 * MINILM["params"] * 10_000 * 2.0)
    assert cost.formula == "6·N_student·D + 2·N·D"


def test_pairs_make_a_reward_model_suitable_but_not_first() -> None:
    advice = advise(_facts(**_ALIGNMENT, pairs=2_000))
    reward = _by_method(advice)["reward"]
    assert reward.suitable and advice.recommended == "dpo"
    assert any("2,000 preference pairs teach a reward model" in r for r in reward.reasons)
    assert not _by_method(advise(_facts(**_ALIGNMENT)))["reward"].suitable  # no pairs


# --- serving cost: the compression rung (issue 22) -------------------------------------------

_CLASSIFIER = {"labelled": 500, "labelled_tokens": 10_000, "mean_tokens": 20.0, "epochs": 2.0}


def _activations(f: Facts) -> float:
    """``s·b·h·(34 + 5·a·s/h)`` bytes per layer (the module docstring's formula)."""
    s, b, h, a = f.max_length, f.batch_size, f.hidden, f.heads
    return f.layers * s * b * h * (34 + 5 * a * s / h)


def test_low_latency_adds_a_compression_rung_after_the_quality_rungs() -> None:
    facts = _facts(**_CLASSIFIER, low_latency=True, name="triage")
    advice = advise(facts, runnable_methods("classification", "encoder"))
    by = _by_method(advice)
    # prune is judged against the champion the quality rungs register: suitable, but later
    assert by["prune"].suitable and by["prune"].then
    assert any("prunes the champion" in r for r in by["prune"].reasons)
    suitable = [a for a in advice.ranking if a.suitable]
    assert suitable[-1].method == "prune"  # after every quality method
    # distill would train base_model, the champion's own size: not offered, and says why
    assert not by["distill"].suitable and not by["distill"].then
    assert any("base_model's own size" in r for r in by["distill"].reasons)
    # auto and the ladder are what they were: compression is never one of their rungs
    assert advice.recommended == advice.recommended_runnable == "icl"
    assert [a.method for a in advice.ladder()] == ["icl", "lora"]
    rung = advice.compression_rung()
    assert rung is not None and rung["method"] == "prune" and rung["after"] == "lora"
    assert rung["spec"] == {
        "method": "prune",
        "compress": {
            "teacher": "models:/triage@champion",
            "prune": {"ratio": 0.5},
            "quantize": "int8",
        },
    }
    assert yaml.safe_load(rung["spec_lines"]) == rung["spec"]
    assert "comes after the quality rungs (icl → lora)" in rung["reasons"][0]
    assert any("nothing to prune" in r for r in rung["reasons"])  # the champion may be icl
    # the estimate, from its stated formula: 6·N_student·D + 2·N·D, N_student = N/2, D = 10k·2
    n, d = MINILM["params"], 10_000 * 2.0
    flops = 6 * (n * 0.5) * d + 2 * n * d
    cpu = HARDWARE["cpu"]
    est = rung["estimate"]
    assert est["formula"] == "6·N_student·D + 2·N·D"
    assert est["train_flops"] == pytest.approx(flops) == pytest.approx(2.27132160e12)
    hours = flops / (cpu.peak_flops * cpu.utilisation) / 3600
    assert est["train_gpu_hours"] == pytest.approx(hours)
    memory = 2 * n + 16 * n * 0.5 + _activations(facts)  # teacher + student in full + activations
    assert est["peak_memory_gb"] == pytest.approx(memory / 1e9)
    assert est["trainable_params"] == n // 2
    out = advice.as_dict()
    assert out["then"] == rung and out["recommended"] == "icl" and out["ladder"] == ["icl", "lora"]
    assert {"method", "suitable", "reasons", "estimate", "then"} <= set(out["ranking"][0])


def test_a_latency_budget_also_adds_the_rung_and_says_how_the_gate_holds_it() -> None:
    facts = _facts(**_CLASSIFIER, latency_budget_ms=5.0)
    rung = advise(facts, runnable_methods("classification", "encoder")).compression_rung()
    assert rung is not None and rung["spec"]["compress"]["teacher"] == "models:/NAME@champion"
    assert "serving cost matters (needs.latency_budget_ms: 5)" in rung["reasons"][0]
    assert any("compress.min_speedup: L / 5" in r for r in rung["reasons"])


def test_without_a_serving_need_compression_stays_out_as_before() -> None:
    runnable = runnable_methods("classification", "encoder")
    plain = advise(_facts(**_CLASSIFIER), runnable)
    fast = advise(_facts(**_CLASSIFIER, low_latency=True), runnable)
    assert plain.compression_rung() is None and plain.as_dict()["then"] is None
    assert not any(a.then for a in plain.ranking)
    by = _by_method(plain)
    for method in ("prune", "distill"):
        assert not by[method].suitable
        assert any("compress.teacher" in r for r in by[method].reasons)
    assert not plain.facts.champion_teacher and fast.facts.champion_teacher
    # the rung changes nothing else: same picks, same order of every other method
    assert (plain.recommended, plain.recommended_runnable) == (fast.recommended, "icl")
    assert [a.method for a in plain.ladder()] == [a.method for a in fast.ladder()]
    others = [a.method for a in plain.ranking if a.method != "prune"]
    assert others == [a.method for a in fast.ranking if a.method != "prune"]
    # too few examples to train a champion: nothing to compress, and the notes say so
    few = advise(_facts(labelled=12, labelled_tokens=100, low_latency=True), runnable)
    assert few.compression_rung() is None and not _by_method(few)["prune"].suitable
    assert any("no compression rung" in note for note in few.notes)


def test_a_decoder_generator_gets_the_prune_rung_an_encoder_decoder_a_note_why() -> None:
    advice = advise(_facts(**_ALIGNMENT, low_latency=True), runnable_methods("instruction"))
    rung = advice.compression_rung()
    assert rung is not None and rung["method"] == "prune"
    assert _by_method(advice)["prune"].suitable and _by_method(advice)["prune"].then
    seq2seq = _facts(**_ALIGNMENT | {"family": "encoder-decoder"}, low_latency=True)
    advice = advise(seq2seq, runnable_methods("instruction"))
    assert advice.compression_rung() is None
    assert not _by_method(advice)["prune"].suitable
    assert any(
        "prune: prunes encoder classifiers and decoder generators" in n and "method: distill" in n
        for n in advice.notes
    )


def test_quantize_only_prune_trains_nothing() -> None:
    facts = _facts(**_CLASSIFIER, teacher=True, prune_blocks=0, quantize="int8")
    cost = estimate("prune", facts)
    n = MINILM["params"]
    # only the teacher's Block Influence forward over the calibration texts: no 6·N·D term
    assert cost.train_flops == pytest.approx(2 * n * 256 * 20.0)
    assert cost.trainable_params == 0
    assert "nothing trains" in cost.formula and cost.peak_memory_gb == pytest.approx(2 * n / 1e9)
    assert (cost.train_flops or 0) < 2 * n * 10_000  # less than one forward pass over the data
    prune = _by_method(advise(facts))["prune"]
    assert prune.suitable and any("itself in int8" in r for r in prune.reasons)
    # a block count sets the share: 2 of 6 blocks go
    two = estimate("prune", replace(facts, prune_blocks=2))
    student, d = n * (1 - 2 / 6), 10_000 * 2.0
    assert two.train_flops == pytest.approx(6 * student * d + 2 * n * d)
    from tasks.train.compress import CALIBRATION

    assert PRUNE_CALIBRATION == CALIBRATION


BERT_BASE = 109_482_240


def test_distill_estimates_follow_their_stated_formulas() -> None:
    n, teacher = MINILM["params"], BERT_BASE
    # classification: the teacher's soft labels once (2·N_teacher·D), the student in full
    facts = _facts(**_CLASSIFIER, teacher=True, teacher_params=teacher, unlabelled_tokens=5_000)
    cost = estimate("distill", facts)
    d = 10_000 + 5_000
    assert cost.train_flops == pytest.approx(2 * teacher * d + 6 * n * d * 2.0)
    assert cost.formula.startswith("2·N_teacher·D + 6·N·D·epochs")
    assert cost.trainable_params == n
    assert cost.peak_memory_gb == pytest.approx((2 * teacher + 16 * n + _activations(facts)) / 1e9)
    # generative, sequence: the teacher answers every prompt once; a LoRA student fine-tunes
    gen = {
        "task": "instruction",
        "family": "decoder",
        **LLAMA_1B,
        "labelled": 100,
        "labelled_tokens": 20_000,
        "unlabelled": 50,
        "unlabelled_tokens": 5_000,
        "max_new_tokens": 64,
        "epochs": 1.0,
        "teacher": True,
        "teacher_params": 8_030_261_248,
        "student_method": "lora",
    }
    student, big = LLAMA_1B["params"], 8_030_261_248
    d_gen = 25_000 + 150 * 64
    sequence = estimate("distill", _facts(**gen))
    assert sequence.train_flops == pytest.approx(2 * big * d_gen + 4 * student * d_gen)
    assert "D_gen = D + prompts·max_new_tokens" in sequence.formula
    # logit (on-policy): the student samples, the teacher scores, the student learns
    logit = estimate("distill", _facts(**gen, distill_objective="logit"))
    sampled = 2 * student * 150 * 64
    assert logit.train_flops == pytest.approx(sampled + 2 * big * d_gen + 4 * student * d_gen)
    # a teacher of unknown size is assumed twice the student, and the formula says so
    unread = estimate("distill", _facts(**(gen | {"teacher_params": None})))
    assert unread.train_flops == pytest.approx(2 * 2 * student * d_gen + 4 * student * d_gen)
    assert "N_teacher = 2·N assumed" in unread.formula


def test_distill_suits_a_larger_teacher_when_serving_cost_matters() -> None:
    runnable = runnable_methods("classification", "encoder")
    none = _by_method(advise(_facts(**_CLASSIFIER), runnable))["distill"]
    assert not none.suitable and any("no teacher to imitate" in r for r in none.reasons)
    facts = _facts(**_CLASSIFIER, teacher=True, teacher_params=BERT_BASE, low_latency=True)
    advice = advise(facts, runnable)
    distill = _by_method(advice)["distill"]
    assert distill.suitable and not distill.then  # the teacher is named: runnable by name now
    assert any("serving cost matters (needs.low_latency)" in r for r in distill.reasons)
    assert advice.recommended_runnable != "distill" and advice.compression_rung() is None
    assert "distill" not in [a.method for a in advice.ladder()]
    # a teacher no larger than the student: serving cost would not drop
    same = _by_method(advise(replace(facts, teacher_params=MINILM["params"]), runnable))
    assert not same["distill"].suitable
    assert any("not smaller than the teacher" in r for r in same["distill"].reasons)
    # no distill for tasks without a classifier or generator
    lm = _facts(task="language-modeling", family="decoder", teacher=True)
    assert not _by_method(advise(lm))["distill"].suitable


def test_recommend_json_shows_the_compression_rung(tmp_path: Path) -> None:
    from helpers import run_cli

    from adaptflow.spec import load_spec

    example = REPO / "examples" / "unicode-categories"
    raw = yaml.safe_load((example / "spec.yaml").read_text())
    raw["data"]["train"] = str(example / raw["data"]["train"])
    raw["needs"]["low_latency"] = True
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    result = run_cli("recommend", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    advice = json.loads(result.stdout)
    assert advice["recommended"] == "lora" and advice["ladder"] == ["icl", "lora"]  # as before
    assert advice["facts"]["low_latency"] is True
    rung = advice["then"]
    assert rung["method"] == "prune" and rung["after"] == "lora"
    by = {item["method"]: item for item in advice["ranking"]}
    assert by["prune"]["suitable"] and by["prune"]["then"]
    assert {"method", "suitable", "reasons", "estimate"} <= set(by["prune"])
    facts = advice["facts"]
    n, d = facts["params"], facts["labelled_tokens"] * facts["epochs"]
    assert rung["estimate"]["train_flops"] == pytest.approx(6 * (n / 2) * d + 2 * n * d)
    teacher = rung["spec"]["compress"]["teacher"]
    assert teacher.startswith("models:/") and teacher.endswith("@champion")
    # the spec lines make a valid spec that runs the rung
    (tmp_path / "prune.yaml").write_text(yaml.safe_dump(raw | yaml.safe_load(rung["spec_lines"])))
    pruned = load_spec(tmp_path / "prune.yaml")
    assert pruned.method == "prune" and pruned.compress.quantize == "int8"
    assert pruned.compress.prune.ratio == 0.5
