"""The micro-batcher: batches form from what arrives, wait only for what is on its way, share errors."""

import threading
import time

import pytest

from deeprank.serve.batching import Batcher


def test_batcher_gathers_items_that_arrive_while_a_batch_runs():
    release = threading.Event()
    sizes = []

    def fn(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(10)
        return [x * 2 for x in items]

    batcher = Batcher(fn, max_batch=4, max_wait_s=0.0)
    first = batcher.submit(0)
    while not sizes:
        time.sleep(0.001)
    rest = [batcher.submit(i) for i in range(1, 7)]
    release.set()
    assert first.result(10) == 0 and [f.result(10) for f in rest] == [2, 4, 6, 8, 10, 12]
    assert sizes == [1, 4, 2]  # the six waiting items, in batches of at most max_batch
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def test_batcher_waits_only_for_items_that_are_on_their_way():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        return items

    coming = [0]
    batcher = Batcher(fn, max_batch=8, max_wait_s=5.0, expected=lambda: coming[0])
    start = time.monotonic()
    assert batcher.submit(1).result(10) == 1
    assert time.monotonic() - start < 2.5  # alone: no 5 s wait
    coming[0] = 3  # three requests in flight: the first waits for the other two
    first = batcher.submit(1)
    time.sleep(0.05)
    rest = [batcher.submit(2), batcher.submit(3)]
    assert [f.result(10) for f in [first, *rest]] == [1, 2, 3]
    assert sizes == [1, 3]
    batcher.close()


def test_batcher_hands_an_error_to_every_request_of_the_batch():
    def fn(items):
        if 3 in items:
            raise ValueError("bad item")
        return items

    batcher = Batcher(fn, max_batch=8, max_wait_s=0.05)
    futures = [batcher.submit(i) for i in (1, 3, 4)]
    for f in futures:
        with pytest.raises(ValueError, match="bad item"):
            f.result(10)
    assert batcher.submit(5).result(10) == 5  # the worker survives
    batcher.close()
    assert not any(t.name == "deeprank-batcher" for t in threading.enumerate())


# ------------------------------------------------------------------ the page and the command
