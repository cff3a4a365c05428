"""Tiny random-initialised models of real architectures, saved as Hugging Face folders.

The test matrix of issue 19 runs every method on the model families users bring (decoders
Llama, Qwen2, Mistral, Gemma, Phi-3; encoders BERT, RoBERTa, DeBERTa-v2, ModernBERT;
encoder-decoders T5 and BART). No hub here, so each is built from its transformers config
class at a toy size (2 layers, width 64, a 512-token vocabulary), with random weights, and
saved with ``save_pretrained``: from then on it loads through the normal ``from_pretrained``
route on its folder, exactly like a checkpoint downloaded from the hub.

All of them share one byte-level BPE vocabulary trained here with ``tokenizers`` (in well
under a second), holding the special tokens of every family; each family's tokenizer names
its own BOS/EOS/PAD, adds its own special tokens around a text (``[CLS] … [SEP]`` for
encoders, ``… </s>`` for T5) and, for decoders, carries the chat template of its real
counterpart: ChatML (Qwen2: ``<|im_start|>`` … ``<|im_end|>``, EOS ``<|im_end|>``), Llama 3
(``<|start_header_id|>`` … ``<|eot_id|>``, EOS ``<|eot_id|>``), Gemma
(``<start_of_turn>`` … ``<end_of_turn>``, whose EOS ``<eos>`` is *not* the end of a turn,
as in the real Gemma) and Phi-3 (``<|user|>`` … ``<|end|>``). Mistral is left without a chat
template: a plain base model, the case the ``### Instruction`` format is for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Every family's special tokens, first in the shared vocabulary (so their ids are fixed).
SPECIALS = (
    "<|pad|>", "<|endoftext|>", "<|unk|>",
    "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
    "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
    "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>",
)  # fmt: skip
VOCAB_SIZE = 512
WIDTH = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # grouped-query attention where the family has it: k/v are narrower than q
FFN = 128
POSITIONS = 256

#: ChatML, as Qwen2 writes it (without Qwen's default system turn).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
#: The Llama 3 format.
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
#: Gemma's format: the assistant is ``model``, a system turn is not supported.
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
#: Phi-3's format.
PHI3 = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + "
    "'<|end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
    "{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One architecture: how its config is made and what its tokenizer looks like."""

    name: str
    kind: str  # decoder | encoder | encoder-decoder
    config: Callable[[dict[str, int]], Any]  # special-token ids -> the transformers config
    tokens: dict[str, str]  # tokenizer roles (bos_token, eos_token, pad_token, …) -> token
    template: str | None = None
    #: ``$A`` wrapped in these tokens when the tokenizer adds special tokens (encoders, T5, BART)
    wrap: tuple[str | None, str | None] = (None, None)
    notes: dict[str, Any] = field(default_factory=dict)


def _llama(ids: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
        pad_token_id=ids["<|pad|>"], tie_word_embeddings=False,
    )  # fmt: skip


def _qwen2(ids: dict[str, int]) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
    )  # fmt: skip


def _mistral(ids: dict[str, int]) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
        head_dim=WIDTH // HEADS, sliding_window=None,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<|pad|>"],
        tie_word_embeddings=False,
    )  # fmt: skip


def _gemma(ids: dict[str, int]) -> Any:
    from transformers import GemmaConfig

    return GemmaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=1, head_dim=WIDTH // HEADS,
        max_position_embeddings=POSITIONS, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
        pad_token_id=ids["<|pad|>"], tie_word_embeddings=True,
    )  # fmt: skip


def _phi3(ids: dict[str, int]) -> Any:
    from transformers import Phi3Config

    return Phi3Config(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=POSITIONS,
        original_max_position_embeddings=POSITIONS, bos_token_id=ids["<s>"],
        eos_token_id=ids["<|end|>"], pad_token_id=ids["<|pad|>"], tie_word_embeddings=False,
    )  # fmt: skip


def _bert(ids: dict[str, int]) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS,
        pad_token_id=ids["<|pad|>"],
    )  # fmt: skip


def _roberta(ids: dict[str, int]) -> Any:
    from transformers import RobertaConfig

    # RoBERTa's positions start after the padding index, hence two more of them
    return RobertaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS + 2,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], type_vocab_size=1,
        pad_token_id=ids["<|pad|>"],
    )  # fmt: skip


def _deberta_v2(ids: dict[str, int]) -> Any:
    from transformers import DebertaV2Config

    # as DeBERTa-v3: relative attention both ways, no absolute position embeddings
    config = DebertaV2Config(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=POSITIONS,
        relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1, type_vocab_size=0, pad_token_id=ids["<|pad|>"],
    )  # fmt: skip
    # v3's settings the modelling code reads from the config but the class does not declare
    config.position_buckets = 32
    config.norm_rel_ebd = "layer_norm"
    config.share_att_key = True
    return config


def _modernbert(ids: dict[str, int]) -> Any:
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=WIDTH, intermediate_size=FFN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=POSITIONS,
        local_attention=64, cls_token_id=ids["[CLS]"], sep_token_id=ids["[SEP]"],
        bos_token_id=ids["[CLS]"], eos_token_id=ids["[SEP]"], pad_token_id=ids["<|pad|>"],
    )  # fmt: skip


def _t5(ids: dict[str, int]) -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=VOCAB_SIZE, d_model=WIDTH, d_kv=WIDTH // HEADS, d_ff=FFN, num_layers=LAYERS,
        num_decoder_layers=LAYERS, num_heads=HEADS, eos_token_id=ids["</s>"],
        pad_token_id=ids["<|pad|>"],
        decoder_start_token_id=ids["<|pad|>"],  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )  # fmt: skip


def _bart(ids: dict[str, int]) -> Any:
    from transformers import BartConfig

    return BartConfig(
        vocab_size=VOCAB_SIZE, d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN, max_position_embeddings=POSITIONS, bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"], pad_token_id=ids["<|pad|>"],
        decoder_start_token_id=ids["</s>"], forced_eos_token_id=ids["</s>"],
    )  # fmt: skip


_ENCODER_TOKENS = {
    "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]", "pad_token": "<|pad|>",
    "unk_token": "<|unk|>",
}  # fmt: skip

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama", "decoder", _llama,
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|pad|>"},
            LLAMA3,
        ),
        Family(
            "qwen2", "decoder", _qwen2,
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, CHATML,
        ),
        Family(
            "mistral", "decoder", _mistral,
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<|unk|>"}, None,
        ),
        Family(
            "gemma", "decoder", _gemma,
            {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<|pad|>"}, GEMMA,
        ),
        Family(
            "phi3", "decoder", _phi3,
            {"bos_token": "<s>", "eos_token": "<|end|>", "pad_token": "<|pad|>"}, PHI3,
        ),
        Family("bert", "encoder", _bert, _ENCODER_TOKENS, wrap=("[CLS]", "[SEP]")),
        Family("roberta", "encoder", _roberta, _ENCODER_TOKENS, wrap=("[CLS]", "[SEP]")),
        Family("deberta-v2", "encoder", _deberta_v2, _ENCODER_TOKENS, wrap=("[CLS]", "[SEP]")),
        Family("modernbert", "encoder", _modernbert, _ENCODER_TOKENS, wrap=("[CLS]", "[SEP]")),
        Family(
            "t5", "encoder-decoder", _t5,
            {"eos_token": "</s>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"},
            wrap=(None, "</s>"),
        ),
        Family(
            "bart", "encoder-decoder", _bart,
            {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<|pad|>"}, wrap=("<s>", "</s>"),
        ),
    )
}  # fmt: skip

#: Text the shared vocabulary is trained on: a few standard-library modules' documentation.
TOKENIZER_MODULES = ("json", "textwrap", "string", "calendar", "colorsys", "fractions")


def train_vocabulary(texts: list[str] | None = None) -> Any:
    """The shared byte-level BPE ``tokenizers.Tokenizer``: ``VOCAB_SIZE`` tokens, specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if texts is None:
        from adaptflow.tiny import module_texts

        texts = module_texts(TOKENIZER_MODULES)
    tokenizer = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def family_tokenizer(vocabulary: Any, family: Family) -> Any:
    """``vocabulary`` as ``family``'s transformers tokenizer (special tokens, template)."""
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(vocabulary)
    first, last = family.wrap
    if first or last:
        single = " ".join([*([first] if first else []), "$A", *([last] if last else [])])
        pair = " ".join([single, "$B", *([last] if last else [])])
        present = [t for t in (first, last) if t]
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, backend.token_to_id(t)) for t in present]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=POSITIONS, **family.tokens
    )
    if family.template is not None:
        tokenizer.chat_template = family.template
    return tokenizer


def build_family(name: str, out: Path, vocabulary: Any = None, seed: int = 0) -> Path:
    """Build family ``name`` into ``out``: config, random safetensors weights, tokenizer.

    Decoders and encoder-decoders are saved with their language-model head (``…ForCausalLM``,
    ``…ForConditionalGeneration``), encoders as their masked-LM model, as hub checkpoints are.

    Returns:
        ``out``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    family = FAMILIES[name]
    vocabulary = vocabulary if vocabulary is not None else train_vocabulary()
    ids = {token: vocabulary.token_to_id(token) for token in SPECIALS}
    config = family.config(ids)
    auto = {
        "decoder": AutoModelForCausalLM,
        "encoder": AutoModelForMaskedLM,
        "encoder-decoder": AutoModelForSeq2SeqLM,
    }[family.kind]
    torch.manual_seed(seed)
    model = auto.from_config(config)
    model.save_pretrained(str(out), safe_serialization=True)
    family_tokenizer(vocabulary, family).save_pretrained(str(out))
    record = {"family": name, "kind": family.kind, "parameters": model.num_parameters()}
    (out / "adaptflow_build.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def build_all(root: Path, names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build every family (or ``names``) under ``root``; returns name -> folder."""
    vocabulary = train_vocabulary()
    return {name: build_family(name, root / name, vocabulary) for name in names or tuple(FAMILIES)}
