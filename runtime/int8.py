"""The int8 package format: a dynamically quantized model saved as safetensors, and loaded.

``torch.ao.quantization.quantize_dynamic`` replaces ``nn.Linear`` layers by int8 ones (weights
int8 per output channel, activations quantized on the fly; CPU only). GPT-2 style models use
transformers' ``Conv1D`` (a transposed linear layer), which quantize_dynamic does not touch, so
those are converted to ``nn.Linear`` first (exact, same numbers). An output head tied to the
input embeddings stays fp32: the embedding table is needed in fp32 for lookups anyway, so an
int8 copy of the head would add bytes instead of saving them. Norms are never quantized.

Embeddings stay fp32 unless asked for (``embeddings=True``, what a compressed classifier
does): then each ``nn.Embedding`` not tied to an output head becomes torch's weight-only
8-bit embedding (``float_qparams_weight_only_qconfig``: uint8 per row with a float scale and
zero point; a lookup dequantizes only the rows it reads). An encoder classifier has no tied
head, and its word embeddings are most of its bytes (MiniLM: 11.7M of 22.7M weights): a
3-block MiniLM student with only its linear layers int8 keeps 0.77 of its fp32 bytes (53.4 of
69.6 MB), with its embeddings too 0.26 (17.9 MB).

The int8 package is saved as safetensors, not with ``torch.save`` (pickle can run code on
load; the project loads safetensors only), and ``from_pretrained`` cannot read a quantized
model. So ``weights/`` holds the config and ``model-int8.safetensors``: each quantized layer
as ``<layer>.weight.int8`` (int8 for a linear layer, uint8 for an embedding),
``.weight.scale``, ``.weight.zero_point`` and ``.bias`` (linear layers), and every other tensor
as usual. The manifest says ``quantize: int8`` and ``load_int8`` rebuilds the model (config ->
same conversion and quantization, embeddings included when the file holds them -> these
tensors); ``runtime.loading.load_generator`` and ``load_classifier`` call it, so an int8
package serves and scores through the usual path. ``tasks/train/export.py`` (generative) and
``tasks/train/compress.py`` (classifiers) write such packages.

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


def quantize_int8(model: Any, embeddings: bool = False) -> dict[str, Any]:
    """Dynamically quantize ``model``'s linear layers to int8, in place (CPU inference).

    ``Conv1D`` layers are converted to ``nn.Linear`` first; a head tied to the embeddings is
    kept fp32 (see the module docstring). Weights are quantized per output channel.

    Args:
        model: A transformers model in fp32 or lower precision (made fp32 first).
        embeddings: Also quantize the ``nn.Embedding`` layers (weight-only, uint8 per row),
            except one tied to an output head.

    Returns:
        What was quantized: ``conv1d_converted``, ``linear_layers``, ``embedding_layers``,
        ``params_int8`` (weights now 8-bit), ``params_fp32`` (all others) and ``kept_fp32``
        (layers left out, and why).
    """
    import torch
    from torch.ao.quantization import (
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    model.float()  # dynamic quantization takes fp32 layers (a bf16 base merges into bf16)
    converted = conv1d_to_linear(model)
    tied = _tied_head(model)
    tied_weight = model.get_input_embeddings().weight if tied else None
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != tied
    }
    tables = {
        name: module
        for name, module in model.named_modules()
        if embeddings
        and isinstance(module, torch.nn.Embedding)
        and module.weight is not tied_weight
    }
    int8_params = sum(module.weight.numel() for module in layers.values())
    int8_params += sum(table.weight.numel() for table in tables.values())
    total = sum(p.numel() for p in model.parameters())
    plan = {name: per_channel_dynamic_qconfig for name in layers}
    plan |= {name: float_qparams_weight_only_qconfig for name in tables}
    with _quiet_quantization():
        quantize_dynamic(model, plan, inplace=True)
    kept = [f"{tied}: tied to the input embeddings"] if tied else []
    scheme = "dynamic int8: weights per output channel, activations per batch at run time"
    return {
        "scheme": scheme + ("; embeddings: weight-only uint8 per row" if tables else ""),
        "conv1d_converted": converted,
        "linear_layers": len(layers),
        "embedding_layers": len(tables),
        "params_int8": int8_params,
        "params_fp32": total - int8_params,
        "kept_fp32": kept,
    }


def _quantized_layers(model: Any) -> dict[str, Any]:
    from torch.ao.nn.quantized import Embedding as QuantizedEmbedding
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    kinds = (DynamicLinear, QuantizedEmbedding)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def _bias(layer: Any) -> Any:
    """A quantized linear layer's bias (None for an embedding, which has none)."""
    return layer.bias() if callable(getattr(layer, "bias", None)) else None


def parameter_count(model: Any) -> int:
    """All weights of ``model``, quantized or not.

    A quantized layer keeps its weight (and a linear layer its bias) packed, outside
    ``parameters()``; they are counted here, so an int8 model counts as many as its fp32 source.
    """
    total = sum(p.numel() for p in model.parameters())
    for layer in _quantized_layers(model).values():
        bias = _bias(layer)
        total += layer.weight().numel() + (bias.numel() if bias is not None else 0)
    return int(total)


def int8_tensors(model: Any) -> dict[str, Any]:
    """A quantized model as plain tensors for safetensors (see the module docstring).

    Tensors shared by several names (a tied head) are stored once, under the first name.
    """
    import torch

    # linear layers: integer zero points; embeddings: float ones (float_qparams)
    per_channel = (
        torch.per_channel_affine,
        torch.per_channel_symmetric,
        torch.per_channel_affine_float_qparams,
    )

    tensors: dict[str, Any] = {}
    quantized = _quantized_layers(model)
    for name, layer in quantized.items():
        weight = layer.weight()
        if weight.qscheme() in per_channel:
            scale, zero_point = weight.q_per_channel_scales(), weight.q_per_channel_zero_points()
        else:
            scale = torch.tensor(weight.q_scale(), dtype=torch.float64)
            zero_point = torch.tensor(weight.q_zero_point(), dtype=torch.int64)
        tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight.scale"] = scale.contiguous()
        tensors[f"{name}.weight.zero_point"] = zero_point.contiguous()
        bias = _bias(layer)
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().contiguous()
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


def load_int8(folder: Path, model_class: Any) -> Any:
    """Rebuild a model saved by ``save_int8`` (in eval mode, CPU).

    Args:
        folder: The folder ``save_int8`` wrote.
        model_class: The transformers auto class to build it with (``from_config``).

    Raises:
        AdaptflowError: When the saved tensors do not match the rebuilt model.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model = model_class.from_config(AutoConfig.from_pretrained(str(folder)))
    model.eval()
    tensors = load_file(str(folder / INT8_WEIGHTS))
    # the same layers as when saved: embeddings too when the file holds them as integers
    tables = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    quantize_int8(model, embeddings=any(f"{n}.weight.int8" in tensors for n in tables))
    with _quiet_quantization():
        for name, layer in _quantized_layers(model).items():
            values = tensors.pop(f"{name}.weight.int8")
            scale = tensors.pop(f"{name}.weight.scale")
            zero_point = tensors.pop(f"{name}.weight.zero_point")
            dtype = torch.quint8 if values.dtype == torch.uint8 else torch.qint8
            values = values.float()
            # re-quantizing the dequantized values with the same scales gives back the same
            # integers; torch offers no public constructor from int8 values and scales
            if scale.dim() == 1:
                real = ((values - zero_point[:, None]) * scale[:, None]).float()
                weight = torch.quantize_per_channel(real, scale, zero_point, 0, dtype)
            else:
                real = ((values - zero_point) * scale).float()
                weight = torch.quantize_per_tensor(real, float(scale), int(zero_point), dtype)
            if hasattr(layer, "set_weight_bias"):  # a linear layer
                layer.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
            else:  # an embedding
                layer.set_weight(weight)
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
