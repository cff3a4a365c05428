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
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write, name="recorder", daemon=True)
        self._thread.start()

    def record(self, **row: Any) -> None:
        """Queue one interaction (the keyword arguments of ``InteractionStore.log``)."""
        self._queue.put(row)

    def flush(self) -> None:
        """Wait until every queued interaction is written (or failed and was logged)."""
        self._queue.join()

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
                self.store.log(**row)
            except Exception as exc:  # answering matters more than logging; say so in the log
                log.warning("interaction %s not logged: %s", row and row.get("id"), exc)
            finally:
                self._queue.task_done()
