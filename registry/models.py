"""The model registry: log candidates, register versions, move the champion alias, load models.

Aliases: ``challenger`` is the newest candidate, ``champion`` is what serves. Each promotion
records the champion it replaced on the promoted version (tag ``adaptflow.previous_champion``),
so ``rollback`` walks back one promotion at a time.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from adaptflow.errors import RegistryError
from registry.tracking import client, mlflow_key

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_TAG = "adaptflow.previous_champion"
SERVING_DIR = Path(__file__).parent / "serving"
# A RAG package returns dicts of mixed values, and MLflow warns at every log and load that it
# cannot validate ``Any`` (its message starts with a colour code, hence the leading ``.*``).
warnings.filterwarnings("ignore", message=r".*Any type hint is inferred as AnyType")


#: Which serving module wraps each package kind (the ``kind`` in ``adaptflow_model.json``).
SERVING = {
    "encoder-classifier": "encoder_classifier.py",
    "knn-classifier": "knn_classifier.py",
    "rag-retriever": "rag_retriever.py",
    "causal-lm": "generator.py",
    "seq2seq-lm": "generator.py",
}


def _requirements() -> list[str]:
    from importlib.metadata import version

    packages = (
        "adaptflow",
        "torch",
        "transformers",
        "peft",
        "sentence-transformers",
        "mlflow",
        "chromadb",
        "bm25s",
        "rouge-score",
    )
    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def _package_kind(package_dir: Path) -> str:
    import json

    try:
        kind = json.loads((package_dir / "adaptflow_model.json").read_text())["kind"]
    except (OSError, ValueError, KeyError) as exc:
        raise RegistryError(f"{package_dir} is not a model package: {exc}") from None
    if kind not in SERVING:
        raise RegistryError(f"{package_dir}: no serving module for package kind '{kind}'")
    return str(kind)


def log_model_package(run_id: str, package_dir: Path, card_markdown: str) -> str:
    """Log a model package as an MLflow pyfunc (models from code) on run ``run_id``.

    Args:
        run_id: The pipeline's MLflow run.
        package_dir: Folder written by a recipe (manifest plus adapter, weights or index); its
            manifest's ``kind`` picks the serving module under ``registry/serving``.
        card_markdown: The model card, stored next to the model as ``README.md``.

    Returns:
        The logged model's URI (``models:/m-…``).
    """
    import mlflow

    serving = SERVING_DIR / SERVING[_package_kind(package_dir)]
    (package_dir / "README.md").write_text(card_markdown)
    mlflow.set_tracking_uri(client().tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(serving),
            artifacts={"package": str(package_dir)},
            pip_requirements=_requirements(),
        )
    return str(info.model_uri)


def register_candidate(
    name: str, model_uri: str, run_id: str, tags: dict[str, str], description: str
) -> str:
    """Create a version of registered model ``name`` and point ``challenger`` at it.

    Returns:
        The new version number, as a string.
    """
    mlflow_client = client()
    try:
        mlflow_client.get_registered_model(name)
    except Exception:
        mlflow_client.create_registered_model(name, description=f"adaptflow use case '{name}'")
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = mlflow_client.create_model_version(
        name,
        model_uri,
        run_id=run_id,
        tags={mlflow_key(k): v for k, v in tags.items()},
        description=description,
        model_id=model_id,
    )
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def champion_version(name: str) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    try:
        return str(client().get_model_version_by_alias(name, CHAMPION).version)
    except Exception:
        return None


def version_tags(name: str, version: str) -> dict[str, str]:
    """Tags of one model version."""
    return dict(_get_version(name, version).tags)


def _get_version(name: str, version: str) -> Any:
    mlflow_client = client()
    try:
        mlflow_client.get_registered_model(name)
    except Exception:
        raise RegistryError(f"no registered model named '{name}'") from None
    try:
        return mlflow_client.get_model_version(name, str(version))
    except Exception:
        raise RegistryError(f"registered model '{name}' has no version {version}") from None


_UNSET = object()


def promote(name: str, version: str, expected_current: Any = _UNSET) -> dict[str, Any]:
    """Point ``champion`` at ``version``.

    Args:
        name: Registered model name.
        version: Version to promote.
        expected_current: The champion the caller based its decision on. When given, the alias
            is re-read right before moving it and the promotion is refused if it changed.

    Returns:
        ``name``, ``champion_version`` and ``previous`` (the champion replaced, or None).

    Raises:
        RegistryError: Unknown model or version, or the champion changed underneath.
    """
    version = str(version)
    _get_version(name, version)
    current = champion_version(name)
    if expected_current is not _UNSET and current != expected_current:
        raise RegistryError(
            f"champion of '{name}' changed from {expected_current} to {current} while deciding; "
            "promotion refused"
        )
    mlflow_client = client()
    if current != version:
        mlflow_client.set_model_version_tag(name, version, PREVIOUS_TAG, current or "")
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    return {"name": name, "champion_version": version, "previous": current}


def rollback(name: str) -> dict[str, Any]:
    """Move ``champion`` back to the version it replaced at its last promotion.

    Raises:
        RegistryError: No champion, or no earlier champion recorded for it.
    """
    current = champion_version(name)
    if current is None:
        _get_version(name, "1")  # a clearer error when the model itself is unknown
        raise RegistryError(f"'{name}' has no champion to roll back")
    previous = version_tags(name, current).get(PREVIOUS_TAG) or None
    if previous is None:
        raise RegistryError(
            f"'{name}' champion version {current} has no earlier champion recorded; "
            f"use 'adaptflow promote {name} VERSION' instead"
        )
    client().set_registered_model_alias(name, CHAMPION, previous)
    return {"name": name, "champion_version": previous, "previous": current}


def load_model(model_uri: str) -> Any:
    """Load a registered or logged model as an MLflow pyfunc (e.g. ``models:/NAME@champion``).

    Raises:
        RegistryError: When the URI names nothing that exists.
    """
    import mlflow

    mlflow.set_tracking_uri(client().tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        if type(exc).__name__ in ("MlflowException", "RestException", "OSError"):
            raise RegistryError(f"cannot load model '{model_uri}': {exc}") from None
        raise


def download_package(model_uri: str, dst: Path) -> Path:
    """Download the adaptflow package behind a registered version into ``dst``.

    Only the package is fetched (not the pyfunc wrapper around it): its path inside the model
    is read from the model's ``MLmodel`` file (``artifacts/<package folder name>``).

    Args:
        model_uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        dst: An empty or new folder.

    Returns:
        The package folder (manifest, tokenizer, adapter or weights) under ``dst``.

    Raises:
        RegistryError: When the URI names nothing that exists, or no adaptflow package.
    """
    import mlflow
    import yaml

    uri = client().tracking_uri
    base = model_uri.rstrip("/")
    try:
        mlmodel = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/MLmodel", dst_path=str(dst), tracking_uri=uri, registry_uri=uri
        )
        flavor = yaml.safe_load(Path(mlmodel).read_text())["flavors"]["python_function"]
        path = flavor["artifacts"]["package"]["path"]
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/{path}", dst_path=str(dst), tracking_uri=uri, registry_uri=uri
        )
    except (KeyError, TypeError):
        raise RegistryError(f"'{model_uri}' holds no adaptflow model package") from None
    except Exception as exc:
        if type(exc).__name__ in ("MlflowException", "RestException", "OSError"):
            raise RegistryError(f"cannot download model '{model_uri}': {exc}") from None
        raise
    package = Path(local)
    if not (package / "adaptflow_model.json").is_file():
        raise RegistryError(f"'{model_uri}' holds no adaptflow model package")
    return package
