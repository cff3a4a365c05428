"""Writing the interaction log off the request path.

Redacting and inserting a row costs a few milliseconds (the PII patterns, a SQLite commit, a
round trip to PostgreSQL); a request should not wait for it. Rows go to a queue that one
writer thread drains in order. ``flush`` waits until every queued row is written: the feedback
route calls it first, so feedback on an answer just given always finds its interaction.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from runtime.interactions import InteractionStore

log = logging.getLogger("adaptflow.serve")


class Recorder:
    """A queue of interactions in front of an ``InteractionStore``, written by one thread."""

    def __init__(self, store: InteractionStore) -> None:
        self.store = store
        self._queue: queue.Queue[dict[str, Any] | threading.Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write, name="recorder", daemon=True)
        self._thread.start()

    def record(self, **row: Any) -> None:
        """Queue one interaction (the keyword arguments of ``InteractionStore.log``)."""
        self._queue.put(row)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued before this call is written; False after ``timeout``.

        A marker goes through the queue, so rows queued later (steady load) are not waited for.
        """
        written = threading.Event()
        self._queue.put(written)
        return written.wait(timeout)

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _write(self) -> None:
        while True:
            row = self._queue.get()
            try:
                if row is None:
                    return
                if isinstance(row, threading.Event):
                    row.set()
                    continue
                self.store.log(**row)
            except Exception as exc:  # answering matters more than logging; say so in the log
                log.warning("interaction not logged: %s", exc)
            finally:
                self._queue.task_done()
