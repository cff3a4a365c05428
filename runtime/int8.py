"""The int8 package format: a dynamically quantized model saved as safetensors, and loaded.

``torch.ao.quantization.quantize_dynamic`` replaces ``nn.Linear`` layers by int8 ones (weights
int8 per output channel, activations quantized on the fly; CPU only). GPT-2 style models use
transformers' ``Conv1D`` (a transposed linear layer), which quantize_dynamic does not touch, so
those are converted to ``nn.Linear`` first (exact, same numbers). An output head tied to the
input embeddings stays fp32: the embedding table is needed in fp32 for lookups anyway, so an
int8 copy of the head would add bytes instead of saving them. Embeddings and norms are not
quantized.

The int8 package is saved as safetensors, not with ``torch.save`` (pickle can run code on
load; the project loads safetensors only), and ``from_pretrained`` cannot read a quantized
model. So ``weights/`` holds the config and ``model-int8.safetensors``: each quantized layer
as ``<layer>.weight.int8`` (int8), ``.weight.scale``, ``.weight.zero_point`` and ``.bias``, and
every other tensor as usual. The manifest says ``quantize: int8`` and ``load_int8`` rebuilds
the model (config -> same conversion and quantization -> these tensors);
``runtime.loading.load_generator`` calls it, so an int8 package serves and scores through the
usual path. ``tasks/train/export.py`` writes such packages.

torch marks ``torch.ao.quantization`` as deprecated in favour of torchao (not installed here);
it still works in the installed torch, and the warnings are silenced where it is called.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from adaptflow.errors import AdaptflowError
from runtime.manifest import auto_class

INT8_WEIGHTS = "model-int8.safetensors"


@contextmanager
def _quiet_quantization() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (they say: migrate to torchao)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        yield


def conv1d_to_linear(model: Any) -> int:
    """Replace transformers' ``Conv1D`` layers by equivalent ``nn.Linear`` ones, in place.

    ``Conv1D`` computes ``x @ W + b`` with ``W`` stored (in, out); ``nn.Linear`` stores it
    (out, in). Returns how many layers were replaced.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                fan_in, fan_out = child.weight.shape
                linear = torch.nn.Linear(fan_in, fan_out, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def _tied_head(model: Any) -> str | None:
    """The name of an output head that shares its weight with the input embeddings, if any."""
    head = model.get_output_embeddings()
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return None
    return next(name for name, module in model.named_modules() if module is head)


def quantize_int8(model: Any) -> dict[str, Any]:
    """Dynamically quantize ``model``'s linear layers to int8, in place (CPU inference).

    ``Conv1D`` layers are converted to ``nn.Linear`` first; a head tied to the embeddings is
    kept fp32 (see the module docstring). Weights are quantized per output channel.

    Returns:
        What was quantized: ``conv1d_converted``, ``linear_layers``, ``params_int8`` (weights
        now int8), ``params_fp32`` (all others) and ``kept_fp32`` (layers left out, and why).
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model.float()  # dynamic quantization takes fp32 layers (a bf16 base merges into bf16)
    converted = conv1d_to_linear(model)
    tied = _tied_head(model)
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != tied
    }
    int8_params = sum(module.weight.numel() for module in layers.values())
    total = sum(p.numel() for p in model.parameters())
    with _quiet_quantization():
        quantize_dynamic(
            model, {name: per_channel_dynamic_qconfig for name in layers}, inplace=True
        )
    return {
        "scheme": "dynamic int8: weights per output channel, activations per batch at run time",
        "conv1d_converted": converted,
        "linear_layers": len(layers),
        "params_int8": int8_params,
        "params_fp32": total - int8_params,
        "kept_fp32": [f"{tied}: tied to the input embeddings"] if tied else [],
    }


def _quantized_layers(model: Any) -> dict[str, Any]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicLinear)}


def int8_tensors(model: Any) -> dict[str, Any]:
    """A quantized model as plain tensors for safetensors (see the module docstring).

    Tensors shared by several names (a tied head) are stored once, under the first name.
    """
    import torch

    tensors: dict[str, Any] = {}
    quantized = _quantized_layers(model)
    for name, layer in quantized.items():
        weight = layer.weight()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale, zero_point = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        else:
            scale = torch.tensor(weight.q_scale(), dtype=torch.float64)
            zero_point = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
        tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight.scale"] = scale.contiguous()
        tensors[f"{name}.weight.zero_point"] = zero_point.contiguous()
        if layer.bias() is not None:
            tensors[f"{name}.bias"] = layer.bias().detach().contiguous()
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor) or key.rsplit(".", 1)[0] in quantized:
            continue
        if any(key.startswith(f"{name}.") for name in quantized):
            continue  # a quantized layer's packed params and placeholders
        if value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous()
    return tensors


def save_int8(model: Any, folder: Path) -> None:
    """Write a quantized model to ``folder``: its config and ``model-int8.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    save_file(int8_tensors(model), str(folder / INT8_WEIGHTS), metadata={"format": "pt"})


def load_int8(folder: Path, family: str) -> Any:
    """Rebuild a model saved by ``save_int8`` (in eval mode, CPU).

    Raises:
        AdaptflowError: When the saved tensors do not match the rebuilt model.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model = auto_class(family).from_config(AutoConfig.from_pretrained(str(folder)))
    model.eval()
    quantize_int8(model)
    tensors = load_file(str(folder / INT8_WEIGHTS))
    with _quiet_quantization():
        for name, layer in _quantized_layers(model).items():
            values = tensors.pop(f"{name}.weight.int8").float()
            scale = tensors.pop(f"{name}.weight.scale")
            zero_point = tensors.pop(f"{name}.weight.zero_point")
            # re-quantizing the dequantized values with the same scales gives back the same
            # integers; torch offers no public constructor from int8 values and scales
            if scale.dim() == 1:
                real = ((values - zero_point[:, None]) * scale[:, None]).float()
                weight = torch.quantize_per_channel(real, scale, zero_point, 0, torch.qint8)
            else:
                real = ((values - zero_point) * scale).float()
                weight = torch.quantize_per_tensor(real, float(scale), int(zero_point), torch.qint8)
            layer.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
    # the remaining float tensors (embeddings, norms, a tied head), by any of their names
    saved = set(model.state_dict())
    named = chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    targets = {key: value for key, value in named if key in saved}
    filled: set[int] = set()
    with torch.no_grad():
        for key in tensors.keys() & targets.keys():
            targets[key].copy_(tensors[key])
            filled.add(id(targets[key]))
    missing = sorted(key for key, value in targets.items() if id(value) not in filled)
    unexpected = sorted(tensors.keys() - targets.keys())
    if missing or unexpected:
        raise AdaptflowError(
            f"{folder / INT8_WEIGHTS} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model
