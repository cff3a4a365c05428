"""Version a curated dataset with DVC and return its content hash."""

from __future__ import annotations

from pathlib import Path

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


def version_with_dvc(dataset_dir: Path, repo_root: Path, derived: tuple[str, ...] = DERIVED) -> str:
    """Track ``dataset_dir`` in the DVC repository at ``repo_root`` and return its hash.

    The repository is created (without git) on first use, so DVC's cache lives under the same
    root. Re-adding unchanged data is cheap and gives the same hash; changed data gets a new
    hash while the old version stays in the cache. The ``derived`` files (the report and the
    chart) are not part of the version: see ``DERIVED``.

    Args:
        dataset_dir: Folder of curated files, inside ``repo_root``.
        repo_root: The DVC repository root (by default ``ADAPTFLOW_HOME``).
        derived: Names of files in ``dataset_dir`` that DVC ignores.

    Returns:
        DVC's md5 of the folder's data (``<hex>.dir``).
    """
    from dvc.repo import Repo

    if not (repo_root / ".dvc").is_dir():
        Repo.init(str(repo_root), no_scm=True)
    if derived:
        _ignore_derived(dataset_dir, repo_root, derived)
    with Repo(str(repo_root)) as repo:
        stages = repo.add(str(dataset_dir))
    hash_info = stages[0].outs[0].hash_info
    return str(hash_info.value)
