"""Facts that tie a run to its code: the git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(folder: Path | None) -> str | None:
    """The commit checked out in the git work tree holding ``folder``, or None."""
    if folder is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
