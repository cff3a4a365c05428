"""Dynamic batching of greedy requests: what queued while the model was busy runs as one batch,
with the same answers each request gets alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from runtime.generate import Generator
from serve.batch import Batcher


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator.from_base("tiny-gpt", max_length=64, max_new_tokens=6)


def test_requests_that_queue_while_the_model_is_busy_run_as_one_batch(generator) -> None:
    prompts = [f"Name the lowercase form of: LATIN CAPITAL LETTER {c}" for c in "ABCDEFGHIJ"]
    alone = [generator.predict([p])[0] for p in prompts]
    lock = threading.Lock()
    batcher = Batcher(generator, lock, max_batch=8, idle_seconds=0.5)

    def until(condition) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert condition()

    lock.acquire()  # the model is busy
    try:
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(batcher.answer, prompts[0], None, 6)]
            until(lambda: batcher.taken == 1)  # the worker took it and waits for the model
            futures += [pool.submit(batcher.answer, p, None, 6) for p in prompts[1:]]
            until(lambda: batcher._queue.qsize() == 9)  # these nine wait in the queue
            lock.release()
            answers = [f.result(timeout=120) for f in futures]
    finally:
        if lock.locked() and batcher.taken:
            lock.release()
    assert answers == alone
    assert batcher.batches == [1, 8, 1]  # what queued ran together, at most max_batch at once


def test_different_token_limits_run_in_separate_calls_and_errors_reach_every_waiter(
    generator,
) -> None:
    lock = threading.Lock()
    batcher = Batcher(generator, lock, idle_seconds=0.5)
    texts = ["Name the lowercase form of: GREEK CAPITAL LETTER PI"] * 2
    lock.acquire()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.answer, texts[0], None, 4)
        deadline = time.monotonic() + 30
        while batcher.taken != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        short = pool.submit(batcher.answer, texts[0], None, 2)  # both queue behind the first:
        long = pool.submit(batcher.answer, texts[1], None, 12)  # one batch, two token limits
        while batcher._queue.qsize() != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        lock.release()
        got = short.result(timeout=60), long.result(timeout=60)
        first.result(timeout=60)
    assert got[0] == generator.predict(texts[:1], max_new_tokens=2)[0]
    assert got[1] == generator.predict(texts[:1], max_new_tokens=12)[0]
    assert batcher.batches == [1, 1, 1]  # the second batch ran as one call per limit
    with pytest.raises(ValueError, match="max_new_tokens"):  # generate() refuses it
        batcher.answer("a prompt", None, -1)
    time.sleep(1.0)
    assert not batcher._running  # the idle worker ended: a replaced version keeps no thread
