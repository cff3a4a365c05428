"""Loading base models and packages: safetensors only unless allowed, never remote code.

Every ``from_pretrained`` (and sentence-transformers load) of a base model or a package goes
through here, so the same weights rules hold in training, evaluation and serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adaptflow.catalogue import resolve_base_model
from adaptflow.errors import RegistryError, SpecError
from runtime.int8 import load_int8
from runtime.manifest import PackageManifest, auto_class, family_of


def load_base_tokenizer(reference: str) -> Any:
    """The base model's tokenizer, with a pad token (GPT-2-style tokenizers ship without one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(reference))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def weights_arguments(allow_pickle: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments that decide which weight files may load.

    Safetensors only, unless ``allow_pickle``: then safetensors are still preferred and a
    pickle-based ``pytorch_model.bin`` is the fallback. ``trust_remote_code`` is always off: a
    model that needs custom code from its repository does not load, instead of running it.
    """
    return {"use_safetensors": None if allow_pickle else True, "trust_remote_code": False}


def load_base(
    reference: str,
    family: str | None = None,
    allow_pickle: bool = False,
    extra: dict[str, Any] | None = None,
) -> Any:
    """Load a base model from a catalogue alias, folder or hub id (safetensors unless allowed).

    Args:
        reference: Catalogue alias, folder or hub id.
        family: ``decoder`` or ``encoder-decoder`` (default: read from the config).
        allow_pickle: The spec's ``allow_pickle``: also load pickle-based weights.
        extra: More ``from_pretrained`` arguments (the 4-bit loading of ``qlora``).

    Raises:
        SpecError: When the model has only pickle-based weights and ``allow_pickle`` is off.
    """
    from transformers import AutoConfig

    path = resolve_base_model(reference)
    family = family or family_of(AutoConfig.from_pretrained(path, trust_remote_code=False))
    with refusing_pickle(reference, allow_pickle):
        return auto_class(family).from_pretrained(
            path, **weights_arguments(allow_pickle), **(extra or {})
        )


def pickle_refused(reference: str) -> str:
    """The message for a base model that has only pickle-based weights."""
    return (
        f"base model '{reference}' has no safetensors weights; pickle-based weights "
        "(pytorch_model.bin) can run code when loaded and are refused unless the spec sets "
        "allow_pickle: true"
    )


@contextmanager
def refusing_pickle(reference: str, allow_pickle: bool) -> Iterator[None]:
    """Turn a load's "no safetensors weights" ``OSError`` into the error naming ``allow_pickle``.

    Every weights load of a base model (transformers, sentence-transformers, the cross-encoder)
    asks for safetensors unless the spec allows pickle; the libraries then fail with an
    ``OSError`` about safetensors, which the user should read as the flag to set.

    Raises:
        SpecError: When the model has only pickle-based weights and ``allow_pickle`` is off.
    """
    try:
        yield
    except OSError as exc:
        if allow_pickle or "safetensors" not in str(exc):
            raise
        raise SpecError(pickle_refused(reference)) from None


def load_generator(folder: Path) -> tuple[Any, Any, PackageManifest]:
    """Load a generative package for inference: (model in eval mode, tokenizer, manifest)."""
    from transformers import AutoTokenizer

    manifest = PackageManifest.read(folder)
    family = family_of(manifest.kind)
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    if manifest.options.get("quantize") == "int8":  # written by tasks.train.export
        model = load_int8(folder / "weights", auto_class(family))
    elif (folder / "weights").is_dir():
        model = auto_class(family).from_pretrained(str(folder / "weights"), use_safetensors=True)
    else:
        # an adapter over a base that lives only in the package (a CPT stage's output)
        bundled = folder / "base"
        base = str(bundled) if bundled.is_dir() else manifest.base_model
        allow_pickle = bool(manifest.options.get("allow_pickle", False))
        model = load_adapter(load_base(base, family, allow_pickle), folder / "adapter")
    if (folder / "generation_config.json").is_file():  # written by tasks.train.sft.save
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer, manifest


def load_classifier(folder: Path) -> tuple[Any, Any, PackageManifest]:
    """Load a saved classifier package for inference.

    A package whose manifest says ``quantize: int8`` (a ``prune`` candidate with
    ``compress.quantize``) is rebuilt by ``runtime.int8.load_int8``: CPU only.

    Args:
        folder: A package folder written by a training recipe.

    Returns:
        (model in eval mode, tokenizer, manifest).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = PackageManifest.read(folder)
    labels = manifest.labels
    label_maps: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    if manifest.options.get("quantize") == "int8":  # written by tasks.train.compress
        # the saved config carries the label maps; the weights are the integers saved
        model = load_int8(folder / "weights", AutoModelForSequenceClassification)
    elif (folder / "weights").is_dir():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder / "weights"), use_safetensors=True, **label_maps
        )
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_base_model(manifest.base_model),
            **weights_arguments(bool(manifest.options.get("allow_pickle", False))),
            **label_maps,
        )
        model = load_adapter(base, folder / "adapter")
    model.eval()
    return model, tokenizer, manifest


def load_encoder(base_model: str, allow_pickle: bool = False) -> Any:
    """The base model as a sentence-transformers encoder on CPU.

    Safetensors only unless ``allow_pickle`` (the spec's flag); no code from the model's
    repository runs.

    Raises:
        SpecError: When the model has only pickle-based weights and ``allow_pickle`` is off.
    """
    from sentence_transformers import SentenceTransformer

    with refusing_pickle(base_model, allow_pickle):
        return SentenceTransformer(
            resolve_base_model(base_model),
            device="cpu",
            trust_remote_code=False,
            model_kwargs={"use_safetensors": None if allow_pickle else True},
        )


def load_reranker(reference: str, allow_pickle: bool = False) -> Any:
    """A sentence-transformers ``CrossEncoder`` (catalogue alias, folder or hub id) on CPU.

    Safetensors only unless ``allow_pickle`` (the package's flag, from the spec); no code from
    the model's repository runs (``trust_remote_code`` stays off).

    Raises:
        SpecError: When the model has only pickle-based weights and ``allow_pickle`` is off.
    """
    from sentence_transformers import CrossEncoder

    with refusing_pickle(reference, allow_pickle):
        return CrossEncoder(
            resolve_base_model(reference),
            device="cpu",
            trust_remote_code=False,
            model_kwargs={"use_safetensors": None if allow_pickle else True},
        )


#: The adapter weights every package adaptflow writes holds (PEFT's safetensors file name).
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_adapter(base: Any, adapter_dir: Path) -> Any:
    """``base`` with a package's PEFT adapter from ``adapter_dir`` (safetensors only).

    PEFT falls back to a pickle-based ``adapter_model.bin`` when the safetensors file is
    missing; a package adaptflow wrote always holds safetensors, so one without them was not
    written by adaptflow and is refused instead of unpickled.

    Raises:
        RegistryError: When ``adapter_dir`` holds no ``adapter_model.safetensors``.
    """
    from peft import PeftModel

    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise RegistryError(
            f"{adapter_dir} holds no {ADAPTER_WEIGHTS}: adaptflow packages store adapters as "
            "safetensors, and pickle-based adapter weights are not loaded"
        )
    return PeftModel.from_pretrained(base, str(adapter_dir))
