"""Dynamic batching of greedy generation: requests that queue while the model is busy run as one.

A generative model answers one batch at a time (``Loaded.lock``). Greedy requests that arrive
while it is busy wait in a queue; when it is free, up to ``max_batch`` of them with the same
``max_new_tokens`` and repetition penalty go through one ``Generator.predict`` call, greedy
whatever the package's default decoding (sampling requests never come here), as the gate
scored its eval set (in batches, left-padded). On a CPU a batch of 8 short prompts costs
little more than one, so under concurrent load throughput grows with the batch while a lone
request waits for nobody: there is no timer, only what already queued. (The idea of TGI's and
vLLM's schedulers, at the scale of one process; written here because neither runs on a
CPU-only machine, and the point is to answer through the package's own ``Generator``.)

The worker thread ends when its queue has been empty for ``idle_seconds``, so a version that
was replaced (the alias moved) leaves no thread behind holding its model.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from runtime.generate import Sampling


@dataclass
class _Item:
    text: str
    context: list[dict[str, str]] | None
    limit: int
    penalty: float
    future: Future[str]


class Batcher:
    """Greedy answers of one loaded generator, batched from whatever queued."""

    def __init__(
        self, generator: Any, lock: threading.Lock, max_batch: int = 8, idle_seconds: float = 10.0
    ) -> None:
        self.generator, self.lock = generator, lock
        self.max_batch, self.idle_seconds = max_batch, idle_seconds
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._guard = threading.Lock()
        self._running = False
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks
        self.taken = 0  # requests taken from the queue, waiting for the model

    def answer(
        self,
        text: str,
        context: list[dict[str, str]] | None,
        limit: int,
        repetition_penalty: float = 1.0,
    ) -> str:
        """The greedy answer to one turn (blocks until its batch has run)."""
        return self.answer_many([text], [context], limit, repetition_penalty)[0]

    def answer_many(
        self,
        texts: list[str],
        contexts: list[list[dict[str, str]] | None],
        limit: int,
        repetition_penalty: float = 1.0,
    ) -> list[str]:
        """Greedy answers to several turns (queued together, so they batch together)."""
        items = [
            _Item(text, context, limit, repetition_penalty, Future())
            for text, context in zip(texts, contexts, strict=True)
        ]
        with self._guard:
            for item in items:
                self._queue.put(item)
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name="batcher", daemon=True).start()
        return [item.future.result() for item in items]

    def _take(self) -> list[_Item] | None:
        try:
            first = self._queue.get(timeout=self.idle_seconds)
        except queue.Empty:
            with self._guard:
                if self._queue.empty():
                    self._running = False
                    return None
            return []
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        batch: list[_Item] | None = []
        try:
            while (batch := self._take()) is not None:
                self.taken = len(batch)
                self._run(batch)
                self.taken = 0
        except BaseException as exc:  # never leave a request waiting on a dead worker
            for item in batch or []:
                if not item.future.done():
                    item.future.set_exception(exc)
            with self._guard:
                self._running = False
                waiting = list(self._queue.queue)
                self._queue.queue.clear()
            for item in waiting:
                item.future.set_exception(exc)
            raise

    def _run(self, batch: list[_Item]) -> None:
        """Answer one batch: one greedy ``predict`` call per (max_new_tokens, penalty) in it."""
        for limit, penalty in dict.fromkeys((item.limit, item.penalty) for item in batch):
            group = [item for item in batch if (item.limit, item.penalty) == (limit, penalty)]
            try:
                with self.lock:
                    answers = self.generator.predict(
                        [item.text for item in group],
                        [item.context for item in group],
                        max_new_tokens=limit,
                        sampling=Sampling(repetition_penalty=penalty),
                    )
            except BaseException as exc:  # each waiting request gets the error
                for item in group:
                    item.future.set_exception(exc)
                continue
            self.batches.append(len(group))
            for item, text in zip(group, answers, strict=True):
                item.future.set_result(text)
