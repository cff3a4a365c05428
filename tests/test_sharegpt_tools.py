"""ShareGPT conversations, content parts and tool calling: reading, curation and SFT encoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from adaptflow.catalogue import resolve_base_model
from runtime.prompts import IGNORE, Encoded, encode_sft, render_prompt, renders_tools, source_text
from tasks.curate.records import (
    Fields,
    Quarantined,
    Record,
    detect_format,
    read_records,
    record_rows,
)
from tasks.curate.stage import CurationInputs, curate_dataset

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
#: ``TOOLS`` as records keep them (OpenAI's wrapped form).
WRAPPED = [{"type": "function", "function": TOOLS[0]}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def _lines(path: Path, lines: list[object]) -> Path:
    """Write each item as one JSONL line (strings are written as they are)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _reasons(quarantined: list[Quarantined]) -> list[tuple[int, str]]:
    return [(q.line, q.reason) for q in quarantined]


def _say(speaker: str, value: object) -> dict:
    return {"from": speaker, "value": value}


def _text(*texts: str) -> list[dict[str, str]]:
    """Content as LLaMA-Factory v1 text parts (``value``, not OpenAI's ``text``)."""
    return [{"type": "text", "value": text} for text in texts]


def _say_hi() -> list[dict]:
    return [_say("human", "Hi"), _say("gpt", "Hello.")]


def _call(name: str = "get_weather", **arguments: object) -> str:
    """A ShareGPT function_call value, as LLaMA-Factory writes it (JSON text)."""
    return json.dumps({"name": name, "arguments": arguments or {"city": "Paris"}})


# --- ShareGPT ------------------------------------------------------------------------------


def test_sharegpt_conversations_and_reasons(tmp_path: Path) -> None:
    lines: list[object] = [
        # 1: plain two-exchange chat with a system field
        {
            "system": "Be brief.",
            "conversations": [
                _say("human", "Hi"), _say("gpt", "Hello."),
                _say("human", "2+2?"), _say("gpt", "4"),
            ],
        },
        # 2: a tool call with tools as a JSON string (LLaMA-Factory's form)
        {
            "conversations": [
                _say("human", "Weather in Paris?"),
                _say("function_call", _call()),
                _say("observation", '{"temperature": 18}'),
                _say("gpt", "It is 18 degrees."),
            ],
            "tools": json.dumps(TOOLS),
        },
        # 3: a system turn, empty tools string, value as v1 text parts
        {
            "conversations": [
                _say("system", "Answer in French."),
                _say("human", _text("Bonjour", "!")),
                _say("gpt", "Salut."),
            ],
            "tools": "",
        },
        {"conversations": [_say("human", "a"), _say("bot", "b")]},
        {"conversations": [_say("human", "a"), _say("human", "b"), _say("gpt", "c")]},
        {"conversations": [_say("human", "a"), _say("gpt", "b"), _say("human", "c")]},
        {"conversations": [_say("human", "a"), _say("function_call", _call()), _say("gpt", "b")]},
        {"conversations": [_say("human", "a"), _say("function_call", _call())]},
        {"conversations": [_say("human", "a"), _say("observation", "18"), _say("gpt", "b")]},
        {"conversations": [_say("human", "a"), _say("function_call", "{no"), _say("gpt", "b")]},
        {
            "conversations": [
                _say("human", "a"), _say("function_call", _call("get_time")),
                _say("observation", "noon"), _say("gpt", "b"),
            ],
            "tools": TOOLS,
        },
        {"system": "x", "conversations": [_say("system", "y"), *_say_hi()]},
        {"conversations": [_say("human", "a"), _say("gpt", "b")], "tools": 5},
        {"conversations": [_say("human", [{"type": "image", "value": "x"}]), _say("gpt", "b")]},
        {"conversations": [_say("human", "Q")], "chosen": _say("gpt", "A"), "rejected": {}},
        {"messages": [{"role": "user", "content": "a"}]},
    ]  # fmt: skip
    path = _lines(tmp_path / "sharegpt.jsonl", lines)
    result = read_records(path, Fields(format="sharegpt"))
    assert [(r.id, r.text, r.target) for r in result.records] == [
        ("1", "2+2?", "4"),
        ("2", "Weather in Paris?", "It is 18 degrees."),
        ("3", "Bonjour!", "Salut."),
    ]
    one, two, three = result.records
    assert one.context == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    assert (one.steps, one.tools) == (None, None)
    assert two.context is None
    assert two.steps == [
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temperature": 18}'},
    ]
    assert two.tools == WRAPPED
    assert (three.context, three.tools) == (
        [{"role": "system", "content": "Answer in French."}],
        None,
    )
    assert _reasons(result.quarantined) == [
        (
            4,
            "conversations[1].from must be one of 'system', 'human', 'gpt', 'function_call', "
            "'observation', got 'bot'",
        ),
        (5, "conversations[1].from must be 'gpt' or 'function_call', got 'human'"),
        (6, "the last turn of 'conversations' must be from 'gpt'"),
        (7, "conversations[1]: function_call 'get_weather' is not followed by an observation"),
        (8, "conversations[1]: function_call 'get_weather' is not followed by an observation"),
        (9, "conversations[1]: an observation must follow a function_call"),
        (
            10,
            "conversations[1].value of a function_call must be JSON, a call {'name', "
            "'arguments'} or a list of them: Expecting property name enclosed in double quotes",
        ),
        (11, "a tool call names 'get_time', which 'tools' does not offer (get_weather)"),
        (12, "both a 'system' field and a system turn in 'conversations'; keep one"),
        (
            13,
            "field 'tools' must be a list of function schemas (or a JSON string of one), got int",
        ),
        (14, "conversations[0].value[0] must be a text part {'type': 'text', 'text': ...}"),
        (
            15,
            "a ShareGPT ranking record (with 'chosen' and 'rejected'): read it with "
            "data.format 'preference'",
        ),
        (16, "missing field 'conversations'"),
    ]
    assert result.input == len(lines) == len(result.records) + len(result.quarantined)


def test_auto_detects_sharegpt_but_not_its_ranking_form(tmp_path: Path) -> None:
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"conversations": [], "chosen": {}, "rejected": {}}) == "preference"
    path = tmp_path / "data.json"  # LLaMA-Factory's files are one JSON array
    path.write_text(
        json.dumps(
            [
                {"conversations": [_say("human", "Hi"), _say("gpt", "Hello.")]},
                {"conversations": [_say("human", "Hi"), _say("human", "Hello.")]},
            ]
        )
    )
    result = read_records(path, Fields(format="auto"))
    assert [(r.id, r.text, r.target) for r in result.records] == [("1", "Hi", "Hello.")]
    assert _reasons(result.quarantined) == [
        (1, "conversations[1].from must be 'gpt' or 'function_call', got 'human'")
    ]


# --- OpenAI messages with parts and tools ------------------------------------------------


def test_openai_content_parts_and_tool_calls(tmp_path: Path) -> None:
    user = {"role": "user", "content": "Weather in Paris?"}
    answer = {"role": "assistant", "content": "It is 18 degrees."}
    calling = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    result_turn = {"role": "tool", "tool_call_id": "call_1", "content": "18"}
    bad_call = {"function": {"name": "f", "arguments": "{"}}
    lines: list[object] = [
        {"messages": [user, calling, result_turn, answer], "tools": WRAPPED},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": t} for t in ("Hi ", "you")]},
                {"role": "assistant", "content": [{"type": "text", "value": "Hello."}]},
            ]
        },
        {"messages": [user, calling, {**result_turn, "tool_call_id": "call_9"}, answer]},
        {"messages": [user, calling, answer]},
        {"messages": [user, {"role": "tool", "tool_call_id": "call_1", "content": "18"}, answer]},
        {"messages": [user, calling, result_turn, result_turn, answer]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "url": "x"}]}, answer]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "text": "x"}]}, answer]},
        {"messages": [user, {**calling, "tool_calls": [bad_call]}]},
        {"messages": [user, calling, result_turn, {"role": "user", "content": "and?"}, answer]},
        {"messages": [user, calling, result_turn]},
    ]  # fmt: skip
    result = read_records(_lines(tmp_path / "chat.jsonl", lines), Fields(format="messages"))
    first, second = result.records
    assert (first.text, first.target, first.context, first.tools) == (
        "Weather in Paris?",
        "It is 18 degrees.",
        None,
        WRAPPED,
    )
    # arguments sent as a JSON string are kept as the object chat templates write
    assert first.steps == [
        {"role": "assistant", "content": "", "tool_calls": [CALL | {"id": "call_1"}]},
        {"role": "tool", "content": "18", "tool_call_id": "call_1"},
    ]
    assert (second.text, second.target, second.steps) == ("Hi you", "Hello.", None)
    assert _reasons(result.quarantined) == [
        (3, "messages[2].tool_call_id 'call_9' matches no earlier tool call awaiting a result"),
        (4, "messages[1]: tool call 'get_weather' (id 'call_1') has no tool turn answering it"),
        (5, "messages[1].tool_call_id 'call_1' matches no earlier tool call awaiting a result"),
        (6, "messages[3].tool_call_id 'call_1' matches no earlier tool call awaiting a result"),
        (7, "messages[0].content[0] must be a text part {'type': 'text', 'text': ...}"),
        (8, "messages[0].content[0] must be a text part {'type': 'text', 'text': ...}"),
        (
            9,
            "messages[1].tool_calls[0].function.arguments is not valid JSON: "
            "Expecting property name enclosed in double quotes",
        ),
        (10, "messages[3].role must be 'assistant', got 'user'"),
        (11, "last message must be from the assistant"),
    ]
    assert result.input == len(lines)


def test_tool_records_keep_their_steps_through_curation(tmp_path: Path) -> None:
    lines = [
        {
            "id": f"r{i}",
            "conversations": [
                _say("human", f"Weather in city {i}? Mail me at user{i}@example.org"),
                _say("function_call", _call(city=f"city {i}")),
                _say("observation", f"{10 + i} degrees"),
                _say("gpt", f"It is {10 + i} degrees in city {i}."),
            ],
            "tools": TOOLS,
        }
        for i in range(8)
    ]
    data = _lines(tmp_path / "tools.jsonl", lines)
    inputs = CurationInputs(
        name="tools",
        train=data,
        eval=None,
        fields=Fields(format="sharegpt", id="id"),
        eval_fraction=0.25,
        seed=1,
        needs_labels=False,
        task="instruction",
    )
    summary = curate_dataset(inputs, tmp_path / "out", tmp_path)
    assert (summary["input"], summary["kept"], summary["quarantined"]) == (8, 8, 0)
    rows = [
        json.loads(line)
        for name in ("train_file", "eval_file")
        for line in Path(summary[name]).read_text().splitlines()
    ]
    row = next(r for r in rows if r["id"] == "r3")
    assert row == {
        "id": "r3",
        "text": "Weather in city 3? Mail me at <EMAIL>",
        "target": "It is 13 degrees in city 3.",
        "steps": [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "city 3"}},
                    }
                ],
            },
            {"role": "tool", "content": "13 degrees"},
        ],
        "tools": WRAPPED,
    }
    # the curated row reads back into the same record fields
    assert record_rows([Record(**row)]) == [row]


# --- rendering and loss masks --------------------------------------------------------------

#: A ChatML template that renders tools as Qwen2.5's does: the schemas in the system turn,
#: calls in <tool_call> blocks of the assistant's turn, results in <tool_response> blocks of a
#: user turn.
CHATML_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SYSTEM = [{"role": "system", "content": "Be brief."}]
STEPS = [
    {"role": "assistant", "content": "", "tool_calls": [CALL | {"id": "call_1"}]},
    {"role": "tool", "content": "18", "tool_call_id": "call_1"},
]


def _tiny_tokenizer() -> Any:
    """A fresh copy of tiny-gpt's tokenizer (the tests change it)."""
    return AutoTokenizer.from_pretrained(resolve_base_model("tiny-gpt"))


@pytest.fixture(scope="module")
def chatml() -> Any:
    """tiny-gpt's tokenizer with ChatML's special tokens and a tool-aware template."""
    tokenizer = _tiny_tokenizer()
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML_TOOLS
    return tokenizer


def _trained(tokenizer: Any, item: Encoded) -> str:
    """The tokens of ``item`` that carry loss, decoded."""
    kept = [i for i, label in zip(item.input_ids, item.labels, strict=True) if label != IGNORE]
    return str(tokenizer.decode(kept))


def _expected(tokenizer: Any, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids, labels


def test_tool_conversations_render_through_the_template_with_loss_on_assistant_turns(
    chatml: Any,
) -> None:
    assert renders_tools(chatml)
    tools_block = "# Tools\n<tools>\n" + json.dumps(WRAPPED[0], ensure_ascii=False) + "\n</tools>"
    prompt = (
        f"<|im_start|>system\nBe brief.\n\n{tools_block}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )
    call = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>"
    )
    result = (
        "\n<|im_start|>user\n<tool_response>\n18\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    answer = "It is 18 degrees.<|im_end|>"
    item = encode_sft(chatml, "Weather in Paris?", "It is 18 degrees.", 512, SYSTEM, WRAPPED, STEPS)
    ids, labels = _expected(
        chatml, [(prompt, False), (call, True), (result, False), (answer, True)]
    )  # the template's newline after the last trained turn teaches nothing: not kept
    assert (item.input_ids, item.labels, item.truncated) == (ids, labels, False)
    # what carries loss, decoded: the call and the answer, each ending at the EOS (<|im_end|>)
    trained = _trained(chatml, item)
    assert trained == call + answer
    # serving and scoring see the same prompt: everything up to the final answer
    assert (
        render_prompt(chatml, "Weather in Paris?", SYSTEM, WRAPPED, STEPS) == prompt + call + result
    )
    # an earlier exchange's tool call is context: it carries no loss
    earlier = [
        {"role": "user", "content": "Weather in Paris?"},
        *STEPS,
        {"role": "assistant", "content": "18."},
    ]
    again = encode_sft(chatml, "And tomorrow?", "Warmer.", 512, earlier, WRAPPED)
    trained = _trained(chatml, again)
    assert trained == "Warmer.<|im_end|>"


def test_a_template_without_tools_gets_them_as_text(chatml: Any) -> None:
    tokenizer = _tiny_tokenizer()  # tiny-gpt's own template renders no tools
    assert not renders_tools(tokenizer)
    item = encode_sft(
        tokenizer, "Weather in Paris?", "It is 18 degrees.", 512, None, WRAPPED, STEPS
    )
    text = tokenizer.decode(item.input_ids)
    assert '{"name": "get_weather", "description"' in text.split("<|user|>")[0]  # the schemas
    assert "<|user|>\n<tool_response>\n18\n</tool_response>\n" in text
    trained = _trained(tokenizer, item)
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|endoftext|>It is 18 degrees.<|endoftext|>"
    )
    # a base without a template: the plain format, the same pieces carrying loss
    tokenizer.chat_template = None
    item = encode_sft(
        tokenizer, "Weather in Paris?", "It is 18 degrees.", 512, None, WRAPPED, STEPS
    )
    trained = _trained(tokenizer, item)
    assert trained.endswith("</tool_call><|endoftext|>It is 18 degrees.<|endoftext|>")
    assert render_prompt(tokenizer, "Weather in Paris?", None, WRAPPED, STEPS).endswith(
        "### Instruction:\nWeather in Paris?\n\n### Response:\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n\n'
        "### Instruction:\n<tool_response>\n18\n</tool_response>\n\n### Response:\n"
    )
    # records without tools encode exactly as before
    plain = encode_sft(chatml, "hi", "hello", 64)
    prompt = chatml(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )
    answer = chatml("hello", add_special_tokens=False)["input_ids"] + [chatml.eos_token_id]
    assert plain.input_ids == prompt["input_ids"] + answer
    assert source_text("Q", None, WRAPPED, STEPS).startswith("System: You may call these tools.")


def test_long_tool_conversations_keep_the_trained_end(chatml: Any) -> None:
    args = ("Weather in Paris?", "It is 18 degrees.")
    full = encode_sft(chatml, *args, 512, SYSTEM, WRAPPED, STEPS)
    start = next(i for i, label in enumerate(full.labels) if label != IGNORE)
    budget = len(full.input_ids) - start + 100  # the calls and answer, and part of the prompt
    assert start > 100 and not full.truncated
    item = encode_sft(chatml, *args, budget, SYSTEM, WRAPPED, STEPS)
    # the front of the prompt (system turn, schemas) is cut; every trained token stays
    assert item.truncated
    assert (item.input_ids, item.labels) == (full.input_ids[-budget:], full.labels[-budget:])


def test_evaluation_answers_a_tool_conversation_as_it_was_trained(chatml: Any) -> None:
    """The gate's prompts and perplexity see the tools and steps the training example saw."""
    import torch
    from transformers import AutoModelForCausalLM

    from runtime.generate import answer_nll, model_inputs

    question, answer = "Weather in Paris?", "Sunny, 21 C."
    rendered = model_inputs(chatml, [question], "decoder", [SYSTEM], tools=[TOOLS], steps=[STEPS])
    assert rendered == [render_prompt(chatml, question, SYSTEM, tools=TOOLS, steps=STEPS)]
    plain = model_inputs(chatml, [question], "decoder", [SYSTEM])
    assert plain != rendered and "get_weather" in rendered[0] and "get_weather" not in plain[0]
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model("tiny-gpt")).eval()
    model.resize_token_embeddings(len(chatml))
    item = encode_sft(chatml, question, answer, 256, SYSTEM, tools=TOOLS, steps=STEPS)
    with torch.inference_mode():
        ids = torch.tensor([item.input_ids])
        labels = torch.tensor([item.labels])
        expected = float(model(input_ids=ids, labels=labels).loss)
    nll, tokens = answer_nll(
        model, chatml, [(question, answer)], "decoder", 256, [SYSTEM], [TOOLS], [STEPS]
    )
    scored = sum(1 for label in item.labels[1:] if label != IGNORE)
    assert tokens == scored and nll / tokens == pytest.approx(expected, rel=1e-5)


def test_generation_stops_at_every_end_the_model_declares() -> None:
    from types import SimpleNamespace

    from runtime.generate import stop_ids

    tokenizer = SimpleNamespace(eos_token_id=7)
    several = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[9, 7, 11]))
    assert stop_ids(several, tokenizer) == [7, 9, 11]  # Llama 3's end of turn and of text
    one = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=7))
    assert stop_ids(one, tokenizer) == [7]
    assert stop_ids(SimpleNamespace(), tokenizer) == [7]


def test_an_adapter_package_keeps_the_generation_config_it_was_trained_with(
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    from runtime.loading import load_generator
    from tasks.train.methods import MethodOptions, apply_method
    from tasks.train.peft import Hyper
    from tasks.train.sft import save

    base = AutoModelForCausalLM.from_pretrained(resolve_base_model("tiny-gpt"))
    assert base.generation_config.eos_token_id != 5
    model = apply_method(base, "lora", "decoder", MethodOptions())
    model.generation_config.eos_token_id = [5, 6]  # e.g. an end of turn and an end of text
    save(model, _tiny_tokenizer(), tmp_path, "decoder", "lora", "tiny-gpt", Hyper())
    stored = json.loads((tmp_path / "generation_config.json").read_text())
    assert stored["eos_token_id"] == [5, 6]
    loaded, _, _ = load_generator(tmp_path)
    assert loaded.generation_config.eos_token_id == [5, 6]
