"""The promotion lock: one mover of a registered model's ``champion`` alias at a time.

MLflow's alias API has no compare-and-set, so "re-read the champion,
then move the alias" alone still lets two promoters interleave (both read v1, both move it, one
update is lost and both record v1 as the champion they replaced). Every move of ``champion``
(``promote``, ``rollback``) therefore happens under a promotion lock per registered model:

- a file lock (``filelock``, ``flock``) beside the SQLite store, or under ``ADAPTFLOW_HOME/locks``
  when the store is a server: serialises every process on one machine, exactly;
- on a tracking server, additionally a lease held in the registered model's tag
  ``adaptflow.promotion_lock`` (Fischer's timed mutual exclusion): wait until the tag is free or
  expired, write ``<uuid> <expiry>``, wait ``LOCK_SETTLE_SECONDS``, re-read; only if it still
  holds our uuid do we hold the lock. This serialises workers on different machines that share
  the server, *provided* no contender takes longer than the settle time between reading "free"
  and writing its uuid (a process paused that long, e.g. swapped out, could write over a lock
  already confirmed), and provided the holder finishes within the lease (``LOCK_LEASE_SECONDS``;
  we re-check the lease before moving the alias). That bounded-delay assumption is the
  remaining window. A Prefect global concurrency limit was not used: it lives in a different
  system than the data it protects (``adaptflow promote`` and other MLflow clients do not go
  through Prefect, and each embedded Prefect server is private to its process).
- Someone moving the alias in the MLflow UI takes no lock; a promotion that re-reads just before
  that move can still overwrite it (the window is one request long).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adaptflow.errors import RegistryError
from adaptflow.settings import load_settings
from registry.tracking import client, retrying

LOCK_TAG = "adaptflow.promotion_lock"
#: Longest a lock may be held before others may take it over (a crashed holder).
LOCK_LEASE_SECONDS = 60.0
#: How long a server-lock contender waits after writing its uuid before re-reading it; must
#: exceed the longest gap between a contender reading "free" and its write landing.
LOCK_SETTLE_SECONDS = float(os.environ.get("ADAPTFLOW_PROMOTION_LOCK_SETTLE", "1.0"))
#: How long a promotion waits for the lock before giving up.
LOCK_TIMEOUT_SECONDS = 180.0


def _lock_file(name: str) -> Path:
    settings = load_settings()
    uri = settings.mlflow_tracking_uri
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    else:
        folder = settings.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".promotion-{safe}.lock"


def _is_local_store() -> bool:
    uri = load_settings().mlflow_tracking_uri
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _lock_holder(name: str) -> tuple[str, float] | None:
    tags = retrying(client().get_registered_model, name).tags or {}
    value = tags.get(LOCK_TAG, "")
    token, _, expiry = value.partition(" ")
    try:
        return (token, float(expiry)) if token else None
    except ValueError:
        return None


@contextmanager
def _server_lock(name: str) -> Iterator[str]:
    """The lease in the registered model's tag (Fischer's algorithm; see the module docstring)."""
    mlflow_client = client()
    token = uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        holder = _lock_holder(name)
        if holder is None or holder[1] < time.time():
            value = f"{token} {time.time() + LOCK_LEASE_SECONDS:.3f}"
            retrying(mlflow_client.set_registered_model_tag, name, LOCK_TAG, value)
            time.sleep(LOCK_SETTLE_SECONDS)
            holder = _lock_holder(name)
            if holder is not None and holder[0] == token:
                break
        if time.monotonic() > deadline:
            raise RegistryError(f"could not take the promotion lock of '{name}'; try again")
        time.sleep(0.05 + 0.2 * (uuid.uuid4().int % 100) / 100)  # jitter: avoid lockstep
    try:
        yield token
    finally:
        holder = _lock_holder(name)
        if holder is not None and holder[0] == token:
            retrying(mlflow_client.delete_registered_model_tag, name, LOCK_TAG)


@contextmanager
def promotion_lock(name: str) -> Iterator[str | None]:
    """Hold the promotion lock of registered model ``name`` (see the module docstring).

    Yields:
        The server lease's token, or None on a local store (the file lock is exact there).

    Raises:
        RegistryError: The lock could not be taken within ``LOCK_TIMEOUT_SECONDS``.
    """
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(_lock_file(name)), timeout=LOCK_TIMEOUT_SECONDS):
            if _is_local_store():
                yield None
            else:
                with _server_lock(name) as token:
                    yield token
    except Timeout:
        raise RegistryError(f"could not take the promotion lock of '{name}'; try again") from None


def still_held(name: str, token: str | None) -> bool:
    """Whether the lease ``token`` is still ours and unexpired (always, on a local store)."""
    if token is None:
        return True
    holder = _lock_holder(name)
    return holder is not None and holder[0] == token and holder[1] > time.time()
