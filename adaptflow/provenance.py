"""Facts that tie a run to its code and its inputs: git commits, DVC hashes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from adaptflow.inputs import lineage, source_of


def git_commit(folder: Path | None) -> str | None:
    """The commit checked out in the git work tree holding ``folder``, or None."""
    if folder is None:
        return None
    return _git(folder, "rev-parse", "HEAD") or None


def dvc_experiment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags naming the DVC experiment this run is a stage of (under ``dvc exp run``).

    DVC hands a stage the experiment's name and the commit it branched from in the environment
    (``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``): tagged ``adaptflow.dvc.exp_name`` and
    ``adaptflow.dvc.exp_baseline_rev``, they find the MLflow run of ``dvc exp show``'s row,
    as the run id in the stage's metrics file finds the way back.
    """
    env = os.environ if env is None else env
    names = {"DVC_EXP_NAME": "exp_name", "DVC_EXP_BASELINE_REV": "exp_baseline_rev"}
    return {f"adaptflow.dvc.{tag}": env[var] for var, tag in names.items() if env.get(var)}


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS``'s stripped output, or None when git fails or is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _dvc_record(path: Path) -> str | None:
    """The md5 DVC recorded for ``path``: its ``.dvc`` file, or a ``dvc.lock`` output above it."""
    import yaml

    sidecar = path.with_name(path.name + ".dvc")
    try:
        if sidecar.is_file():
            outs = (yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}).get("outs") or []
            found = (o.get("md5") for o in outs if o.get("path") == path.name)
            return next((str(md5) for md5 in found if md5), None)
        for folder in path.resolve().parents:
            lock = folder / "dvc.lock"
            if lock.is_file():
                stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages")
                relative = path.resolve().relative_to(folder.resolve()).as_posix()
                for stage in (stages or {}).values():
                    for out in stage.get("outs") or []:
                        if out.get("path") == relative and "md5" in out:
                            return str(out["md5"])
            if (folder / ".dvc").is_dir():  # the DVC repository's root: look no higher
                break
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return None


def _md5(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None  # a folder's DVC hash is of its manifest: compared by DVC, not here
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_lineage(key: str, path: Path | None) -> dict[str, str]:
    """Tags that say which revision of an input file a run read, when git or DVC tracks it.

    - git: ``adaptflow.input.KEY.git_commit`` (the last commit that changed the file) and
      ``adaptflow.input.KEY.git_clean`` (``false`` when the working copy differs from it).
    - DVC (a ``PATH.dvc`` file, or a ``dvc.lock`` stage output): ``adaptflow.input.KEY.dvc_md5``
      and, for a file, ``adaptflow.input.KEY.dvc_matches`` (whether the file read has that md5).

    - a ``dvc://`` input (``adaptflow.inputs``): ``adaptflow.input.KEY.dvc_url`` (as written),
      ``…dvc_commit`` (the registry's commit its revision resolved to) and ``…dvc_md5``, with
      ``…dvc_matches`` for a file.
    - an ``hf://`` or ``save_to_disk`` input: ``…hf_dataset``, ``…hf_fingerprint``,
      ``…hf_split`` and ``…hf_revision`` (``adaptflow.inputs.lineage``); a
      ``dataset_info.json#NAME`` entry: ``…dataset_info``, then its file's git/DVC tags.

    Untracked inputs get no tags.
    """
    if path is None or not path.exists():
        return {}
    prefix = f"adaptflow.input.{key}."
    source = source_of(path)
    if source is not None:
        tags = {prefix + "dvc_url": source.url, prefix + "dvc_commit": source.commit}
        if source.md5:
            tags[prefix + "dvc_md5"] = source.md5
            actual = _md5(path)
            if actual is not None:
                tags[prefix + "dvc_matches"] = "true" if actual == source.md5 else "false"
        return tags
    # hf:// and save_to_disk inputs name their dataset; a dataset_info.json entry its file
    named, tracked = lineage(path)
    tags = {prefix + name: value for name, value in named.items()}
    if tracked is None or not tracked.exists():
        return tags
    path = tracked
    folder = path.parent if path.is_file() else path
    name = path.name if path.is_file() else "."
    if _git(folder, "ls-files", "--error-unmatch", "--", name) is not None:
        commit = _git(folder, "log", "-1", "--format=%H", "--", name)
        if commit:
            tags[prefix + "git_commit"] = commit
            changed = _git(folder, "status", "--porcelain", "--", name)
            tags[prefix + "git_clean"] = "true" if changed == "" else "false"
    recorded = _dvc_record(path)
    if recorded is not None:
        tags[prefix + "dvc_md5"] = recorded
        actual = _md5(path)
        if actual is not None:
            tags[prefix + "dvc_matches"] = "true" if actual == recorded else "false"
    return tags
