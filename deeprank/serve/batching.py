"""A micro-batcher: concurrent requests submit single items; one worker thread runs them in batches.

The model and the index are used from that one thread only, so neither needs to be thread-safe, and
concurrent uploads share one forward pass (and one ``topk`` call) instead of queueing for the model.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class Batcher(Generic[T, R]):
    """Run ``fn(items) -> results`` (same length, same order) over batches of submitted items.

    A batch starts with the first waiting item and takes whatever else is queued, up to ``max_batch``
    items. While a batch runs, new items queue up and form the next one, so under load batches grow by
    themselves. ``expected()`` (optional) says how many items are on their way (e.g. requests still
    decoding their upload): while it exceeds the batch size, the batch waits up to ``max_wait_s`` for
    them, so a lone request never waits and a burst still shares one batch.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        expected: Callable[[], int] | None = None,
        name: str = "deeprank-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be non-negative, got {max_wait_s}")
        self._fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._name = name
        self._expected = expected
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # counters for /health and the benchmark
        self.items = 0

    def submit(self, item: T) -> Future[R]:
        """Queue one item; the future holds its result (or the batch's exception)."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put((item, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued work and stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if self._expected is not None and self._expected() <= len(batch):
                    remaining = 0.0  # nobody else is coming: take only what is already queued
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[tuple[T, Future[R]]]) -> None:
        # A future cancelled meanwhile (client went away) is dropped; the rest still run.
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for _, fut in live:
                fut.set_exception(exc)
            return
        self.batches += 1
        self.items += len(live)
        for (_, fut), result in zip(live, results, strict=True):
            fut.set_result(result)
