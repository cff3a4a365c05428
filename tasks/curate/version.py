"""Version a curated dataset with DVC and return its content hash."""

from __future__ import annotations

from pathlib import Path


def version_with_dvc(dataset_dir: Path, repo_root: Path) -> str:
    """Track ``dataset_dir`` in the DVC repository at ``repo_root`` and return its hash.

    The repository is created (without git) on first use, so DVC's cache lives under the same
    root. Re-adding unchanged data is cheap and gives the same hash; changed data gets a new
    hash while the old version stays in the cache.

    Args:
        dataset_dir: Folder of curated files, inside ``repo_root``.
        repo_root: The DVC repository root (by default ``ADAPTFLOW_HOME``).

    Returns:
        DVC's md5 of the folder (``<hex>.dir``).
    """
    from dvc.repo import Repo

    if not (repo_root / ".dvc").is_dir():
        Repo.init(str(repo_root), no_scm=True)
    with Repo(str(repo_root)) as repo:
        stages = repo.add(str(dataset_dir))
    hash_info = stages[0].outs[0].hash_info
    return str(hash_info.value)
