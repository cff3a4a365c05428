"""No-training baselines scored once per (data, base model, settings), through Prefect's cache.

A run compares its candidate with the base model's own score on the same eval split (the
nearest-neighbour vote, the base answering zero-shot, its perplexity). Retraining on the same
data, a search over learning rates, ``dvc exp run -S ...``: each run scored the same baseline
again, seconds to minutes of every run's fixed cost (issue 23). The baseline tasks therefore
use Prefect's own task cache (results persisted under ``PREFECT_HOME/storage``, so per home)
with a key that reads what the result depends on:

- the data files by content (SHA-256), not by path: curation writes the same split to the
  same bytes, and a changed split misses;
- a local base model folder by the name, size and modification time of every file in it (a
  rebuilt or re-saved model misses); a hub id is not cached (its snapshot can change);
- every other argument by value, and the task's source code (Prefect's ``TASK_SOURCE``), so a
  changed scoring function misses too.

Rewards that run user code or a registered model (``python``, ``model``) are not cached: their
code or weights can change under the same arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy

#: Reward kinds whose result depends on more than their arguments.
UNCACHEABLE_REWARDS = ("python", "model")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(reference: str) -> str | None:
    """A digest of a local model's files (name, size, mtime), or None for a hub id."""
    from adaptflow.catalogue import resolve_base_model

    folder = Path(resolve_base_model(reference))
    if not folder.is_dir():
        return None
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for item in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = item.stat()
        digest.update(f"{item.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _run_code(rewards: list[dict[str, Any]] | None) -> bool:
    """Whether any of ``rewards`` runs user code or a registered model (never cached)."""
    return any(r.get("kind") in UNCACHEABLE_REWARDS for r in rewards or ())


def _keyed(key: Callable[[Any, dict[str, Any]], str | None]) -> CachePolicy:
    """A policy keyed by ``key`` and the task's source; no caching where ``key`` gives None.

    Not ``TASK_SOURCE + CacheKeyFnPolicy(...)``: Prefect's compound policy skips a part that
    gives no key, so a None there meant "the task's source alone", and every call the key
    refused (a hub model, code rewards, no champion) shared one cached result.
    """

    def keyed(context: Any, parameters: dict[str, Any]) -> str | None:
        own = key(context, parameters)
        if own is None:
            return None
        source = TASK_SOURCE.compute_key(task_ctx=context, inputs=parameters, flow_parameters={})
        return hashlib.sha256(f"{source}|{own}".encode()).hexdigest()

    return CacheKeyFnPolicy(cache_key_fn=keyed)


def baseline_cache(files: tuple[str, ...], model: str = "base_model") -> CachePolicy:
    """The cache policy of a baseline task whose ``files`` parameters are data files."""
    return _keyed(baseline_key(files, model))


def baseline_key(
    files: tuple[str, ...], model: str = "base_model"
) -> Callable[[Any, dict[str, Any]], str | None]:
    """A baseline's key from its parameters (None: not cached); see the module docstring."""

    def key(_context: Any, parameters: dict[str, Any]) -> str | None:
        parts = []
        for name, value in sorted(parameters.items()):
            if name in files:
                parts.append(f"{name}={file_digest(Path(value))}")
            elif name == model:
                found = model_digest(str(value))
                if found is None:
                    return None
                parts.append(f"{name}={found}")
            elif name == "rewards" and _run_code(value):
                return None
            else:
                parts.append(f"{name}={value!r}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    return key


def champion_cache() -> CachePolicy:
    """The cache policy of scoring the champion on an eval split (``score_champion``).

    Every run re-scores the champion on its own eval split so the gate compares like with
    like; on unchanged data (a retrain, a search, a sweep) that is the same model on the same
    bytes again. The key reads the registered version by what tells it apart for good (its
    run, source and creation time: a version number comes back when a model is deleted and
    registered again), the eval file by content and the other arguments by value, plus the
    task's source (``TASK_SOURCE``). Not cached: a judge's win rate (``versus``: an LLM or
    another model answers), rewards that run code or a model, and retrieval (its index can
    live on a Chroma server that changes under the same version).
    """
    from registry.models import version_identity

    def key(_context: Any, parameters: dict[str, Any]) -> str | None:
        version = parameters.get("version")
        if version is None or parameters.get("versus") is not None:
            return None
        if parameters.get("task") == "retrieval-qa":
            return None
        if _run_code(parameters.get("rewards")):
            return None
        parts = [
            version_identity(str(parameters["name"]), str(version)),
            file_digest(Path(parameters["eval_path"])),
            *(f"{name}={parameters.get(name)!r}" for name in ("task", "rewards", "rewards_dir")),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    return _keyed(key)


def cached_baseline(name: str, files: tuple[str, ...]) -> Callable[[Any], Any]:
    """``prefect.task`` for a baseline function, cached per home with ``baseline_cache``."""
    return task(name=name, cache_policy=baseline_cache(files), persist_result=True)
