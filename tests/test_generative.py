"""Generative recipes on the tiny models built here: methods, loss masks, packing, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, write_jsonl

from adaptflow.catalogue import resolve_base_model
from adaptflow.errors import SpecError
from adaptflow.tiny import RECIPES
from runtime.loading import load_base
from runtime.prompts import IGNORE, Encoded, collator, encode_seq2seq, encode_sft, render_prompt
from tasks.train.lm import pack_rows, training_set
from tasks.train.peft import Hyper
from tasks.train.sft import setup

# tiny-gpt: vocab 4096, width 128, 4 blocks, 512 positions, tied head. One GPT-2 block:
# ln_1 256 + c_attn 128*384+384 + attn c_proj 128*128+128 + ln_2 256 + c_fc 128*512+512
# + mlp c_proj 512*128+128 = 198,272.
GPT_BLOCK = (
    256 + (128 * 384 + 384) + (128 * 128 + 128) + 256 + (128 * 512 + 512) + (512 * 128 + 128)
)
GPT_TOTAL = 4096 * 128 + 512 * 128 + 4 * GPT_BLOCK + 256  # + ln_f
GPT_EXPECTED = {
    # LoRA r=8 on c_attn (128 -> 384) in each of 4 blocks: A 8x128 + B 384x8
    "lora": 4 * (8 * 128 + 384 * 8),
    # DoRA adds a magnitude per output feature
    "dora": 4 * (8 * 128 + 384 * 8 + 384),
    # IA3 scales c_attn's 384 outputs and the MLP c_proj's 512 inputs
    "ia3": 4 * (384 + 512),
    # prefix: 16 virtual tokens x 4 layers x (key + value) x 128
    "prefix": 16 * 4 * 2 * 128,
    # prompt tuning: 16 virtual token embeddings
    "prompt-tuning": 16 * 128,
    # p-tuning: 16 embeddings + an MLP encoder of three 128x128 linear layers
    "p-tuning": 16 * 128 + 3 * (128 * 128 + 128),
    # freeze: top 2 blocks + final norm (the tied head stays frozen with the embeddings)
    "freeze": 2 * GPT_BLOCK + 256,
    "full": GPT_TOTAL,
}


@pytest.mark.parametrize("method", sorted(GPT_EXPECTED))
def test_trainable_parameter_counts_on_tiny_gpt(method: str) -> None:
    from tasks.train.methods import trainable_parameters

    model, _, family = setup("tiny-gpt", method, Hyper())
    trainable, total = trainable_parameters(model)
    assert family == "decoder"
    assert trainable == GPT_EXPECTED[method]
    # peft counts the virtual-token and adapter weights in the total as well
    added = 0 if method in ("freeze", "full") else trainable
    assert total == GPT_TOTAL + added


@pytest.mark.slow  # ~50 s; tests/test_architectures.py counts every method on a tiny T5 and BART
def test_trainable_parameter_counts_on_tiny_t5() -> None:
    from tasks.train.methods import trainable_parameters

    # LoRA on q and v of 2 encoder self-attentions and 2 decoder self- + cross-attentions:
    # 12 projections of 128 -> 128, each A 8x128 + B 128x8.
    model, _, family = setup("tiny-t5", "lora", Hyper())
    assert family == "encoder-decoder"
    assert trainable_parameters(model)[0] == 12 * (8 * 128 + 128 * 8)
    # prompt tuning on an encoder-decoder learns virtual tokens for the encoder and the decoder
    model, _, _ = setup("tiny-t5", "prompt-tuning", Hyper(virtual_tokens=10))
    assert trainable_parameters(model)[0] == 2 * 10 * 128


def test_tiny_models_are_safetensors_with_fixed_special_tokens() -> None:
    from transformers import AutoTokenizer

    folder = Path(resolve_base_model("tiny-gpt"))
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    record = json.loads((folder / "adaptflow_build.json").read_text())
    assert record["parameters"] == GPT_TOTAL
    assert record["loss_last"] < record["loss_first"] - 2  # pre-training did learn something
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert len(tokenizer) == RECIPES["tiny-gpt"].vocab_size
    assert render_prompt(tokenizer, "hi") == "<|user|>\nhi\n<|assistant|>\n"


def test_loss_is_only_on_answer_tokens() -> None:
    model, tokenizer, _ = setup("tiny-gpt", "full", Hyper())
    model.eval()
    item = encode_sft(tokenizer, "Name the lowercase form of: X", "LATIN SMALL LETTER X", 64)
    prompt = tokenizer(render_prompt(tokenizer, "Name the lowercase form of: X"))["input_ids"]
    answer = tokenizer("LATIN SMALL LETTER X")["input_ids"] + [tokenizer.eos_token_id]
    assert item.input_ids == prompt + answer
    assert item.labels == [IGNORE] * len(prompt) + answer
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logits = model(ids).logits[0]
        loss = model(ids, labels=torch.tensor([item.labels])).loss
    # the mean cross-entropy of predicting each answer token from the tokens before it
    start = len(prompt)
    manual = torch.nn.functional.cross_entropy(
        logits[start - 1 : -1], torch.tensor(item.input_ids[start:])
    )
    assert float(loss) == pytest.approx(float(manual), abs=1e-5)
    # changing a prompt token's label to its id would change the loss: the mask is what counts
    unmasked = model(ids, labels=ids).loss
    assert abs(float(unmasked) - float(loss)) > 1e-3


def test_truncation_keeps_the_answer_and_the_end_of_the_prompt() -> None:
    _, tokenizer, _ = setup("tiny-gpt", "full", Hyper())
    long_prompt = " ".join(f"word{i}" for i in range(200)) + " QUESTION"
    item = encode_sft(tokenizer, long_prompt, "the answer", 40)
    assert item.truncated and len(item.input_ids) == 40
    answer = tokenizer("the answer")["input_ids"] + [tokenizer.eos_token_id]
    assert item.input_ids[-len(answer) :] == answer
    assert item.labels[-len(answer) :] == answer
    assert tokenizer.decode(item.input_ids[: -len(answer)]).endswith("<|assistant|>\n")
    source = encode_seq2seq(tokenizer, "short text", "target", 40)
    assert not source.truncated and source.labels[-1] == tokenizer.eos_token_id


def test_pack_rows_first_fit_longest_first() -> None:
    items = [Encoded([1] * n, [1] * n) for n in (5, 9, 3, 7, 2, 6)]
    rows = pack_rows(items, 12)
    assert [[len(e.input_ids) for e in row] for row in rows] == [[9, 3], [7, 5], [6, 2]]
    assert sorted(len(e.input_ids) for row in rows for e in row) == [2, 3, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="13 tokens"):
        pack_rows([Encoded([1] * 13, [1] * 13)], 12)


def test_packed_examples_do_not_attend_to_each_other() -> None:
    model, tokenizer, _ = setup("tiny-gpt", "full", Hyper())
    model.eval()
    pairs = [("first question", "one"), ("a second, longer question here", "two words")]
    pairs.append(("third", "a much longer answer than the others, so it gets its own row"))
    items = [encode_sft(tokenizer, q, a, 64) for q, a in pairs]
    lengths = [len(e.input_ids) for e in items]
    capacity = lengths[0] + lengths[1]  # the first two share a row, the third is alone
    assert lengths[2] > max(lengths[:2]) and lengths[2] <= capacity < lengths[2] + min(lengths)
    rows = training_set(items, packing=True, capacity=capacity)
    batch = collator(tokenizer, "decoder", packing=True)([rows[i] for i in range(len(rows))])
    assert batch["input_ids"].shape == (2, capacity) and "attention_mask" not in batch
    by_row = {len(row): row for row in rows.rows}
    assert [len(e.input_ids) for e in by_row[2]] == [lengths[1], lengths[0]]  # longest first
    second, first = lengths[1], lengths[0]
    shared = 0 if len(rows.rows[0]) == 2 else 1
    assert batch["position_ids"][shared].tolist() == list(range(second)) + list(range(first))
    # the next example's first token is not a target of the previous example's last token
    assert batch["labels"][shared, second].item() == IGNORE
    pad = capacity - lengths[2]  # the short row is padded as its own ignored segment
    alone_row = 1 - shared
    assert batch["labels"][alone_row, lengths[2] :].tolist() == [IGNORE] * pad
    assert batch["position_ids"][alone_row, lengths[2] :].tolist() == list(range(pad))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = [model(torch.tensor([e.input_ids])).logits[0] for e in items]
    assert torch.allclose(packed[shared, :second], alone[1], atol=1e-5)
    assert torch.allclose(packed[shared, second:], alone[0], atol=1e-5)
    assert torch.allclose(packed[alone_row, : lengths[2]], alone[2], atol=1e-5)


def test_base_model_weights_must_be_safetensors(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    model.config.save_pretrained(str(tmp_path))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # pickle-based weights only
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(SpecError, match="safetensors"):
        load_base(str(tmp_path))
    assert load_base(str(tmp_path), allow_pickle=True).config.n_layer == 1


_TRAIN = """
import sys
from pathlib import Path
from tasks.train.peft import Hyper
from tasks.train.sft import train_generator
hyper = Hyper(epochs=3, batch_size=4, learning_rate=1e-3, checkpoint_steps=20, seed=3)
result = train_generator(Path(sys.argv[1]), "tiny-gpt", sys.argv[2], hyper, Path(sys.argv[3]),
                         Path(sys.argv[4]))
print("RESUMED", result.resumed_from, result.steps)
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_killed_training_resumes_to_the_same_weights(tmp_path: Path, method: str) -> None:
    from safetensors.torch import load_file

    resolve_base_model("tiny-gpt")  # built once, before any process is killed
    rows = [
        {"id": str(i), "text": f"Repeat: item {i} of the list", "target": f"item {i}"}
        for i in range(200)
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def command(name: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            _TRAIN,
            str(data),
            method,
            str(tmp_path / name),
            str(tmp_path / f"ck-{name}"),
        ]

    whole = subprocess.run(command("whole"), env=env, capture_output=True, text=True, check=True)
    assert "RESUMED None 150" in whole.stdout
    victim = subprocess.Popen(
        command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "ck-killed").glob("*/checkpoint-40/adaptflow_complete")):
        assert victim.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    left = list((tmp_path / "ck-killed").glob("*/checkpoint-*"))
    assert left, "the killed run left its checkpoints"
    again = subprocess.run(command("killed"), env=env, capture_output=True, text=True, check=True)
    resumed_line = again.stdout.strip().splitlines()[-1]
    assert "checkpoint-" in resumed_line and resumed_line.endswith(" 150")
    assert int(resumed_line.split("checkpoint-")[1].split()[0]) >= 40
    weights = (
        "adapter/adapter_model.safetensors" if method == "lora" else "weights/model.safetensors"
    )
    a = load_file(str(tmp_path / "whole" / weights))
    b = load_file(str(tmp_path / "killed" / weights))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert not (tmp_path / "ck-killed").exists() or not any((tmp_path / "ck-killed").iterdir())


LOWERCASE = REPO / "examples" / "unicode-lowercase"


def _lowercase_spec(folder: Path, name: str, method: str, rows: int, epochs: int = 4) -> Path:
    import yaml

    spec = yaml.safe_load((LOWERCASE / "spec.yaml").read_text())
    lines = (LOWERCASE / "data" / "pairs.jsonl").read_text().splitlines()[:rows]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    spec |= {"name": name, "method": method}
    spec["data"]["train"] = str(folder / "pairs.jsonl")
    spec["train"] |= {"epochs": epochs}
    path = folder / f"{name}-{method}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.integration
def test_instruction_pipeline_trains_registers_serves_and_rescores(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import models

    # 8 epochs: rougeL 0.34-0.39 on 24 held pairs on two CPUs' kernels (4 epochs: 0.19-0.38, and
    # empty answers in one pipeline run)
    first = adapt_pipeline(str(_lowercase_spec(tmp_path, "e2e-lower", "full", 240, epochs=8)))
    metrics, baseline = first["metrics"], first["baseline"]
    assert set(metrics) == {"exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "perplexity"}
    assert first["baseline_method"] == "base model 'tiny-gpt', no training"
    assert metrics["rougeL"] > baseline["rougeL"] + 0.1
    assert metrics["perplexity"] < baseline["perplexity"] / 10
    assert first["promoted"] and first["champion_version"] == "1"
    assert first["train"]["trainable_percent"] == pytest.approx(100.0)
    assert first["train"]["packed"] is False and first["train"]["resumed_from"] is None
    tags = models.version_tags("e2e-lower", "1")
    assert tags["adaptflow.method"] == "full"
    assert float(tags["metric.rougeL"]) == pytest.approx(metrics["rougeL"], abs=1e-6)

    # served answers are the answers that were scored
    answers = [
        json.loads(line)
        for line in next(Path(first["train"]["package_dir"]).parent.glob("eval/*.jsonl"))
        .read_text()
        .splitlines()[:3]
    ]
    done = subprocess.run(
        [sys.executable, "-m", "adaptflow", "predict", "models:/e2e-lower@champion", "--json"]
        + [a["text"] for a in answers],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["predictions"] == [a["prediction"] for a in answers]

    # a LoRA candidate on the same data: the champion is re-scored on the same eval split
    second = adapt_pipeline(str(_lowercase_spec(tmp_path, "e2e-lower", "lora", 240)))
    assert second["method"] == "lora"
    assert second["champion_metrics_before"]["rougeL"] == pytest.approx(metrics["rougeL"], abs=1e-6)
    assert 0 < second["train"]["trainable_percent"] < 2
    assert second["model_version"] == "2"
    beats = second["metrics"]["rougeL"] > metrics["rougeL"]
    assert second["promoted"] is beats
    assert models.champion_version("e2e-lower") == ("2" if beats else "1")


def test_generative_methods_run_for_generative_tasks_only() -> None:
    from adaptflow.methods import check_method, resolve_method

    for task in ("instruction", "qa", "summarization"):
        for method in ("lora", "dora", "ia3", "prefix", "prompt-tuning", "p-tuning", "freeze"):
            check_method(task, method)
        assert resolve_method(task, "full") == "full"
    with pytest.raises(SpecError, match="method 'prefix' is not available for task 'classif"):
        check_method("classification", "prefix")
    assert resolve_method("language-modeling", "cpt") == "cpt"
    with pytest.raises(SpecError, match="method 'lora' is not available for task 'language-mod"):
        check_method("language-modeling", "lora")
    check_method("instruction", "ladder")
    with pytest.raises(SpecError, match="'ladder' is not available for task 'language-modeling'"):
        check_method("language-modeling", "ladder")


@pytest.mark.integration
def test_generative_ladder_climbs_lora_freeze_full_until_the_target(tmp_path: Path) -> None:
    from flows.pipeline import adapt_pipeline

    spec = _lowercase_spec(tmp_path, "e2e-gen-ladder", "ladder", 120)
    result = adapt_pipeline(str(spec))
    ladder = result["ladder"]
    assert ladder["planned"] == ["lora", "freeze", "full"]
    tried = [rung["method"] for rung in ladder["rungs"]]
    assert tried == ladder["planned"][: len(tried)]
    met = [rung["met_target"] for rung in ladder["rungs"]]
    # it stops at the first rung that meets rougeL >= 0.6, and only there
    assert met == [False] * (len(met) - 1) + [met[-1]]
    assert ladder["stopped_early"] is (len(tried) < 3)
    scores = {r["method"]: r["metrics"]["rougeL"] for r in ladder["rungs"]}
    winner = ladder["winner"]
    if ladder["target_met"]:
        assert winner == tried[-1] and scores[winner] >= 0.6
    else:
        assert scores[winner] == max(scores.values()) and not result["promoted"]
    assert result["baseline_method"] == "base model 'tiny-gpt', no training"


@pytest.mark.integration
def test_summarization_pipeline_on_the_encoder_decoder(tmp_path: Path) -> None:
    import yaml

    from flows.pipeline import adapt_pipeline
    from registry import models

    example = REPO / "examples" / "docstring-summaries"
    raw = yaml.safe_load((example / "spec.yaml").read_text())
    lines = (example / "data" / "pairs.jsonl").read_text().splitlines()[:160]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    raw |= {"name": "e2e-summaries", "method": "lora"}
    raw["data"]["train"] = str(tmp_path / "pairs.jsonl")
    raw["train"] |= {"epochs": 4, "learning_rate": 0.005}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))

    result = adapt_pipeline(str(path))
    assert result["baseline_method"] == "base model 'tiny-t5', no training"
    # a LoRA on a 1.2M-parameter model learns the summaries' words long before it writes good
    # ones: perplexity of the references is the robust signal, ROUGE-L must not get worse
    assert result["metrics"]["perplexity"] < 0.9 * result["baseline"]["perplexity"]
    assert result["metrics"]["rougeL"] >= result["baseline"]["rougeL"]
    assert 0 < result["train"]["trainable_percent"] < 5  # LoRA on tiny-t5: 24,576 params
    assert result["train"]["trainable_params"] == 24_576
    package = Path(result["train"]["package_dir"])
    answers = [
        json.loads(line)
        for line in (package.parent / "eval" / "eval_answers.jsonl").read_text().splitlines()[:3]
    ]
    served = models.load_model(f"models:/e2e-summaries/{result['model_version']}")
    assert list(served.predict([a["text"] for a in answers])) == [a["prediction"] for a in answers]
