"""Weights load from safetensors only unless the spec sets ``allow_pickle``; no remote code runs.

transformers 5 no longer writes pickle-based weights (``save_pretrained`` is safetensors only),
so the pickle-only model folders here are written the way old checkpoints were: the config
and ``torch.save`` of the state dict as ``pytorch_model.bin``.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO, write_jsonl

from adaptflow.catalogue import resolve_base_model
from adaptflow.errors import RegistryError, SpecError
from adaptflow.spec import parse_spec
from tasks.train.peft import Hyper

NAMES_THE_FLAG = "refused unless the spec sets allow_pickle: true"


def _pickled(folder: Path, model: torch.nn.Module, tokenizer_from: str | None = None) -> Path:
    folder.mkdir(parents=True)
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if tokenizer_from is not None:
        for item in Path(resolve_base_model(tokenizer_from)).iterdir():
            if "token" in item.name or item.name in ("vocab.txt", "special_tokens_map.json"):
                shutil.copy(item, folder / item.name)
    assert not list(folder.glob("*.safetensors"))
    return folder


def _pickled_gpt(folder: Path) -> Path:
    from transformers import AutoConfig, GPT2LMHeadModel

    config = AutoConfig.from_pretrained(resolve_base_model("tiny-gpt"))
    config.n_layer = 1
    return _pickled(folder, GPT2LMHeadModel(config), tokenizer_from="tiny-gpt")


def _pickled_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    vocab = len((Path(resolve_base_model("minilm")) / "vocab.txt").read_text().splitlines())
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return _pickled(folder, BertModel(config), tokenizer_from="minilm")


def test_spec_flag_is_off_by_default(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "b"}])
    raw = {"name": "p", "task": "classification", "data": {"train": "t.jsonl"}}
    assert parse_spec(raw, base_dir=tmp_path).allow_pickle is False
    assert parse_spec(raw | {"allow_pickle": True}, base_dir=tmp_path).allow_pickle is True
    with pytest.raises(SpecError, match="allow_pickle: Input should be a valid boolean"):
        parse_spec(raw | {"allow_pickle": "sometimes"}, base_dir=tmp_path)


def test_generative_base_and_its_adapter_package(tmp_path: Path) -> None:
    from runtime.loading import load_base, load_generator
    from tasks.train.sft import save, setup

    folder = _pickled_gpt(tmp_path / "gpt-bin")
    with pytest.raises(SpecError) as refused:
        setup(str(folder), "lora", Hyper())
    assert NAMES_THE_FLAG in str(refused.value) and "pytorch_model.bin" in str(refused.value)
    model, tokenizer, family = setup(str(folder), "lora", Hyper(), allow_pickle=True)
    assert model.base_model.model.config.n_layer == 1
    # the package remembers the flag, so serving loads the base the same way
    save(model, tokenizer, tmp_path / "pkg", family, "lora", str(folder), Hyper(), True)
    manifest = json.loads((tmp_path / "pkg" / "adaptflow_model.json").read_text())
    assert manifest["options"]["allow_pickle"] is True
    assert load_generator(tmp_path / "pkg")[2].method == "lora"
    # an adapter in pickle form (PEFT would fall back to it) is not an adaptflow package
    from safetensors.torch import load_file

    adapter = tmp_path / "pkg" / "adapter"
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").rename(tmp_path / "adapter.safetensors")
    with pytest.raises(RegistryError, match="holds no adapter_model.safetensors"):
        load_generator(tmp_path / "pkg")
    (tmp_path / "adapter.safetensors").rename(adapter / "adapter_model.safetensors")
    manifest["options"].pop("allow_pickle")
    (tmp_path / "pkg" / "adaptflow_model.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="allow_pickle: true"):
        load_generator(tmp_path / "pkg")
    # with the flag, a safetensors model still loads from its safetensors
    assert load_base("tiny-gpt", allow_pickle=True).config.n_layer == 4


def test_encoder_classifier_and_sentence_encoder(tmp_path: Path) -> None:
    from runtime.knn import embed
    from runtime.loading import load_encoder
    from tasks.train import peft

    folder = _pickled_bert(tmp_path / "bert-bin")
    with pytest.raises(SpecError, match=NAMES_THE_FLAG):
        peft.setup(str(folder), ["a", "b"], "lora", Hyper())
    model = peft.setup(str(folder), ["a", "b"], "lora", Hyper(), allow_pickle=True)
    assert model.base_model.model.config.hidden_size == 32
    with pytest.raises(SpecError, match=NAMES_THE_FLAG):
        load_encoder(str(folder))
    assert embed(load_encoder(str(folder), allow_pickle=True), ["a text"]).shape == (1, 32)


def test_a_pickled_cross_encoder_is_refused_unless_allowed(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from runtime.loading import load_reranker

    vocab = len((Path(resolve_base_model("minilm")) / "vocab.txt").read_text().splitlines())
    config = BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
    )  # fmt: skip
    folder = _pickled(tmp_path / "cross-bin", BertForSequenceClassification(config), "minilm")
    with pytest.raises(SpecError, match=NAMES_THE_FLAG):
        load_reranker(str(folder))
    scores = load_reranker(str(folder), allow_pickle=True).predict([("a query", "a passage")])
    assert len(scores) == 1


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _callee(call: ast.Call) -> str:
    return ast.unparse(call.func)


def test_no_code_passes_trust_remote_code_true_and_weights_load_safely() -> None:
    from runtime.loading import weights_arguments

    assert weights_arguments(False) == {"use_safetensors": True, "trust_remote_code": False}
    assert weights_arguments(True) == {"use_safetensors": None, "trust_remote_code": False}
    model_loads = 0
    for package in ("adaptflow", "runtime", "flows", "tasks", "registry", "benchmarks"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for call in _calls(tree):
                where = f"{path.relative_to(REPO)}:{call.lineno}"
                for keyword in call.keywords:
                    if keyword.arg == "trust_remote_code":
                        value = keyword.value
                        assert isinstance(value, ast.Constant) and value.value is False, where
                callee = _callee(call)
                owner = callee.removesuffix(".from_pretrained")
                # any class's from_pretrained loads weights, except tokenizers and configs
                loads_weights = callee.endswith(".from_pretrained") and not any(
                    part in owner for part in ("Tokenizer", "Config", "Processor")
                )
                if callee == "PeftModel.from_pretrained":
                    # adapters load through runtime.loading.load_adapter (safetensors only)
                    assert path.name == "loading.py" and package == "runtime", where
                    continue
                if loads_weights and package != "benchmarks":
                    # safetensors only, or through weights_arguments (the allow_pickle gate)
                    model_loads += 1
                    safe = any(
                        k.arg == "use_safetensors"
                        and isinstance(k.value, ast.Constant)
                        and k.value.value is True
                        for k in call.keywords
                    )
                    gated = any(
                        k.arg is None and "weights_arguments" in ast.unparse(k.value)
                        for k in call.keywords
                    )
                    assert safe or gated, f"{where}: {callee} may load pickle-based weights"
                sentence_models = ("SentenceTransformer", "CrossEncoder")
                if callee.endswith(sentence_models) and package != "benchmarks":
                    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
                    assert keywords.get("trust_remote_code") == "False", where
                    assert "use_safetensors" in keywords.get("model_kwargs", ""), where
    assert model_loads >= 5  # lm.load_base, lm.load_generator, encoder (2), peft.setup
