"""Answers end as the base's template ends a turn; encoder-decoder sources as generation's.

Issue 19's last template gaps: a Gemma-style base, whose turns end with ``<end_of_turn>`` while
its EOS is ``<eos>``, is fine-tuned to write the turn end it is served with (and generation stops
there); a BART-style source is trained with the ``<s> … </s>`` it is generated with.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_jsonl

from tasks.train.peft import Hyper


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from adaptflow.tiny_families import build_all

    return build_all(tmp_path_factory.mktemp("families"))


def test_a_gemma_model_learns_to_end_its_turn_and_stops_there(
    tmp_path: Path, families: dict[str, Path]
) -> None:
    """Full fine-tuning of the tiny Gemma on short answers: its greedy answers end with
    ``<end_of_turn>`` (the template's turn end, which its generation config does not list), and
    generation stops on it."""
    from runtime.generate import Generator, stop_ids
    from tasks.train.sft import train_generator

    answers = {"Sky": "Blue.", "Grass": "Green.", "Snow": "White.", "Coal": "Black."}
    rows = [
        {"id": str(i), "text": f"Colour of {thing}? (card {i})", "target": answer}
        for i, (thing, answer) in enumerate(list(answers.items()) * 10)
    ]
    hyper = Hyper(epochs=20, batch_size=8, learning_rate=1e-2, max_length=32, max_new_tokens=48,
                  checkpoint_steps=1000, seed=5)  # fmt: skip
    result = train_generator(
        write_jsonl(tmp_path / "train.jsonl", rows), str(families["gemma"]), "full", hyper,
        tmp_path / "package", tmp_path / "checkpoints",
    )  # fmt: skip
    generator = Generator.from_package(Path(result.package_dir))
    tokenizer, model = generator.tokenizer, generator.model
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id  # <eos> only
    assert stop_ids(model, tokenizer) == [tokenizer.eos_token_id, end_of_turn]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row["text"]}], add_generation_prompt=True, tokenize=False
        )
        for row in rows[:8]
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **batch, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids(model, tokenizer),
        )[:, batch["input_ids"].shape[1]:]  # fmt: skip
    for row, ids in zip(rows[:8], out.tolist(), strict=True):
        stop = ids.index(end_of_turn)  # the turn end is what the model writes after the answer
        assert stop <= 6, ids
        assert tokenizer.decode(ids[:stop]) == row["target"]
    assert generator.predict([row["text"] for row in rows[:8]]) == [r["target"] for r in rows[:8]]


@pytest.mark.parametrize(("name", "first"), [("bart", ["<s>"]), ("t5", [])])
def test_encoder_decoder_sources_carry_the_specials_generation_adds(
    families: dict[str, Path], name: str, first: list[str]
) -> None:
    from runtime.loading import load_base_tokenizer
    from runtime.prompts import encode_seq2seq

    tokenizer = load_base_tokenizer(str(families[name]))
    short = encode_seq2seq(tokenizer, "hello world", "ok", 64)
    tokens = tokenizer.convert_ids_to_tokens(short.input_ids)
    assert tokens[: len(first)] == first and tokens[-1] == "</s>"
    assert tokenizer.convert_ids_to_tokens(short.labels) == ["ok", "</s>"]
    text = "hello world " * 20
    long = encode_seq2seq(tokenizer, text, "ok", 10)
    assert long.truncated and len(long.input_ids) == 10
    # generation's encoding (runtime.generate: specials on, the start cut) is the same ids
    tokenizer.truncation_side = "left"
    for item, source, limit in ((short, "hello world", 64), (long, text, 10)):
        served = tokenizer(source, truncation=True, max_length=limit)["input_ids"]
        assert item.input_ids == served


def test_a_template_that_refuses_a_system_turn_gets_it_in_the_first_user_turn(
    families: dict[str, Path],
) -> None:
    from runtime.loading import load_base_tokenizer
    from runtime.prompts import IGNORE, encode_sft, render_prompt

    gemma = load_base_tokenizer(str(families["gemma"]))
    system = [{"role": "system", "content": "Be brief."}]
    prompt = render_prompt(gemma, "hi", system)
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"
    )
    item = encode_sft(gemma, "hi", "Yes.", 64, system)
    answer = [t for t in item.labels if t != IGNORE]
    assert gemma.decode(item.input_ids[: item.labels.index(answer[0])]) == prompt
    assert gemma.decode(answer) == "Yes.<end_of_turn><eos>"
    earlier = [*system, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert render_prompt(gemma, "hi", earlier).startswith(
        "<bos><start_of_turn>user\nBe brief.\n\na<end_of_turn>\n<start_of_turn>model\nb"
    )
    # a template that fails for another reason says so, as a ValueError with its message
    gemma.chat_template = "{{ raise_exception('Roles must alternate') }}"
    with pytest.raises(ValueError, match="cannot render this conversation: Roles must alternate"):
        render_prompt(gemma, "hi")
