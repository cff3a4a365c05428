"""The architecture x method matrix on tiny random models of real families (issue 19).

Each family (``adaptflow.tiny_families``) is built once per session as a Hugging Face folder
and loaded by path through ``from_pretrained``. Every method that applies to a family is set
up on it with its exact trainable parameter count (computed here from the config) and takes one
training step; one method per family (LoRA) runs the whole pipeline: curate, train, evaluate,
register in MLflow, predict from the registered version. Then chat templates and stopping:
a tiny ChatML decoder learns short answers and stops at ``<|im_end|>``. Then preference tuning
and RL (dpo, orpo, simpo, kto, grpo) on every decoder and reward models on every decoder and
encoder, each trained a few steps through its recipe and loaded back; and QLoRA, on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO, write_jsonl
from test_align import TRAIN_WORDS, kto_rows, pairs

from adaptflow.errors import SpecError
from adaptflow.tiny_families import FAMILIES, FFN, HEADS, KV_HEADS, LAYERS, VOCAB_SIZE, WIDTH
from tasks.train.align import AlignOptions
from tasks.train.methods import trainable_parameters
from tasks.train.peft import Hyper

DECODERS = ("llama", "qwen2", "mistral", "gemma", "phi3")
ENCODERS = ("bert", "roberta", "deberta-v2", "modernbert")
SEQ2SEQ = ("t5", "bart")
GENERATIVE_METHODS = ("lora", "dora", "ia3", "prefix", "prompt-tuning", "p-tuning", "freeze",
                      "full")  # fmt: skip
CLASSIFIER_METHODS = ("lora", "dora", "ia3")
LABELS = ("a", "b", "c")
R = 8  # Hyper's lora_r
VIRTUAL = 16  # Hyper's virtual_tokens


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family, built once per session (about 5 s)."""
    from adaptflow.tiny_families import build_all

    return build_all(tmp_path_factory.mktemp("families"))


def lora(fan_in: int, fan_out: int, r: int = R) -> int:
    """LoRA's A (r x in) and B (out x r)."""
    return r * (fan_in + fan_out)


def linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + fan_out * bias


HEAD_DIM = WIDTH // HEADS
EMBED = VOCAB_SIZE * WIDTH


def decoder_shape(name: str) -> dict[str, Any]:
    """Widths of one decoder layer: what its q/k/v/o and MLP projections map."""
    kv = {"gemma": 1, "phi3": HEADS}.get(name, KV_HEADS) * HEAD_DIM
    return {"q": WIDTH, "kv": kv, "tied": name in ("qwen2", "gemma"), "bias": name == "qwen2"}


def decoder_layer(name: str) -> int:
    """Parameters of one decoder layer (attention, gated MLP, two RMS norms)."""
    s = decoder_shape(name)
    attention = WIDTH * (s["q"] + 2 * s["kv"]) + s["q"] * WIDTH
    attention += (s["q"] + 2 * s["kv"]) * s["bias"]
    return attention + 3 * WIDTH * FFN + 2 * WIDTH


def decoder_total(name: str) -> int:
    untied_head = 0 if decoder_shape(name)["tied"] else EMBED
    return EMBED + LAYERS * decoder_layer(name) + WIDTH + untied_head


def decoder_expected(name: str, method: str) -> int:
    """The trainable parameters of ``method`` on decoder ``name``, from its config."""
    s = decoder_shape(name)
    q, kv = s["q"], s["kv"]
    if name == "phi3":  # one fused qkv_proj (64 -> 192): peft has no default, adaptflow's
        targets = [(WIDTH, q + 2 * kv)]
        ia3 = (q + 2 * kv) + FFN  # qkv_proj's outputs, down_proj's inputs
    else:  # peft's table: q_proj and v_proj
        targets = [(WIDTH, q), (WIDTH, kv)]
        # IA3: k and v outputs (Llama, Mistral) or q and v (Qwen2, Gemma), down_proj's inputs
        ia3 = (kv if name in ("llama", "mistral") else q) + kv + FFN
    untied_head = 0 if s["tied"] else EMBED
    return {
        "lora": LAYERS * sum(lora(i, o) for i, o in targets),
        "dora": LAYERS * sum(lora(i, o) + o for i, o in targets),  # + a magnitude per output
        "ia3": LAYERS * ia3,
        "prefix": VIRTUAL * LAYERS * 2 * kv,  # a key and a value prefix per layer (k/v width)
        "prompt-tuning": VIRTUAL * WIDTH,
        "p-tuning": VIRTUAL * WIDTH + 3 * linear(WIDTH, WIDTH),  # embeddings + an MLP
        "freeze": decoder_layer(name) + WIDTH + untied_head,  # top layer, final norm, head
        "full": decoder_total(name),
        "all-linear": LAYERS
        * (
            (lora(WIDTH, q + 2 * kv) if name == "phi3" else lora(WIDTH, q) + 2 * lora(WIDTH, kv))
            + lora(q, WIDTH)
            + (lora(WIDTH, 2 * FFN) if name == "phi3" else 2 * lora(WIDTH, FFN))
            + lora(FFN, WIDTH)
        ),
    }[method]


def seq2seq_layers() -> tuple[int, int]:
    """(encoder, decoder) layer parameters of the tiny T5 (no biases, RMS norm weight only)."""
    attention = 4 * WIDTH * WIDTH
    return attention + 2 * WIDTH * FFN + 2 * WIDTH, 2 * attention + 2 * WIDTH * FFN + 3 * WIDTH


def seq2seq_expected(name: str, method: str) -> int:
    """Trainable parameters of ``method`` on T5 or BART (q and v of every attention: 6 of them
    per encoder + decoder layer pair)."""
    attentions = LAYERS * 3  # encoder self, decoder self, decoder cross
    if method == "freeze":
        if name == "t5":  # the top block of each stack and both final norms (head tied)
            encoder, decoder = seq2seq_layers()
            return encoder + decoder + 2 * WIDTH
        # BART: the top encoder (attention 4 linear + 2 LayerNorms, fc1, fc2, a LayerNorm)
        # and decoder block (two attentions + 3 LayerNorms); no final norm, tied head
        attention = 4 * linear(WIDTH, WIDTH) + 2 * WIDTH
        mlp = linear(WIDTH, FFN) + linear(FFN, WIDTH) + 2 * WIDTH
        return (attention + mlp) + (2 * attention + mlp)
    if method == "full":
        if name == "t5":
            encoder, decoder = seq2seq_layers()
            return EMBED + LAYERS * (encoder + decoder) + 2 * WIDTH + 2 * HEADS * 32
        positions = (256 + 2) * WIDTH  # BART's learned positions, offset by 2
        attention = 4 * linear(WIDTH, WIDTH) + 2 * WIDTH
        mlp = linear(WIDTH, FFN) + linear(FFN, WIDTH) + 2 * WIDTH
        embeddings_norms = 2 * 2 * WIDTH  # layernorm_embedding of both stacks
        encoder, decoder = attention + mlp, 2 * attention + mlp
        return EMBED + 2 * positions + embeddings_norms + LAYERS * (encoder + decoder)
    return {
        "lora": 2 * attentions * lora(WIDTH, WIDTH),
        "dora": 2 * attentions * (lora(WIDTH, WIDTH) + WIDTH),
        # IA3: T5 scales k, v and wo's inputs; BART q, v and fc2's inputs
        "ia3": 2 * attentions * WIDTH + 2 * LAYERS * FFN,
        "prefix": VIRTUAL * LAYERS * 2 * WIDTH,  # one key and one value prefix per layer
        "prompt-tuning": 2 * VIRTUAL * WIDTH,  # encoder and decoder virtual tokens
        "p-tuning": 2 * VIRTUAL * WIDTH + 3 * linear(WIDTH, WIDTH),
        # every attention's 4 projections, and each layer's two MLP projections
        "all-linear": 4 * attentions * lora(WIDTH, WIDTH) + 2 * LAYERS * 2 * lora(WIDTH, FFN),
    }[method]


def encoder_expected(name: str, method: str, labels: int = len(LABELS)) -> int:
    """Trainable parameters of a classifier method on an encoder (3 labels; a reward model: 1).

    Besides the adapter, the modules the checkpoint lacks train and are saved with it: the
    classifier, and BERT's and DeBERTa's pooler (a masked-LM checkpoint has none); RoBERTa's
    head is dense + out_proj. ModernBERT keeps its pretrained ``head``.
    """
    classifier = linear(WIDTH, labels)
    fresh = classifier + (0 if name == "modernbert" else linear(WIDTH, WIDTH))
    if name == "modernbert":  # fused Wqkv (64 -> 192); Wi is gated (64 -> 2 x FFN)
        return fresh + {
            "lora": LAYERS * lora(WIDTH, 3 * WIDTH),
            "dora": LAYERS * (lora(WIDTH, 3 * WIDTH) + 3 * WIDTH),
            "ia3": LAYERS * (3 * WIDTH + FFN),
            "all-linear": LAYERS
            * (lora(WIDTH, 3 * WIDTH) + lora(WIDTH, WIDTH) + lora(WIDTH, 2 * FFN)
               + lora(FFN, WIDTH))
            + lora(WIDTH, WIDTH),  # the head's dense layer
        }[method]  # fmt: skip
    adapters = {
        "lora": LAYERS * 2 * lora(WIDTH, WIDTH),  # query and value
        "dora": LAYERS * 2 * (lora(WIDTH, WIDTH) + WIDTH),
        # key and value outputs; "output.dense" matches the attention's output (64 inputs)
        # and the MLP's (128 inputs)
        "ia3": LAYERS * (2 * WIDTH + WIDTH + FFN),
        "all-linear": LAYERS * (4 * lora(WIDTH, WIDTH) + lora(WIDTH, FFN) + lora(FFN, WIDTH)),
    }
    return fresh + adapters[method]


# -- the matrix at the recipe level: exact counts and one training step ---------------------


def _one_step(model: Any, batch: dict[str, Any]) -> None:
    """One AdamW step; the loss is finite and some trainable weight moves."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, trainable, strict=True))


def _generative_batch(tokenizer: Any, family: str) -> dict[str, Any]:
    from runtime.prompts import collator, encode_seq2seq, encode_sft

    encode = encode_sft if family == "decoder" else encode_seq2seq
    items = [encode(tokenizer, f"What is {i} plus one?", str(i + 1), 48) for i in range(4)]
    return collator(tokenizer, family, packing=False)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in items]
    )


GENERATIVE_CASES = [(f, m) for f in DECODERS + SEQ2SEQ for m in GENERATIVE_METHODS]


@pytest.mark.parametrize(("name", "method"), GENERATIVE_CASES)
def test_generative_method_counts_and_one_step(
    families: dict[str, Path], name: str, method: str
) -> None:
    from tasks.train.sft import setup

    # one unfrozen layer of two, so that freeze differs from full
    model, tokenizer, family = setup(str(families[name]), method, Hyper(unfrozen_layers=1))
    assert family == FAMILIES[name].kind
    expected = (
        decoder_expected(name, method) if family == "decoder" else seq2seq_expected(name, method)
    )
    assert trainable_parameters(model)[0] == expected
    _one_step(model, _generative_batch(tokenizer, family))


@pytest.mark.parametrize(("name", "method"), [(f, m) for f in ENCODERS for m in CLASSIFIER_METHODS])
def test_classifier_method_counts_and_one_step(
    families: dict[str, Path], name: str, method: str
) -> None:
    from transformers import AutoTokenizer

    from tasks.train.peft import setup

    model = setup(str(families[name]), list(LABELS), method, Hyper())
    assert trainable_parameters(model)[0] == encoder_expected(name, method)
    tokenizer = AutoTokenizer.from_pretrained(str(families[name]))
    batch = tokenizer(["a short text", "another one here"], return_tensors="pt", padding=True)
    _one_step(model, dict(batch) | {"labels": torch.tensor([0, 2])})


@pytest.mark.parametrize("name", DECODERS + SEQ2SEQ + ENCODERS)
def test_all_linear_lora_counts(families: dict[str, Path], name: str) -> None:
    hyper = Hyper(target_modules="all-linear")
    if name in ENCODERS:
        from tasks.train.peft import setup as classifier_setup

        model = classifier_setup(str(families[name]), list(LABELS), "lora", hyper)
        assert trainable_parameters(model)[0] == encoder_expected(name, "all-linear")
        return
    from tasks.train.sft import setup

    model, _, family = setup(str(families[name]), "lora", hyper)
    expected = (
        decoder_expected(name, "all-linear")
        if family == "decoder"
        else seq2seq_expected(name, "all-linear")
    )
    assert trainable_parameters(model)[0] == expected
    # never the output head
    assert not any("lm_head" in n for n, p in model.named_parameters() if p.requires_grad)


def test_target_modules_naming_nothing_fails_before_training(families: dict[str, Path]) -> None:
    from adaptflow.spec import TrainSpec
    from tasks.train.peft import setup as classifier_setup
    from tasks.train.sft import setup

    with pytest.raises(SpecError, match=r"train.target_modules: 'q_proj' matches no layer .*"
                       r"'phi3'.*qkv_proj"):  # fmt: skip
        setup(str(families["phi3"]), "lora", Hyper(target_modules=["q_proj", "o_proj"]))
    with pytest.raises(SpecError, match=r"train.target_modules: 'query', 'value' match no layer"):
        classifier_setup(str(families["modernbert"]), list(LABELS), "lora",
                         Hyper(target_modules=["query", "value"]))  # fmt: skip
    # a list that matches trains exactly those layers (peft's rule: the last dotted parts)
    model, _, _ = setup(str(families["llama"]), "lora", Hyper(target_modules=["self_attn.o_proj"]))
    assert trainable_parameters(model)[0] == LAYERS * lora(WIDTH, WIDTH)
    assert TrainSpec(target_modules=["qkv_proj"]).target_modules == ["qkv_proj"]
    with pytest.raises(ValueError, match="at least one module name"):
        TrainSpec(target_modules=[])


def test_families_load_by_path_and_know_their_kind(families: dict[str, Path]) -> None:
    from adaptflow.catalogue import base_family, known_family
    from runtime.loading import load_base, load_base_tokenizer

    for name, folder in families.items():
        kind = FAMILIES[name].kind
        assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
        assert base_family(str(folder)) == kind == known_family(str(folder))
        tokenizer = load_base_tokenizer(str(folder))
        assert tokenizer.pad_token_id is not None
        if kind != "encoder":
            model = load_base(str(folder))
            assert model.config.model_type == name
            assert (
                sum(p.numel() for p in model.parameters())
                == json.loads((folder / "adaptflow_build.json").read_text())["parameters"]
            )


# -- the whole pipeline, one method per family -----------------------------------------------


def _spec(folder: Path, name: str, base: Path) -> Path:
    """A LoRA spec for ``base`` on rows from the examples (curated, split, scored as usual)."""
    import yaml

    kind = FAMILIES[name].kind
    train = {"epochs": 1, "batch_size": 16, "max_length": 48, "max_new_tokens": 6,
             "learning_rate": 0.003}  # fmt: skip
    if kind == "encoder":
        source = REPO / "examples" / "unicode-categories" / "data" / "chars.jsonl"
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        kept = [r for r in rows if r["label"] in ("punctuation", "decimal-digit", "math-symbol")]
        data = {"train": str(write_jsonl(folder / "train.jsonl", kept[:60]))}
        raw = {"task": "classification", "target": {"metric": "f1_macro", "min": 0.9}}
    elif kind == "decoder":
        source = REPO / "examples" / "unicode-lowercase" / "data" / "pairs.jsonl"
        (folder / "train.jsonl").write_text("\n".join(source.read_text().splitlines()[:48]) + "\n")
        data = {"train": str(folder / "train.jsonl"), "target_field": "target"}
        raw = {"task": "instruction", "target": {"metric": "rougeL", "min": 0.6},
               "curation": {"decontaminate": {"ngram": 12}}}  # fmt: skip
    else:
        source = REPO / "examples" / "docstring-summaries" / "data" / "pairs.jsonl"
        (folder / "train.jsonl").write_text("\n".join(source.read_text().splitlines()[:40]) + "\n")
        data = {"train": str(folder / "train.jsonl"), "target_field": "summary"}
        raw = {"task": "summarization", "target": {"metric": "rougeL", "min": 0.05}}
    raw |= {
        "name": f"arch-{name}", "base_model": str(base), "method": "lora", "data": data,
        "train": train, "search": {"auto": False}, "seed": 3,
    }  # fmt: skip
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _pipeline(tmp_path: Path, families: dict[str, Path], name: str) -> None:
    from flows.pipeline import adapt_pipeline
    from registry import models

    result = adapt_pipeline(str(_spec(tmp_path, name, families[name])))
    kind = FAMILIES[name].kind
    count = {"decoder": decoder_expected, "encoder": encoder_expected}.get(kind, seq2seq_expected)
    expected = count(name, "lora")
    if kind == "encoder":  # the curated classes of the examples: 3 labels too
        assert result["metrics"].keys() >= {"f1_macro", "accuracy"}
    else:
        assert result["metrics"].keys() >= {"rougeL", "exact_match", "perplexity"}
    assert result["train"]["trainable_params"] == expected
    assert result["model_version"] == "1"
    package = Path(result["train"]["package_dir"])
    assert (package / "adapter" / "adapter_model.safetensors").is_file()
    served = models.load_model(f"models:/arch-{name}/1")
    texts = ["DIGIT SEVEN", "Name the lowercase form of: LATIN CAPITAL LETTER Q"]
    answers = list(served.predict(texts))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    if kind == "encoder":
        assert set(answers) <= {"punctuation", "decimal-digit", "math-symbol"}
    else:  # what was scored is what is served
        scored = [
            json.loads(line)
            for line in (package.parent / "eval" / "eval_answers.jsonl").read_text().splitlines()
        ][:2]
        again = list(served.predict([row["text"] for row in scored]))
        assert again == [row["prediction"] for row in scored]


#: One family of each kind runs the pipeline in the fast suite; the rest are slow.
FAST_PIPELINES = ("qwen2",)  # the others run with -m slow (make test-all): ~20 s each


@pytest.mark.integration
@pytest.mark.parametrize("name", FAST_PIPELINES)
def test_pipeline_trains_evaluates_registers_and_predicts(
    tmp_path: Path, families: dict[str, Path], name: str
) -> None:
    _pipeline(tmp_path, families, name)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in FAST_PIPELINES])
def test_pipeline_on_every_other_family(
    tmp_path: Path, families: dict[str, Path], name: str
) -> None:
    _pipeline(tmp_path, families, name)


# -- chat templates and stopping -------------------------------------------------------------


def test_prompts_and_answers_follow_each_base_template(families: dict[str, Path]) -> None:
    from runtime.loading import load_base_tokenizer
    from runtime.prompts import IGNORE, encode_sft, render_prompt

    rendered = {
        name: render_prompt(load_base_tokenizer(str(families[name])), "hi") for name in DECODERS
    }
    assert rendered == {
        "llama": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "qwen2": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        # no chat template: the README's plain format
        "mistral": "### Instruction:\nhi\n\n### Response:\n",
        "gemma": "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "phi3": "<|user|>\nhi<|end|>\n<|assistant|>\n",
    }
    # the answer is the assistant turn as the template closes it, then EOS if that differs;
    # generation stops at the turn's end (a special token) as well as at EOS
    from runtime.generate import stop_ids
    from runtime.prompts import turn_end_id

    for name, eos, answer, turn_end in (
        ("llama", "<|eot_id|>", "Hello there.<|eot_id|>", "<|eot_id|>"),
        ("qwen2", "<|im_end|>", "Hello there.<|im_end|>", "<|im_end|>"),
        ("mistral", "</s>", "Hello there.</s>", None),  # no template: text then EOS
        # Phi-3's template closes a conversation with EOS after the last <|end|>: cut there
        ("phi3", "<|end|>", "Hello there.<|end|>", "<|end|>"),
        # Gemma's turn ends with <end_of_turn>, its EOS is <eos>: both are learned
        ("gemma", "<eos>", "Hello there.<end_of_turn><eos>", "<end_of_turn>"),
    ):
        tokenizer = load_base_tokenizer(str(families[name]))
        assert tokenizer.eos_token == eos
        item = encode_sft(tokenizer, "hi", "Hello there.", 64)
        answer_ids = [t for t in item.labels if t != IGNORE]
        assert tokenizer.decode(answer_ids) == answer, name
        start = item.labels.index(answer_ids[0])
        assert tokenizer.decode(item.input_ids[:start]) == rendered[name]  # the served prompt
        end = turn_end_id(tokenizer)
        assert (end and tokenizer.convert_ids_to_tokens(end)) == (turn_end or None), name
        assert set(stop_ids(None, tokenizer)) == {tokenizer.eos_token_id} | ({end} - {None})
    gemma = load_base_tokenizer(str(families["gemma"]))
    turn = gemma.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."}],
        tokenize=False,
    )
    assert turn.endswith("Hello there.<end_of_turn>\n")


def test_a_template_without_a_generation_prompt_is_used_as_it_is(
    families: dict[str, Path],
) -> None:
    """The README says only that decoders see the tokenizer's template; one that ignores
    ``add_generation_prompt`` renders no assistant header, so the answer follows the user's
    turn directly, the same in training and in generation (reported as a gap)."""
    from runtime.loading import load_base_tokenizer
    from runtime.prompts import IGNORE, encode_sft, render_prompt

    tokenizer = load_base_tokenizer(str(families["qwen2"]))
    tokenizer.chat_template = tokenizer.chat_template.split("{% if add_generation_prompt %}")[0]
    prompt = render_prompt(tokenizer, "hi")
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n"
    item = encode_sft(tokenizer, "hi", "Hello.", 64)
    start = item.labels.index(next(t for t in item.labels if t != IGNORE))
    assert tokenizer.decode(item.input_ids[:start]) == prompt


def test_a_chatml_model_learns_short_answers_and_stops_at_im_end(
    tmp_path: Path, families: dict[str, Path]
) -> None:
    """Full fine-tuning of the tiny Qwen2 on 40 short answers; greedy answers then end at
    ``<|im_end|>`` long before ``max_new_tokens``, in the package as loaded for serving."""
    from runtime.generate import Generator
    from tasks.train.sft import train_generator

    questions = {
        "What colour is the sky": "Blue.", "What colour is grass": "Green.",
        "What colour is snow": "White.", "What colour is coal": "Black.",
        "What colour is blood": "Red.",
    }  # fmt: skip
    rows = [
        {"id": str(i), "text": f"{question}? (card {i})", "target": answer}
        for i, (question, answer) in enumerate(list(questions.items()) * 8)
    ]
    hyper = Hyper(epochs=20, batch_size=8, learning_rate=1e-2, max_length=32, max_new_tokens=48,
                  checkpoint_steps=1000, seed=5)  # fmt: skip
    result = train_generator(
        write_jsonl(tmp_path / "train.jsonl", rows), str(families["qwen2"]), "full", hyper,
        tmp_path / "package", tmp_path / "checkpoints",
    )  # fmt: skip
    package = Path(result.package_dir)
    generator = Generator.from_package(package)
    tokenizer = generator.tokenizer
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == FAMILIES["qwen2"].template  # the package keeps the template
    prompts = [generator.tokenizer.apply_chat_template(
        [{"role": "user", "content": row["text"]}], add_generation_prompt=True, tokenize=False
    ) for row in rows[:10]]  # fmt: skip
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = generator.model.generate(
            **batch, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[:, batch["input_ids"].shape[1]:]  # fmt: skip
    eos = tokenizer.eos_token_id
    lengths = [row.tolist().index(eos) + 1 if eos in row.tolist() else 48 for row in out]
    assert max(lengths) <= 8, lengths  # "Red." and <|im_end|> is 3-4 tokens; 48 allowed
    assert generator.predict([row["text"] for row in rows[:10]]) == [
        row["target"] for row in rows[:10]
    ]
    # a full-weights package carries the base's generation config: EOS is <|im_end|>
    config = json.loads((package / "weights" / "generation_config.json").read_text())
    assert config["eos_token_id"] == eos


# -- preference tuning, RL and reward models (README "Preference tuning and RL") -------------

ALIGN_METHODS = ("dpo", "orpo", "simpo", "kto", "grpo")
#: Two optimizer steps of every method: 8 pairs, 8 labelled answers (KTO) or 4 prompts with 2
#: samples each (GRPO), in batches of 4; nothing cut (the longest pair: 64 tokens, Mistral's)
ALIGN_HYPER = Hyper(
    epochs=1, learning_rate=5e-3, batch_size=4, max_length=96, max_new_tokens=6, seed=7
)
ALIGN_OPTIONS = AlignOptions(num_generations=2, max_new_tokens=6)
#: Four steps at a larger rate: a random encoder's first token barely sees the answer, so two
#: small steps leave its pairs ordered by a margin of 1e-3 (these order them by 1e-2 or more)
REWARD_HYPER = Hyper(epochs=2, learning_rate=2e-2, batch_size=4, max_length=96, seed=7)
#: The fast tier (make test) runs these; the rest of the matrix is slow (make test-all)
FAST_ALIGN = (("llama", "dpo"),)
FAST_REWARD = ("llama", "roberta")


def _align_rows(method: str) -> list[dict[str, Any]]:
    """tests/test_align.py's separable data: calm answers chosen over angry ones."""
    if method == "kto":
        return kto_rows(TRAIN_WORDS[:4])
    if method == "grpo":  # prompts; the reward comes from a reward model
        return [{"id": str(i), "text": f"Describe the {w}.", "target": f"A calm {w}."}
                for i, w in enumerate(TRAIN_WORDS[:4])]  # fmt: skip
    return pairs(TRAIN_WORDS[:8])


def _assert_adapter_trained(package: Path, trainable: int) -> None:
    """The saved adapter holds exactly what trained, and every LoRA layer moved (B starts at 0)."""
    from safetensors.torch import load_file

    tensors = load_file(str(package / "adapter" / "adapter_model.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == trainable
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(bool(t.abs().sum() > 0) for t in lora_b)


def _marked(cases: list[Any], fast: tuple[Any, ...]) -> list[Any]:
    return [
        pytest.param(*case if isinstance(case, tuple) else (case,),
                     marks=() if case in fast else (pytest.mark.slow,))
        for case in cases
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "method"), _marked([(n, m) for n in DECODERS for m in ALIGN_METHODS], FAST_ALIGN)
)
def test_preference_and_rl_methods_train_save_and_load_back(
    tmp_path: Path, families: dict[str, Path], name: str, method: str
) -> None:
    """Each method through the recipe (``train_aligned``, TRL's trainer) on each decoder: a LoRA
    on the family's default targets with its exact count, every adapted layer moved, and the
    package, loaded back by ``from_pretrained``, prefers what it was trained to and generates."""
    from runtime.generate import Generator, answer_logps
    from tasks.evaluate.preference import preference_metrics
    from tasks.train.align import train_aligned
    from tasks.train.reward import train_reward_model

    base = str(families[name])
    rows = _align_rows(method)
    rewards = None
    if method == "grpo":  # RLHF: the judge is a reward model on the same base
        judged = write_jsonl(tmp_path / "pairs.jsonl", pairs(TRAIN_WORDS[:8]))
        judge = train_reward_model(judged, base, REWARD_HYPER, AlignOptions(), tmp_path / "judge")
        rewards = [{"kind": "model", "model": judge.package_dir, "weight": 1.0}]
    result = train_aligned(
        write_jsonl(tmp_path / "train.jsonl", rows), base, method, ALIGN_HYPER, ALIGN_OPTIONS,
        tmp_path / "package", tmp_path / "checkpoints", rewards=rewards,
    )  # fmt: skip
    assert result.trainable_params == decoder_expected(name, "lora")
    assert result.steps == 2
    package = Path(result.package_dir)
    _assert_adapter_trained(package, result.trainable_params)
    generator = Generator.from_package(package)
    if method == "grpo":  # the adapter, loaded back, changes the policy's log-probs
        assert (
            json.loads((package / "adaptflow_model.json").read_text())["options"]["rewards"]
            == rewards
        )
        triples = [(row["text"], row["target"], None) for row in rows]
        policy = answer_logps(generator.model, generator.tokenizer, triples, "decoder", 96)
        with generator.model.disable_adapter():
            start = answer_logps(generator.model, generator.tokenizer, triples, "decoder", 96)
        assert max(abs(a - b) for a, b in zip(policy, start, strict=True)) > 1e-4
    else:  # against its reference (the adapter disabled: the base), chosen answers gained
        assert preference_metrics(generator, rows, 0.1)["reward_margin"] > 0
    answers = generator.predict(["Describe the ember, take 0."])
    assert len(answers) == 1 and isinstance(answers[0], str)


@pytest.mark.parametrize("name", _marked(list(DECODERS + ENCODERS), FAST_REWARD))
def test_a_reward_model_on_every_decoder_and_encoder(
    tmp_path: Path, families: dict[str, Path], name: str
) -> None:
    """``method: reward``: a one-output sequence classifier, LoRA plus its fresh head trained
    and saved (a decoder's bias-free ``score``; an encoder's classifier and pooler), that
    orders every trained pair and loads back with nothing drawn anew."""
    from runtime.reward_model import RewardModel
    from tasks.train.reward import train_reward_model

    rows = pairs(TRAIN_WORDS[:8])
    base = str(families[name])
    result = train_reward_model(
        write_jsonl(tmp_path / "train.jsonl", rows), base, REWARD_HYPER, AlignOptions(),
        tmp_path / "package",
    )  # fmt: skip
    decoder = FAMILIES[name].kind == "decoder"
    expected = (
        decoder_expected(name, "lora") + WIDTH if decoder else encoder_expected(name, "lora", 1)
    )
    assert result.trainable_params == expected
    assert result.steps == 4
    package = Path(result.package_dir)
    _assert_adapter_trained(package, expected)
    prompts = [row["text"] for row in rows for _ in range(2)]
    answers = [answer for row in rows for answer in (row["target"], row["rejected"])]
    scores = []
    for seed in (0, 1):  # a module the package lacks would be drawn anew, differently per seed
        torch.manual_seed(seed)
        model = RewardModel.from_package(package)
        assert model.decoder is decoder
        scores.append(model.score(prompts, answers))
    assert scores[0] == scores[1]
    trained = scores[0]
    assert all(trained[2 * i] > trained[2 * i + 1] for i in range(len(rows))), trained
    untrained = RewardModel.from_base(base, REWARD_HYPER.max_length, 7).score(prompts, answers)
    assert untrained != trained


def test_preference_recipes_refuse_a_base_they_cannot_tune(families: dict[str, Path]) -> None:
    from tasks.train.align import setup as align_setup
    from tasks.train.reward import setup as reward_setup

    for name in ("bert", "modernbert", "t5"):  # an encoder once got as far as AutoModelForCausalLM
        kind = FAMILIES[name].kind
        with pytest.raises(SpecError, match=f"method 'dpo' tunes a decoder .* is an {kind}$"):
            align_setup(str(families[name]), "dpo", ALIGN_HYPER, ALIGN_OPTIONS)
    with pytest.raises(SpecError, match="'reward' puts a scalar head .* is an encoder-decoder$"):
        reward_setup(str(families["bart"]), REWARD_HYPER, AlignOptions())


@pytest.fixture(scope="module")
def llama_adding_bos(families: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a tokenizer that puts BOS before every text, as Llama 3's does."""
    import dataclasses
    import shutil

    from adaptflow.tiny_families import family_tokenizer, train_vocabulary

    folder = tmp_path_factory.mktemp("llama-bos") / "llama"
    shutil.copytree(families["llama"], folder)
    family = dataclasses.replace(FAMILIES["llama"], wrap=("<|begin_of_text|>", None))
    family_tokenizer(train_vocabulary(), family).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("base", [*DECODERS, "llama-adding-bos"])
@pytest.mark.parametrize("method", ALIGN_METHODS)
def test_trl_trains_on_what_sft_and_the_preference_metrics_read(
    tmp_path: Path, families: dict[str, Path], llama_adding_bos: Path, base: str, method: str
) -> None:
    """The tokens TRL's trainer reads are ``encode_sft``'s, which SFT trains on and
    ``answer_logps`` (preference_accuracy, reward_margin) scores: the prompt as rendered, with
    no BOS added to the template's (Llama 3's tokenizer adds one: DPO, KTO and GRPO read two)
    and none prepended where the template has none (Phi-3, Mistral: ORPO and SimPO did); and
    the answer ending as the template ends a turn (Gemma: ``<end_of_turn><eos>``, not EOS)."""
    from runtime.prompts import IGNORE, encode_sft
    from runtime.rewards import build_rewards
    from tasks.train.align import _trainer, preference_rows, setup

    folder = llama_adding_bos if base == "llama-adding-bos" else families[base]
    model, tokenizer, peft = setup(str(folder), method, ALIGN_HYPER, ALIGN_OPTIONS)
    rows = _align_rows(method)
    records = preference_rows(tokenizer, rows, method)
    arguments = {
        "output_dir": str(tmp_path), "max_steps": 1, "per_device_train_batch_size": 4,
        "max_length": ALIGN_HYPER.max_length, "report_to": "none", "use_cpu": True,
        "save_strategy": "no",
        "bf16": False,
    }  # fmt: skip
    rewards = build_rewards([{"kind": "exact_match"}]) if method == "grpo" else None
    trainer = _trainer(method, model, tokenizer, records, arguments, ALIGN_OPTIONS, peft, rewards)
    sft = encode_sft(tokenizer, rows[0]["text"], rows[0]["target"], ALIGN_HYPER.max_length)
    start = next(i for i, label in enumerate(sft.labels) if label != IGNORE)
    prompt, answer = sft.input_ids[:start], sft.labels[start:]
    assert prompt.count(tokenizer.bos_token_id) == (base in ("llama", "llama-adding-bos", "gemma"))
    if method == "grpo":  # text prompts are tokenized by the trainer's tokenizer at each step
        assert trainer.processing_class(text=[records[0]["prompt"]])["input_ids"] == [prompt]
        return
    row = trainer.train_dataset[0]
    if method in ("orpo", "simpo"):
        assert row["prompt_input_ids"] == prompt
        assert row["chosen_input_ids"] == prompt + answer
        assert [label for label in row["chosen_labels"] if label != IGNORE] == answer
    else:
        assert row["prompt_ids"] == prompt
        assert row["chosen_ids" if method == "dpo" else "completion_ids"] == answer


def test_a_reward_model_reads_the_prompt_as_rendered(
    families: dict[str, Path], llama_adding_bos: Path
) -> None:
    """A decoder's input is the rendered prompt, answer and EOS as they are (one BOS, the
    template's); an encoder's is wrapped in its own special tokens."""
    from runtime.loading import load_base_tokenizer
    from runtime.prompts import render_prompt
    from runtime.reward_model import reward_ids

    llama = load_base_tokenizer(str(llama_adding_bos))
    ids = reward_ids(llama, "hi", "Hello.", 64, decoder=True)
    rendered = render_prompt(llama, "hi") + "Hello." + llama.eos_token
    assert ids == llama(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(llama.bos_token_id) == 1
    bert = load_base_tokenizer(str(families["bert"]))
    ids = reward_ids(bert, "hi", "Hello.", 64, decoder=False)
    assert (ids[0], ids[-1]) == (bert.cls_token_id, bert.sep_token_id)


# -- QLoRA: a LoRA over a 4-bit base (CUDA and bitsandbytes) ---------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_qlora_trains_a_lora_over_a_4bit_base(families: dict[str, Path], name: str) -> None:
    """``method: qlora``: every block's projections load as NF4 4-bit weights, the LoRA on the
    family's default targets (Phi-3: adaptflow's ``qkv_proj``) is all that trains, and a step
    moves it."""
    from adaptflow.hardware import qlora_missing, this_machine

    missing = qlora_missing(this_machine())
    if missing:
        pytest.skip(f"method 'qlora' needs {' and '.join(missing)}")
    import bitsandbytes

    from tasks.train.sft import setup

    model, tokenizer, family = setup(str(families[name]), "qlora", Hyper())
    assert trainable_parameters(model)[0] == decoder_expected(name, "lora")
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    projections = {
        n: m
        for n, m in model.named_modules()
        if ".layers." in n and "lora_" not in n and isinstance(m, torch.nn.Linear)
    }
    # q, k, v, o, gate, up, down; Phi-3 fuses qkv and gate_up
    assert len(projections) == LAYERS * (4 if name == "phi3" else 7)
    for n, module in projections.items():
        assert isinstance(module, bitsandbytes.nn.Linear4bit), n
        assert module.weight.dtype == torch.uint8 and module.weight.quant_type == "nf4", n
    device = next(p.device for p in model.parameters() if p.requires_grad)
    assert device.type == "cuda"
    batch = _generative_batch(tokenizer, family)
    _one_step(model, {key: value.to(device) for key, value in batch.items()})
