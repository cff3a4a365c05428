"""Version a curated dataset with DVC, share it through a remote, and fetch it back by hash.

With ``ADAPTFLOW_DVC_REMOTE`` set (any URL DVC supports: a folder, ``s3://``, ``gs://``,
``azure://``, ``ssh://``), every version is pushed right after it is added, and a push that
fails is an error (exit 3) naming the remote: a version only this machine holds would leave the
registry pointing at data a teammate cannot get. ``pull_dataset`` fetches a version back from
the remote by its hash alone (the ``adaptflow.data_hash`` tag every registered version has),
into an empty folder, with DVC checking every file's md5.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from adaptflow.errors import DataError, ServiceError
from runtime.index import public_url

#: The name the remote has in adaptflow's DVC repositories.
REMOTE = "adaptflow"

#: Files of a curated folder that describe the data rather than hold it: DVC ignores them, so
#: the hash that gates scheduled retraining changes with the data only (a plotting library
#: upgrade that redraws ``funnel.png`` is not new data). They are logged to the MLflow run.
DERIVED = ("report.md", "funnel.png")


def _ignore_derived(dataset_dir: Path, repo_root: Path, derived: tuple[str, ...]) -> None:
    """Add ``dataset_dir``'s derived files to the repository's ``.dvcignore`` (anchored)."""
    ignore = repo_root / ".dvcignore"
    lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.exists() else []
    folder = dataset_dir.resolve().relative_to(repo_root.resolve()).as_posix()
    wanted = [f"/{folder}/{name}" for name in derived]
    missing = [line for line in wanted if line not in lines]
    if missing:
        ignore.write_text("\n".join([*lines, *missing]) + "\n", encoding="utf-8")


def _use_remote(repo: Any, url: str) -> None:
    """Make ``url`` the repository's default remote (named ``REMOTE``)."""
    with repo.config.edit() as conf:
        conf["remote"][REMOTE] = {"url": url}
        conf["core"]["remote"] = REMOTE


def dvc_project_root(folder: Path) -> Path | None:
    """The root of the DVC repository holding ``folder`` (a ``.dvc`` folder above), or None."""
    for candidate in (folder.resolve(), *folder.resolve().parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def version_in_project(dataset_dir: Path, repo_root: Path) -> tuple[str, Path]:
    """Track ``dataset_dir`` in the user's own DVC repository; its hash and its ``.dvc`` file.

    Unlike the private repository under ``ADAPTFLOW_HOME``, this one is the user's: DVC writes
    ``NAME.dvc`` beside the folder and git-ignores the folder itself (``.gitignore`` beside it,
    DVC's own handling), so the data never lands in git and the ``.dvc`` file is what the user
    commits. Its configuration is left alone; the version is pushed to the repository's own
    default remote when it has one (``dvc remote add -d``), as ``dvc push`` would.

    Raises:
        ServiceError: The push to the repository's default remote failed.
    """
    from dvc.repo import Repo

    _ignore_derived(dataset_dir, repo_root, DERIVED)
    with Repo(str(repo_root)) as repo:
        stages = repo.add(str(dataset_dir))
        value = str(stages[0].outs[0].hash_info.value)
        default = repo.config["core"].get("remote")
        if default:
            try:
                repo.push(targets=[str(dataset_dir)])
            except Exception as exc:  # DVC raises its own errors and the filesystem's
                raise ServiceError(
                    f"could not push {dataset_dir} (DVC hash {value}) to the project's default "
                    f"DVC remote '{default}': {exc}. The version is in the project's cache "
                    "only; fix the remote and run again"
                ) from None
    return value, dataset_dir.with_name(dataset_dir.name + ".dvc")


def version_with_dvc(
    dataset_dir: Path,
    repo_root: Path,
    derived: tuple[str, ...] = DERIVED,
    remote: str | None = None,
) -> str:
    """Track ``dataset_dir`` in the DVC repository at ``repo_root`` and return its hash.

    The repository is created (without git) on first use, so DVC's cache lives under the same
    root. Re-adding unchanged data is cheap and gives the same hash; changed data gets a new
    hash while the old version stays in the cache. The ``derived`` files (the report and the
    chart) are not part of the version: see ``DERIVED``.

    Args:
        dataset_dir: Folder of curated files, inside ``repo_root``.
        repo_root: The DVC repository root (by default ``ADAPTFLOW_HOME``).
        derived: Names of files in ``dataset_dir`` that DVC ignores.
        remote: Where to push the version (default: ``ADAPTFLOW_DVC_REMOTE``; none: local only).

    Returns:
        DVC's md5 of the folder's data (``<hex>.dir``).

    Raises:
        ServiceError: The push to the remote failed (the version stays in the local cache).
    """
    from adaptflow.settings import load_settings

    remote = remote or load_settings().dvc_remote
    from dvc.repo import Repo

    if not (repo_root / ".dvc").is_dir():
        Repo.init(str(repo_root), no_scm=True)
    if derived:
        _ignore_derived(dataset_dir, repo_root, derived)
    with Repo(str(repo_root)) as repo:
        stages = repo.add(str(dataset_dir))
        value = str(stages[0].outs[0].hash_info.value)
        if remote:
            _use_remote(repo, remote)
            try:
                repo.push(targets=[str(dataset_dir)], remote=REMOTE)
            except Exception as exc:  # DVC raises its own errors and the filesystem's
                shown = public_url(remote)  # no credentials in messages
                raise ServiceError(
                    f"could not push {dataset_dir} (DVC hash {value}) to the DVC remote "
                    f"ADAPTFLOW_DVC_REMOTE={shown}: {str(exc).replace(remote, shown)}. The "
                    "version is in the local cache only; fix the remote (or unset "
                    "ADAPTFLOW_DVC_REMOTE) and run again"
                ) from None
    return value


def pull_dataset(data_hash: str, dest: Path, remote: str, scratch_root: Path) -> list[Path]:
    """Fetch the dataset version ``data_hash`` from ``remote`` into the new folder ``dest``.

    A throw-away DVC repository under ``scratch_root`` holds a ``.dvc`` file naming the hash;
    ``dvc pull`` fetches the folder's manifest and files, checks each md5 and checks the folder
    out, which then moves to ``dest``.

    Returns:
        The files written, sorted.

    Raises:
        DataError: ``dest`` exists and is not empty, or the remote lacks that version.
        ServiceError: The remote could not be read.
    """
    from dvc.repo import Repo

    if not data_hash.endswith(".dir"):
        raise DataError(f"'{data_hash}' is not the DVC hash of a curated folder (<md5>.dir)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest} exists and is not an empty folder; name another destination")
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pull-", dir=scratch_root) as tmp:
        Repo.init(tmp, no_scm=True)
        dvc_file = f"outs:\n- md5: {data_hash}\n  path: data\n  hash: md5\n"  # DVC 3 hashes
        (Path(tmp) / "data.dvc").write_text(dvc_file)
        with Repo(tmp) as repo:
            _use_remote(repo, remote)
            try:
                repo.pull(targets=[str(Path(tmp) / "data.dvc")], remote=REMOTE)
            except Exception as exc:  # DVC's errors and the filesystem's
                shown = public_url(remote)  # no credentials in messages
                missing = "checkout failed" in str(exc).lower() or "missing" in str(exc).lower()
                if missing:
                    raise DataError(
                        f"the DVC remote ADAPTFLOW_DVC_REMOTE={shown} does not hold the data of "
                        f"DVC hash {data_hash}: it was never pushed there (versioned without a "
                        "remote, or to another one)"
                    ) from None
                raise ServiceError(
                    f"could not pull DVC hash {data_hash} from ADAPTFLOW_DVC_REMOTE={shown}: "
                    f"{str(exc).replace(remote, shown)}"
                ) from None
            if repo.status(targets=[str(Path(tmp) / "data.dvc")]):
                raise DataError(f"the pulled files do not match DVC hash {data_hash}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest.rmdir()
        shutil.move(str(Path(tmp) / "data"), str(dest))
    return sorted(p for p in dest.rglob("*") if p.is_file())
