"""A terminal run shows one bar per training with the loss in it, and no noise (issue 25, 17)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tasks.train.peft import Hyper


def test_training_shows_a_bar_with_the_loss_and_prints_no_log_dicts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from tasks.train import peft

    texts = [f"{word} number {i}" for i in range(24) for word in ("apple", "river")][:32]
    label_ids = [0 if t.startswith("apple") else 1 for t in texts]
    hyper = Hyper(epochs=1, batch_size=4, learning_rate=1e-3)
    model = peft.setup("minilm", ["fruit", "water"], "lora", hyper)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = peft.train(model, _tokenizer(), texts, label_ids, hyper, tmp_path)
    err = capfd.readouterr().err
    assert len(trained.history) == 1  # 8 steps, logged every 5: one loss in the history
    assert "{'loss'" not in err and "grad_norm" not in err  # no printed log dictionaries
    assert "train:" in err and f"loss={trained.history[0][1]:.4g}" in err
    ours = [w for w in caught if "adaptflow" in w.filename or "/tasks/" in w.filename]
    assert not ours, [str(w.message) for w in ours]


def _tokenizer():
    from transformers import AutoTokenizer

    from adaptflow.catalogue import resolve_base_model

    return AutoTokenizer.from_pretrained(resolve_base_model("minilm"))


def test_lora_on_a_gpt2_style_model_needs_no_fan_in_fan_out_warning() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tasks.train.methods import MethodOptions, apply_method, uses_conv1d

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert uses_conv1d(model)
    for method in ("lora", "ia3"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            apply_method(
                GPT2LMHeadModel(model.config), method, "decoder", MethodOptions()
            ).print_trainable_parameters()
        assert not [w for w in caught if "fan_in_fan_out" in str(w.message)], method
