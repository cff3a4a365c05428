"""Data inputs named by reference: a file or folder in a DVC data registry, ``dvc://``.

``data.train: dvc://REPO#PATH@REV`` reads ``PATH`` as it was at git revision ``REV`` (a tag,
branch or commit; default: the repository's HEAD) of the DVC repository ``REPO``: the data
registry pattern DVC recommends for sharing datasets between projects (``dvc get`` /
``dvc.api``). ``REPO`` is

- a folder: ``dvc:///abs/path#data/train.jsonl``, or relative to the spec's folder,
  ``dvc://../registry#data/train.jsonl``;
- a git URL: ``dvc://https://github.com/org/registry#data/train.jsonl@v2`` (also ``ssh://``,
  ``git@host:org/repo``, ``file://``);
- ``HOST/ORG/NAME`` without a scheme, read as ``https://HOST/ORG/NAME``.

The file is fetched through ``dvc.api.DVCFileSystem`` (DVC-tracked data comes from the
registry's cache or its default remote, git-tracked files from git) into
``ADAPTFLOW_HOME/work/inputs/KEY/``, keyed by repository, path and the commit ``REV`` resolved
to, so a fetched revision is read once and a moved branch fetches anew. Beside the data,
``source.json`` records where it came from (the URL, the resolved commit, DVC's md5):
``adaptflow.provenance.input_lineage`` turns that into the run's tags, so a version trained on a
registry file names the exact revision it read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adaptflow.settings import load_settings

SCHEME = "dvc://"
#: Written beside fetched data: where it came from (see the module docstring).
SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class DvcSource:
    """Where a ``dvc://`` input lives, and the revision that was read."""

    url: str  # as written in the spec
    repo: str  # a folder or a git URL, as DVC takes it
    path: str  # inside the repository
    rev: str | None  # as written; None = HEAD
    commit: str = ""  # the git commit ``rev`` resolved to
    md5: str = ""  # DVC's hash of the data (empty for a git-tracked file)


def is_reference(value: Any) -> bool:
    """Whether ``value`` is a ``dvc://`` reference rather than a path."""
    return isinstance(value, str) and value.startswith(SCHEME)


def parse(url: str, base_dir: Path | None = None) -> DvcSource:
    """Split ``dvc://REPO#PATH@REV`` (see the module docstring); relative folders from ``base_dir``.

    Raises:
        ValueError: When the reference has no ``#PATH`` or an empty part.
    """
    rest = url[len(SCHEME) :]
    repo, hash_sign, path_rev = rest.partition("#")
    if not hash_sign or not repo or not path_rev:
        raise ValueError(
            f"'{url}' is not a DVC reference: expected dvc://REPO#PATH or dvc://REPO#PATH@REV "
            "(REPO a folder or a git URL)"
        )
    path, at, rev = path_rev.rpartition("@") if "@" in path_rev else (path_rev, "", "")
    if not path or (at and not rev):
        raise ValueError(f"'{url}': empty {'path' if not path else 'revision after @'}")
    return DvcSource(url=url, repo=_repo(repo, base_dir), path=path.strip("/"), rev=rev or None)


def _repo(repo: str, base_dir: Path | None) -> str:
    if "://" in repo or repo.startswith("git@"):
        return repo
    local = Path(repo).expanduser()
    if repo.startswith(("/", ".", "~")) or (base_dir is not None and (base_dir / local).is_dir()):
        if not local.is_absolute() and base_dir is not None:
            local = base_dir / local
        return str(local.resolve())
    return "https://" + repo


def fetch(url: str, base_dir: Path | None = None, inputs_dir: Path | None = None) -> Path:
    """Fetch a ``dvc://`` input into the inputs folder; the local path of the file or folder.

    Args:
        url: ``dvc://REPO#PATH@REV``.
        base_dir: Where a relative ``REPO`` folder is resolved (the spec's folder).
        inputs_dir: Where fetched inputs live (default ``ADAPTFLOW_HOME/work/inputs``).

    Raises:
        ValueError: A malformed reference, or a repository, revision or path DVC cannot read,
            with DVC's reason.
    """
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    source = parse(url, base_dir)
    root = inputs_dir or load_settings().work_dir / "inputs"
    try:
        fs = DVCFileSystem(source.repo, rev=source.rev)
        commit = str(fs.repo.get_rev())
        info = fs.info(source.path)
    except FileNotFoundError:
        raise ValueError(
            f"'{url}': no '{source.path}' in {source.repo} at {source.rev or 'HEAD'}"
        ) from None
    except (DvcException, OSError) as error:
        reason = str(error) or type(error).__name__
        raise ValueError(
            f"'{url}': cannot read the DVC repository {source.repo} at "
            f"{source.rev or 'HEAD'}: {reason}"
        ) from None
    source = DvcSource(**{**asdict(source), "commit": commit, "md5": str(info.get("md5") or "")})
    key = hashlib.sha256(f"{source.repo}\0{source.path}\0{commit}".encode()).hexdigest()[:16]
    folder = root / key
    name = Path(source.path).name
    if not (folder / SOURCE_FILE).is_file():  # written last: its presence means complete
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            if info.get("type") == "directory":
                fs.get(source.path, str(staging / name), recursive=True)
            else:
                fs.get_file(source.path, str(staging / name))
            (staging / SOURCE_FILE).write_text(json.dumps(asdict(source), indent=2) + "\n")
            if folder.is_dir() and not (folder / SOURCE_FILE).is_file():
                shutil.rmtree(folder)  # incomplete (source.json is written before the rename)
            try:
                os.rename(staging, folder)
            except OSError:  # another run fetched the same revision first: theirs is the same
                shutil.rmtree(staging, ignore_errors=True)
        except (DvcException, OSError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            hint = (
                " (the data is in neither the registry's DVC cache nor its default remote: "
                "was it `dvc push`ed?)"
                if isinstance(error, FileNotFoundError)
                else ""
            )
            raise ValueError(f"'{url}': fetching {source.path} failed: {error}{hint}") from None
    return folder / name


def source_of(path: Path | None) -> DvcSource | None:
    """The ``dvc://`` source a fetched input came from (None for an ordinary path)."""
    if path is None:
        return None
    record = path.parent / SOURCE_FILE
    try:
        source = DvcSource(**json.loads(record.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    fetched = source.url.startswith(SCHEME) and Path(source.path).name == path.name
    return source if fetched else None


def display(path: Path | None) -> str | None:
    """How an input is shown in params and cards: its ``dvc://`` URL, else the path."""
    if path is None:
        return None
    source = source_of(path)
    return source.url if source is not None else str(path)
