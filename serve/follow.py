"""Follow a registered model's alias: load the version it points at, switch when it moves.

The server answers every request with the ``Loaded`` version it picked up when the request
started; a switch replaces that reference once the new version is fully loaded, so a request
in flight finishes on the version it began with and no request waits for a load. Each loaded
version has its own lock: one model answers one batch at a time (a tokenizer is not safe to
share between threads mid-call, and on a CPU two generations at once only share its cores).
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptflow.errors import RegistryError
from registry.models import alias_version, download_package
from runtime.generate import model_inputs
from runtime.manifest import read_raw
from runtime.predictor import open_predictor
from serve.batch import Batcher

log = logging.getLogger("adaptflow.serve")
GENERATIVE = ("causal-lm", "seq2seq-lm")
#: A version that failed to load is tried again after this long (not at every poll).
RETRY_SECONDS = 60.0


@dataclass
class Loaded:
    """One registered version, loaded and ready to answer."""

    name: str
    version: str
    kind: str
    predictor: Any
    folder: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: Batcher | None = None  # generative kinds: greedy requests batch together
    counter: Any = None  # a private tokenizer for counting tokens while the model runs
    count_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.kind in GENERATIVE:
            self.batcher = Batcher(self.predictor, self.lock)
            # A fast tokenizer keeps padding and truncation state between calls: two threads
            # in one tokenizer corrupt each other's batch. Requests count tokens on a copy of
            # their own (under its own lock) while the model's copy encodes a batch.
            self.counter = copy.deepcopy(self.predictor.tokenizer)

    def tokens(self, text: str) -> int:
        """How many tokens ``text`` is (no special tokens)."""
        with self.count_lock:
            return len(self.counter(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, text: str, context: list[dict[str, str]] | None) -> int:
        """How many tokens the model reads for one turn (its rendered prompt)."""
        generator = self.predictor
        with self.count_lock:
            (prompt,) = model_inputs(
                self.counter, [text], generator.family, [context], generator.raw
            )
            special = generator.family != "decoder"
            return len(self.counter(prompt, add_special_tokens=special)["input_ids"])

    @property
    def label(self) -> str:
        """How responses name it: ``NAME/VERSION``."""
        return f"{self.name}/{self.version}"


def load_version(name: str, version: str, work_dir: Path) -> Loaded:
    """Download version ``version`` of ``name`` into ``work_dir`` and load its predictor."""
    import tempfile

    work_dir.mkdir(parents=True, exist_ok=True)
    # a fresh folder each time: a version can come back (a rollback) after it was replaced
    target = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=work_dir))
    try:
        folder = download_package(f"models:/{name}/{version}", target)
        kind = str(read_raw(folder)["kind"])
        predictor = open_predictor(folder)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # a failed load leaves nothing behind
        raise
    return Loaded(name, version, kind, predictor, target)


class AliasFollower:
    """The version an alias points at, re-read every ``poll_seconds`` in a daemon thread."""

    def __init__(self, name: str, alias: str, work_dir: Path, poll_seconds: float = 5.0) -> None:
        self.name, self.alias, self.work_dir = name, alias, work_dir
        self.poll_seconds = poll_seconds
        self._current: Loaded | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.switches: list[tuple[str, str]] = []  # (from, to) versions, in order
        self._failed: dict[str, float] = {}  # version -> when it last failed to load

    def start(self) -> Loaded:
        """Load the alias's version now and start following it.

        Raises:
            RegistryError: When the model or the alias does not exist.
        """
        version = alias_version(self.name, self.alias)
        if version is None:
            raise RegistryError(
                f"registered model '{self.name}' has no alias '{self.alias}' "
                "(run the pipeline, or `adaptflow promote NAME VERSION`)"
            )
        self._current = load_version(self.name, version, self.work_dir)
        self._thread = threading.Thread(target=self._follow, name="alias-follower", daemon=True)
        self._thread.start()
        return self._current

    @property
    def current(self) -> Loaded:
        """The version answering now."""
        if self._current is None:
            raise RuntimeError("AliasFollower.start() was not called")
        return self._current

    def refresh(self) -> bool:
        """Re-read the alias; load and switch to its version if it moved. True if switched."""
        version = alias_version(self.name, self.alias)
        current = self.current
        if version is None or version == current.version:
            return False
        log.info(
            "alias %s@%s moved %s -> %s: loading", self.name, self.alias, current.version, version
        )
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SECONDS:
            return False  # it failed to load a moment ago: keep serving, retry later
        try:
            loaded = load_version(self.name, version, self.work_dir)
        except Exception:
            self._failed[version] = time.monotonic()
            raise
        self._current = loaded  # one reference swap: requests already running keep theirs
        self.switches.append((current.version, version))
        log.info("now serving %s", loaded.label)
        if current.kind != "rag-retriever":  # loaded in memory; a RAG generator loads lazily
            shutil.rmtree(current.folder, ignore_errors=True)
        return True

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # a registry hiccup must not stop the server answering
                log.warning("could not follow %s@%s: %s", self.name, self.alias, exc)

    def stop(self) -> None:
        """Stop following (the loaded version keeps answering)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)
