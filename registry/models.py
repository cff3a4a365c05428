"""The model registry: log candidates, register versions, move the champion alias, load models.

Aliases: ``challenger`` is the newest candidate, ``champion`` is what serves. Each promotion
records the champion it replaced on the promoted version (tag ``adaptflow.previous_champion``),
so ``rollback`` walks back one promotion at a time.

Every move of ``champion`` (``promote``, ``rollback``) happens under the promotion lock of
``registry/lease.py``. Under the lock a programmatic promotion re-reads the champion; if it is
no longer the one the caller's gate compared against, the candidate is compared with the new
champion on the spec's metric, using the ``metric.<name>`` tags both versions were registered
with (only when both come from the same curated data, ``adaptflow.data_hash``): it is promoted
only if strictly better, otherwise refused with the reason. So concurrent promotions end with
the best candidate as champion whatever order they arrive in, and each records the champion it
really replaced.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from adaptflow.errors import RegistryError, ServiceError, SpecError
from adaptflow.settings import load_settings
from registry.lease import promotion_lock, still_held
from registry.tracking import client, mlflow_key, redact, redacted_copy, retrying

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_TAG = "adaptflow.previous_champion"
DATA_HASH_TAG = "adaptflow.data_hash"
#: Error codes of an MLflow answer that mean "no such model, version or alias" (a missing alias
#: is INVALID_PARAMETER_VALUE). Any other failure must not read as "none": a registry that could
#: not be read (a server still down once MLflow's own retries are spent) would otherwise look
#: like "no champion", and the gate would promote without comparing, or a retrain retrain.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def _is_mlflow_error(exc: BaseException) -> bool:
    """An MLflow error, a server's answer (``RestException``) or any subclass of either."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException)


def _not_found(exc: BaseException) -> bool:
    """True when ``exc`` is MLflow's answer that the model, version or alias does not exist."""
    return _is_mlflow_error(exc) and getattr(exc, "error_code", None) in NOT_FOUND_CODES


def _unreadable(exc: BaseException, what: str) -> ServiceError:
    """The error for a registry read that failed for another reason than "not found"."""
    uri = load_settings().mlflow_tracking_uri
    return ServiceError(f"could not read {what} from the MLflow registry at {uri}: {exc}")


class PromotionRefused(RegistryError):
    """The champion changed underneath and the candidate does not beat the new one."""

    def __init__(self, message: str, champion: str | None) -> None:
        super().__init__(message)
        self.reason = message
        self.champion_version = champion


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
    "reward-model": "reward_model.py",
}


#: Distributions the logged model's code imports (``registry/serving`` and what it reaches in
#: ``runtime/`` and ``adaptflow/``; tests/test_import_layers.py checks the list is complete).
#: adaptflow itself is not among them: it is not published, so its code travels with the
#: model instead (``SERVING_CODE``), and the requirements stay installable anywhere.
SERVING_REQUIREMENTS = (
    "torch",
    "transformers",
    "tokenizers",
    "Jinja2",  # chat templates (runtime.prompts catches their errors)
    "safetensors",
    "peft",
    "sentence-transformers",
    "mlflow",
    "chromadb",
    "bm25s",
    "PyStemmer",
    "rouge-score",
    "numpy",
    "tqdm",
)
#: The project's own packages a logged model's code imports, logged with it as ``code_paths``.
SERVING_CODE = ("adaptflow", "runtime")


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVING_REQUIREMENTS]


def _code_paths() -> list[str]:
    import importlib

    return [str(Path(importlib.import_module(name).__file__ or "").parent) for name in SERVING_CODE]


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
    (package_dir / "README.md").write_text(redact(card_markdown))
    mlflow.set_tracking_uri(client().tracking_uri)
    # Like every artifact: a file holding a secret's value (a path named after a token, a URL's
    # password) is uploaded from a redacted copy; the local package is left as it is.
    with (
        redacted_copy(package_dir) as upload,
        mlflow.start_run(run_id=run_id),
        warnings.catch_warnings(),
    ):
        # A RAG answer is a dict of mixed values (passages, prompt, answer) that MLflow cannot
        # validate and says so on every log; the package's own code checks its input.
        warnings.filterwarnings("ignore", message=".*type hint is inferred as AnyType")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(serving),
            artifacts={"package": str(upload)},
            pip_requirements=_requirements(),
            code_paths=_code_paths(),
        )
    return str(info.model_uri)


def register_candidate(
    name: str, model_uri: str, run_id: str, tags: dict[str, str], description: str
) -> str:
    """Create a version of registered model ``name`` and point ``challenger`` at it.

    Idempotent: a version already registered from ``run_id`` with the same model is reused, so
    a retried call (the first one's answer lost to a dropped connection or a server restart)
    never creates a second version. Transient registry errors are retried. One window is left,
    inside MLflow's HTTP layer: it re-sends a request whose connection broke while the answer
    was on its way, POSTs included, so a server killed (not stopped: SIGTERM lets requests in
    flight finish) between creating the version and answering could get it created twice.

    Returns:
        The version number, as a string.
    """
    mlflow_client = client()
    try:
        retrying(mlflow_client.get_registered_model, name)
    except Exception as exc:
        if not _not_found(exc):
            raise
        try:
            retrying(
                mlflow_client.create_registered_model,
                name,
                description=redact(f"adaptflow use case '{name}'"),
            )
        except Exception as create_exc:  # another process created it first
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(create_exc, "error_code", "")):
                raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = _existing_version(name, run_id, model_uri, model_id)
    if version is None:
        version = retrying(
            _create_version_once, name, model_uri, run_id, tags, description, model_id
        )
    retrying(mlflow_client.set_registered_model_alias, name, CHALLENGER, version)
    return version


def _existing_version(name: str, run_id: str, model_uri: str, model_id: str | None) -> str | None:
    """The lowest version of ``name`` registered from ``run_id`` and this model, or None."""
    found = retrying(client().search_model_versions, f"name='{name}' and run_id='{run_id}'")
    same = [
        int(v.version)
        for v in found
        if (model_id is not None and getattr(v, "model_id", None) == model_id)
        or (model_id is None and v.source == model_uri)
    ]
    return str(min(same)) if same else None


def _create_version_once(
    name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    description: str,
    model_id: str | None,
) -> str:
    # Re-checked on every attempt: the previous attempt may have created the version and lost
    # only its answer.
    existing = _existing_version(name, run_id, model_uri, model_id)
    if existing is not None:
        return existing
    version = client().create_model_version(
        name,
        model_uri,
        run_id=run_id,
        tags={mlflow_key(k): redact(str(v)) for k, v in tags.items()},
        description=redact(description),
        model_id=model_id,
    )
    return str(version.version)


def champion_version(name: str) -> str | None:
    """The version the ``champion`` alias points at, or None.

    Raises:
        ServiceError: The registry could not be read (rather than answering "no champion").
    """
    return alias_version(name, CHAMPION)


def alias_version(name: str, alias: str) -> str | None:
    """The version alias ``alias`` of model ``name`` points at, or None.

    Raises:
        ServiceError: The registry could not be read (rather than answering "no such alias").
    """
    try:
        return str(retrying(client().get_model_version_by_alias, name, alias).version)
    except Exception as exc:
        if _not_found(exc):
            return None  # no such alias (or model)
        if _is_mlflow_error(exc):
            what = (
                f"the champion of '{name}'" if alias == CHAMPION else f"alias '{alias}' of '{name}'"
            )
            raise _unreadable(exc, what) from None
        raise


def version_identity(name: str, version: str) -> str:
    """What tells one registered version from any other for good: run, source, creation time.

    A version number alone comes back when a model is deleted and registered again.

    Raises:
        RegistryError: No such model or version.
    """
    found = _get_version(name, version)
    return f"{name}/{found.version}:{found.run_id}:{found.source}:{found.creation_timestamp}"


def version_tags(name: str, version: str) -> dict[str, str]:
    """Tags of one model version."""
    return dict(_get_version(name, version).tags)


def _read(what: str, missing: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, retried, for a read whose object must exist.

    MLflow's "not found" becomes ``RegistryError(missing)``; any other MLflow failure a
    ``ServiceError`` about reading ``what``.
    """
    try:
        return retrying(fn, *args)
    except Exception as exc:
        if _not_found(exc):
            raise RegistryError(missing) from None
        if _is_mlflow_error(exc):
            raise _unreadable(exc, what) from None
        raise


def _require_model(name: str) -> None:
    _read(
        f"registered model '{name}'",
        f"no registered model named '{name}'",
        client().get_registered_model,
        name,
    )


def _get_version(name: str, version: str) -> Any:
    mlflow_client = client()
    _require_model(name)
    return _read(
        f"version {version} of '{name}'",
        f"registered model '{name}' has no version {version}",
        mlflow_client.get_model_version,
        name,
        str(version),
    )


_UNSET = object()


def _metric_of(tags: dict[str, str], metric: str) -> float | None:
    try:
        return float(tags[mlflow_key(f"metric.{metric}")])
    except (KeyError, ValueError):
        return None


def _beats_by_tags(name: str, version: str, current: str, metric: str) -> tuple[bool, str]:
    """Whether ``version`` beats ``current`` on ``metric`` by their registration tags, and why."""
    from adaptflow.spec import LOWER_IS_BETTER

    mine, theirs = version_tags(name, version), version_tags(name, current)
    value, other = _metric_of(mine, metric), _metric_of(theirs, metric)
    if value is None or other is None:
        return False, f"no {metric} recorded on both v{version} and v{current} to compare"
    if mine.get(DATA_HASH_TAG) != theirs.get(DATA_HASH_TAG):
        return False, f"v{version} and v{current} were evaluated on different data"
    better = value < other if metric in LOWER_IS_BETTER else value > other
    verdict = "beats" if better else "does not beat"
    return better, f"v{version} {metric} {value:.4f} {verdict} v{current} {other:.4f}"


def promote(
    name: str, version: str, expected_current: Any = _UNSET, metric: str | None = None
) -> dict[str, Any]:
    """Point ``champion`` at ``version``, under the promotion lock.

    Args:
        name: Registered model name.
        version: Version to promote.
        expected_current: The champion the caller based its decision on. When given, the alias
            is re-read under the lock; if it changed, the promotion is refused unless ``metric``
            is given and the candidate beats the new champion on it (see the module docstring).
        metric: The spec's target metric, for that comparison.

    Returns:
        ``name``, ``champion_version``, ``previous`` (the champion replaced, or None) and
        ``reason`` (why it moved, or None for a plain promotion).

    Raises:
        PromotionRefused: The champion changed underneath and the candidate does not beat it.
        RegistryError: Unknown model or version, or the lock could not be taken.
    """
    version = str(version)
    _get_version(name, version)
    with promotion_lock(name) as token:
        current = champion_version(name)
        reason = None
        if expected_current is not _UNSET and current != expected_current:
            changed = f"champion of '{name}' changed from {expected_current} to {current}"
            if current is None or current == version:
                better, why = True, "it is no longer set" if current is None else "already it"
            elif metric is None:
                better, why = False, "no metric given to compare with the new champion"
            else:
                better, why = _beats_by_tags(name, version, current, metric)
            reason = f"{changed} while deciding; {why}"
            if not better:
                raise PromotionRefused(f"{reason}; promotion refused", current)
        if current != version:
            mlflow_client = client()
            previous = current or ""
            retrying(mlflow_client.set_model_version_tag, name, version, PREVIOUS_TAG, previous)
            if not still_held(name, token):
                raise RegistryError(f"promotion lock of '{name}' expired; promotion abandoned")
            retrying(mlflow_client.set_registered_model_alias, name, CHAMPION, version)
    return {"name": name, "champion_version": version, "previous": current, "reason": reason}


def rollback(name: str) -> dict[str, Any]:
    """Move ``champion`` back to the version it replaced at its last promotion (under the lock).

    Raises:
        RegistryError: No champion, or no earlier champion recorded for it.
    """
    _require_model(name)
    with promotion_lock(name) as token:
        current = champion_version(name)
        if current is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        previous = version_tags(name, current).get(PREVIOUS_TAG) or None
        if previous is None:
            raise RegistryError(
                f"'{name}' champion version {current} has no earlier champion recorded; "
                f"use 'adaptflow promote {name} VERSION' instead"
            )
        if not still_held(name, token):
            raise RegistryError(f"promotion lock of '{name}' expired; rollback abandoned")
        retrying(client().set_registered_model_alias, name, CHAMPION, previous)
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
        if _is_mlflow_error(exc) or isinstance(exc, OSError):
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
        if _is_mlflow_error(exc) or isinstance(exc, OSError):
            raise RegistryError(f"cannot download model '{model_uri}': {exc}") from None
        raise
    package = Path(local)
    if not (package / "adaptflow_model.json").is_file():
        raise RegistryError(f"'{model_uri}' holds no adaptflow model package")
    return package


#: The record a materialized registered base keeps next to its weights (which version it is).
BASE_RECORD = "adaptflow_base.json"
#: Package kinds a registered base can be: the generative ones (``runtime.manifest.KINDS``).
GENERATIVE_KINDS = ("causal-lm", "seq2seq-lm")


@dataclass(frozen=True)
class RegisteredBase:
    """A registered version materialized as a plain Hugging Face model folder.

    ``folder`` holds the model (an adapter merged into its base) and the package's tokenizer,
    so ``from_pretrained`` loads it like any local base model.
    """

    folder: Path
    name: str
    version: str
    run_id: str
    kind: str
    method: str

    @property
    def lineage(self) -> dict[str, str]:
        """The tags a run started from this version carries (its parent and the parent's run)."""
        return {
            "adaptflow.parent": f"{self.name}/{self.version}",
            "adaptflow.parent_run_id": self.run_id,
        }


def _registered_version(model_uri: str, field: str = "base_model") -> tuple[str, str, str]:
    """``(name, version, run_id)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/N``.

    Raises:
        SpecError: A malformed URI, or no such model, alias or version (naming ``field``).
        ServiceError: The registry could not be read.
    """
    from adaptflow.catalogue import registered_reference

    try:
        parsed = registered_reference(model_uri)
    except ValueError as exc:
        raise SpecError(f"{field} {exc}") from None
    if parsed is None:
        raise SpecError(f"{field} '{model_uri}' is not a registered version (models:/…)")
    name, alias, version = parsed
    try:
        _require_model(name)
        if alias is not None:
            found = _read(
                f"alias '{alias}' of '{name}'",
                f"registered model '{name}' has no alias '{alias}'",
                client().get_model_version_by_alias,
                name,
                alias,
            )
        else:
            found = _get_version(name, str(version))
    except RegistryError as exc:
        raise SpecError(f"{field} {model_uri}: {exc}") from None
    return name, str(found.version), str(found.run_id or "")


def data_hash_of(model_uri: str) -> tuple[str, str, str | None]:
    """``(name, version, curated data hash)`` of a registered version (hash None: untagged).

    Raises:
        SpecError: A malformed URI, or no such model, alias or version.
        ServiceError: The registry could not be read.
    """
    name, version, _ = _registered_version(model_uri, "MODEL_URI")
    return name, version, version_tags(name, version).get(DATA_HASH_TAG)


def reward_package(model_uri: str, dest_root: Path, field: str = "rewards") -> Path:
    """The package of a registered reward model (method ``reward``), downloaded once.

    Kept under ``dest_root/NAME/VERSION`` while it holds the same version (same run id), as
    ``materialize_base`` keeps bases: GRPO scores every sampled answer with it, so it is read
    from disk, not downloaded per use.

    Raises:
        SpecError: A malformed URI; no such model, alias or version; not a reward model.
        ServiceError: The registry could not be read.
    """
    return registered_package(
        model_uri,
        dest_root,
        field,
        ("reward-model",),
        "kind model needs a reward model (method reward)",
    )


def registered_package(
    model_uri: str, dest_root: Path, field: str, kinds: tuple[str, ...], need: str
) -> Path:
    """The package of a registered version of one of ``kinds``, downloaded once.

    Kept under ``dest_root/NAME/VERSION`` while it holds the same version (same run id).

    Raises:
        SpecError: A malformed URI; no such model, alias or version; a package of another kind
            (``need`` says what ``field`` needs).
        ServiceError: The registry could not be read.
    """
    import tempfile

    from runtime.manifest import read_raw

    name, version, run_id = _registered_version(model_uri, field)
    folder = dest_root / name / version
    record = _record(folder)
    if _same_version(record, run_id):
        return folder
    dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-{version}-", dir=dest_root) as scratch:
        package = download_package(f"models:/{name}/{version}", Path(scratch) / "download")
        raw = read_raw(package)
        if raw["kind"] not in kinds or not _trained(package, raw):
            raise SpecError(
                f"{field}: '{model_uri}' is version {version} of '{name}', a '{raw['kind']}' "
                f"(method {raw.get('method')}); {need}"
            )
        record = {"name": name, "version": version, "run_id": run_id}
        record |= {"kind": raw["kind"], "method": raw.get("method")}
        _put_in_place(package, folder, record, Path(scratch))
    return folder


def _trained(package: Path, raw: dict[str, Any]) -> bool:
    """Whether a classifier package holds trained weights (an ICL package holds none)."""
    if raw["kind"] != "encoder-classifier":
        return True
    return (package / "weights").is_dir() or (package / "adapter").is_dir()


def _put_in_place(built: Path, folder: Path, record: dict[str, Any], scratch: Path) -> None:
    """Record the version in ``built`` and rename it to ``folder``, unless another run was first.

    ``built`` and ``scratch`` sit on ``folder``'s filesystem, so the rename is atomic; a folder
    holding another version under the same name (another registry's) is replaced.
    """
    import json
    import os
    import shutil

    (built / BASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    folder.parent.mkdir(exist_ok=True)
    stale = scratch / "stale"
    if not _same_version(_record(folder), record["run_id"]):  # else a concurrent run was first
        if folder.exists():
            os.replace(folder, stale)
        try:
            os.replace(built, folder)
        except OSError:  # a concurrent run put the same version in place meanwhile
            if not _same_version(_record(folder), record["run_id"]):
                raise
    shutil.rmtree(stale, ignore_errors=True)


def _same_version(record: dict[str, Any] | None, run_id: str) -> TypeGuard[dict[str, Any]]:
    """Whether a materialized folder's record is of the version registered from ``run_id``."""
    return (
        record is not None and record.get("run_id") == run_id and {"kind", "method"} <= set(record)
    )


def _record(folder: Path) -> dict[str, Any] | None:
    import json

    try:
        record = json.loads((folder / BASE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def materialize_base(model_uri: str, dest_root: Path, method: str | None = None) -> RegisteredBase:
    """Resolve a registered version and write it as a plain model folder a run can start from.

    The folder is ``dest_root/NAME/VERSION``: for an adapter package (LoRA, DoRA, IA3) the
    adapter merged into its base (the package's bundled ``base/``, or the base its manifest
    names), for a full-weights package its weights, each with the package's tokenizer. It is
    written to a temporary folder and renamed into place, and reused while it holds the same
    version (same run id): versions never change, so only the alias is read again.

    Args:
        model_uri: ``models:/NAME@ALIAS`` or ``models:/NAME/N``.
        dest_root: Where materialized versions are kept (``ADAPTFLOW_HOME/work/bases``).
        method: The method the run trains with, for the message when the version is not
            generative.

    Raises:
        SpecError: A malformed URI; no such model, alias or version; a version that is not a
            generative package, is int8-quantized or holds a virtual-token adapter.
        ServiceError: The registry could not be read.
    """
    import tempfile

    name, version, run_id = _registered_version(model_uri)
    folder = dest_root / name / version
    record = _record(folder)
    if _same_version(record, run_id):
        return RegisteredBase(folder, name, version, run_id, record["kind"], record["method"])
    dest_root.mkdir(parents=True, exist_ok=True)
    # the scratch folder sits on the same filesystem, so the rename below is atomic
    with tempfile.TemporaryDirectory(prefix=f".{name}-{version}-", dir=dest_root) as scratch:
        package = download_package(f"models:/{name}/{version}", Path(scratch) / "download")
        kind, package_method = _base_kind(model_uri, package, method)
        built = Path(scratch) / "model"
        _write_base_folder(model_uri, package, built)
        record = {"name": name, "version": version, "run_id": run_id}
        record |= {"kind": kind, "method": package_method}
        _put_in_place(built, folder, record, Path(scratch))
    return RegisteredBase(folder, name, version, run_id, kind, package_method)


def _base_kind(model_uri: str, package: Path, method: str | None) -> tuple[str, str]:
    """The package's kind and method, when it can be a base model.

    Raises:
        SpecError: A non-generative package, or an int8 one.
    """
    from runtime.manifest import read_raw

    raw = read_raw(package)
    kind, package_method = str(raw["kind"]), str(raw.get("method", "?"))
    if kind not in GENERATIVE_KINDS:
        article = "an" if kind[0] in "aeiou" else "a"
        needs = f"method {method}" if method else "a registered base model"
        raise SpecError(
            f"base_model {model_uri} is {article} {kind} package (method {package_method}); "
            f"{needs} needs a generative (decoder or encoder-decoder) version"
        )
    if (raw.get("options") or {}).get("quantize"):
        raise SpecError(
            f"base_model {model_uri} is an int8-quantized package; training starts from full "
            "precision weights: name the version it was exported from"
        )
    return kind, package_method


def _write_base_folder(model_uri: str, package: Path, out: Path) -> None:
    """Write ``package`` as a plain model folder ``out``: merged or copied weights, tokenizer."""
    import shutil

    from runtime.loading import load_generator

    if (package / "weights").is_dir():
        shutil.copytree(package / "weights", out)
    else:
        model, _, _ = load_generator(package)  # base (bundled or referenced) + adapter
        if model.active_peft_config.is_prompt_learning:
            raise SpecError(
                f"base_model {model_uri} holds a {model.active_peft_config.peft_type.value} "
                "adapter, which adds virtual tokens rather than weight changes, so it cannot "
                "be merged into a base model; name a lora, dora, ia3 or full-weights version"
            )
        merged = model.merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(str(out), safe_serialization=True)
    shutil.copytree(package / "tokenizer", out, dirs_exist_ok=True)
