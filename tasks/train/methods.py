"""Which weights each adaptation method trains, for decoder and encoder-decoder models.

PEFT methods go through peft (lora, dora, ia3 and the three virtual-token methods; ``qlora`` is
a LoRA over a base loaded in 4 bits, see ``runtime.loading.load_base``); ``freeze``
trains only the top N transformer blocks (and whatever sits after them: final norm, and the
head when it is not tied to the embeddings); ``full`` trains everything. Every method reports
its trainable and total parameter counts the same way (``trainable_parameters``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adaptflow.errors import SpecError

ADAPTER_METHODS = ("lora", "dora", "ia3", "qlora")
#: Methods that load the base model quantized to 4 bits (bitsandbytes NF4) and train a LoRA.
QUANTIZED_METHODS = ("qlora",)
#: Methods that add virtual tokens in front of every sequence: they cannot be packed (the
#: virtual tokens would appear once per packed row instead of once per example).
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt-tuning", "p-tuning")
PEFT_METHODS = ADAPTER_METHODS + VIRTUAL_TOKEN_METHODS
WEIGHT_METHODS = ("freeze", "full")
GENERATIVE_METHODS = PEFT_METHODS + WEIGHT_METHODS


@dataclass(frozen=True)
class MethodOptions:
    """The method-specific knobs (flattened from the spec's ``train`` block)."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    virtual_tokens: int = 16
    unfrozen_layers: int = 2
    target_modules: str | list[str] = "default"


#: LoRA's ``default`` targets for architectures peft's own table does not name (peft 0.21
#: raises "Please specify target_modules" for them). Both fuse query, key and value into one
#: projection, so the fused projection is the analogue of peft's query/value choice elsewhere.
LORA_DEFAULTS: dict[str, list[str]] = {"phi3": ["qkv_proj"], "modernbert": ["Wqkv"]}
#: IA3's (target, feed-forward) modules for the same architectures: the attention's fused input
#: projection and the MLP's output projection, as peft's table has for Llama and BERT.
IA3_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "phi3": (["qkv_proj", "down_proj"], ["down_proj"]),
    "modernbert": (["Wqkv", "mlp.Wo"], ["mlp.Wo"]),
}


def _model_type(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", ""))


def _adaptable(model: Any) -> list[str]:
    """Names of the modules LoRA can adapt (linear layers, GPT-2's ``Conv1D``, embeddings)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, Conv1D, torch.nn.Embedding)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def lora_targets(model: Any, value: str | list[str]) -> str | list[str] | None:
    """The peft ``target_modules`` for ``train.target_modules`` on ``model``, checked.

    ``default`` is peft's table for the architecture (None), or ``LORA_DEFAULTS`` where peft
    has none; ``all-linear`` stays as it is (peft adapts every linear layer but the output
    head); a list is checked name by name, with peft's rule (a module's full name, or its
    last dotted parts), so a name that matches nothing fails here instead of inside peft.

    Raises:
        SpecError: A listed name matches no layer LoRA can adapt, or ``default`` on an
            architecture nobody has a default for; the message names train.target_modules.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = _model_type(model)
    if value == "default":
        if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            return None
        if model_type in LORA_DEFAULTS:
            return list(LORA_DEFAULTS[model_type])
        raise SpecError(
            f"train.target_modules: 'default' has no meaning for architecture '{model_type}' "
            "(neither peft nor adaptflow knows which of its layers to adapt); use 'all-linear' "
            "or a list of its layer names"
        )
    if value == "all-linear":
        return value
    names = _adaptable(model)
    missing = [t for t in value if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        known = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise SpecError(
            f"train.target_modules: {', '.join(repr(m) for m in missing)} "
            f"match{'es' if len(missing) == 1 else ''} no layer of this "
            f"'{model_type}' model that LoRA can adapt; its layers are named "
            f"{', '.join(known)}"
        )
    return list(value)


#: What trains through ``train.target_modules``: LoRA and its variants.
LORA_ADAPTERS = ("lora", "dora", "qlora")


def check_target_modules(
    base_model: str, family: str, adapter: str, value: str | list[str]
) -> None:
    """``train.target_modules`` checked against the base's layers before any work.

    The same check model setup makes (``lora_targets``), made when the run starts so a typo
    stops it in seconds instead of after curation: the model is built from its config alone
    on PyTorch's ``meta`` device (no weights read, no memory), with the head the family
    trains with. ``adapter`` is what trains (the method, or ``align.adapter`` for preference,
    RL and reward methods); other adapters and ``all-linear`` need no check. A config that
    cannot be read is left to model setup, which reads the real model.

    Raises:
        SpecError: As ``lora_targets``.
    """
    if adapter not in LORA_ADAPTERS or value == "all-linear":
        return
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    from adaptflow.catalogue import model_config

    auto = {"decoder": AutoModelForCausalLM, "encoder-decoder": AutoModelForSeq2SeqLM}
    try:
        config = model_config(base_model)
        with torch.device("meta"):
            model = auto.get(family, AutoModelForSequenceClassification).from_config(config)
    except Exception:  # an unusual config: setup checks the real model
        return
    lora_targets(model, value)


def ia3_targets(model: Any) -> dict[str, Any]:
    """IA3 config arguments for ``model``: peft's own table, or ``IA3_DEFAULTS`` where it has none.

    Raises:
        SpecError: Neither knows the architecture.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

    model_type = _model_type(model)
    if model_type in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        return {}
    if model_type in IA3_DEFAULTS:
        targets, feedforward = IA3_DEFAULTS[model_type]
        return {"target_modules": list(targets), "feedforward_modules": list(feedforward)}
    raise SpecError(
        f"method ia3: peft does not know which layers of architecture '{model_type}' to "
        "scale; use lora or dora with train.target_modules"
    )


def peft_config(
    method: str, family: str, options: MethodOptions, conv1d: bool = False, model: Any = None
) -> Any:
    """The peft config of ``method`` for a ``decoder`` or ``encoder-decoder`` model.

    ``conv1d``: the model's projections are GPT-2's ``Conv1D`` (weights stored transposed),
    which LoRA and IA3 must know (``fan_in_fan_out``); peft would set it itself with a warning.
    ``model``: the model the config is for; with it, ``train.target_modules`` is checked
    against its layers and architectures without a peft default get adaptflow's
    (``lora_targets``, ``ia3_targets``).
    """
    from peft import (
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
    )

    task_type = TaskType.CAUSAL_LM if family == "decoder" else TaskType.SEQ_2_SEQ_LM
    if method in ("lora", "dora", "qlora"):
        if model is None:
            targets = None if options.target_modules == "default" else options.target_modules
        else:
            targets = lora_targets(model, options.target_modules)
        return LoraConfig(
            task_type=task_type,
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            use_dora=method == "dora",
            target_modules=targets,
            fan_in_fan_out=conv1d,
        )
    if method == "ia3":
        extra = ia3_targets(model) if model is not None else {}
        return IA3Config(task_type=task_type, fan_in_fan_out=conv1d, **extra)
    if method == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=options.virtual_tokens)
    if method == "prompt-tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=options.virtual_tokens)
    if method == "p-tuning":
        return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=options.virtual_tokens)
    raise ValueError(f"not a PEFT method: {method}")


def transformer_blocks(model: Any) -> list[Any]:
    """The stacks of transformer blocks in ``model`` (one for a decoder, two for T5-style).

    Found structurally, as the outermost module lists whose length is the config's layer
    count, so any architecture with the usual layout works without a per-architecture table.
    Lists inside a block are not stacks, even of the same length (a 2-layer T5's encoder block
    holds a 2-long list: its attention and its feed-forward sub-layers).
    """
    import torch

    config = model.config
    depths = {
        getattr(config, name, None)
        for name in ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers")
    } - {None}
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) in depths and len(module) > 0
    ]
    return [
        module
        for name, module in found
        if not any(name.startswith(outer + ".") for outer, _ in found if outer != name)
    ]


def freeze_all_but_top(model: Any, layers: int) -> None:
    """Train only the top ``layers`` blocks of each stack, and everything after the last block.

    "After" means the final layer norm and an untied output head; embeddings (and a head tied to
    them) stay frozen.

    Raises:
        ValueError: When no block stack is found or ``layers`` exceeds the model's depth.
    """
    stacks = transformer_blocks(model)
    if not stacks:
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")
    depth = min(len(stack) for stack in stacks)
    if not 1 <= layers <= depth:
        raise ValueError(f"train.unfrozen_layers must be between 1 and {depth}, got {layers}")
    for parameter in model.parameters():
        parameter.requires_grad = False
    for stack in stacks:
        for block in list(stack)[-layers:]:
            for parameter in block.parameters():
                parameter.requires_grad = True
    tied = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, module in model.named_children():
        if name in ("lm_head",):
            for parameter in module.parameters():
                parameter.requires_grad = id(parameter) not in tied
    in_blocks = {id(p) for stack in stacks for p in stack.parameters()}
    for name, parameter in model.named_parameters():
        # final norms: "transformer.ln_f", "encoder.final_layer_norm", "model.norm"; not the
        # norms inside blocks that bear the same name (BART's "layers.0.final_layer_norm")
        final = name.rsplit(".", 2)[-2] in ("ln_f", "final_layer_norm", "norm")
        if final and id(parameter) not in in_blocks:
            parameter.requires_grad = True


def uses_conv1d(model: Any) -> bool:
    """Whether ``model``'s layers are transformers' ``Conv1D`` (GPT-2 and its kin)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) for module in model.modules())


def apply_method(model: Any, method: str, family: str, options: MethodOptions) -> Any:
    """Make ``model`` train only what ``method`` trains; returns the model to train."""
    if method in PEFT_METHODS:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if method in QUANTIZED_METHODS:
            # freezes the base, upcasts its 16-bit norms to fp32 and, on a 4-bit model, turns
            # on gradient checkpointing (QLoRA's memory recipe)
            model = prepare_model_for_kbit_training(model)
        config = peft_config(method, family, options, uses_conv1d(model), model)
        return get_peft_model(model, config)
    if method == "freeze":
        freeze_all_but_top(model, options.unfrozen_layers)
        return model
    if method == "full":
        for parameter in model.parameters():
            parameter.requires_grad = True
        return model
    raise ValueError(f"unknown method for generative models: {method}")


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once."""
    if hasattr(model, "get_nb_trainable_parameters"):  # peft counts its own additions
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():  # .parameters() already yields a tied tensor once
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total
