"""Dynamic batching for the protection service: requests that can share a forward pass run together.

Requests are queued with a key (image shape, mode, budget) and a weight (pixels). The worker takes the oldest
request, waits until `max_wait` has passed since it arrived or `max_batch` requests with its key are queued, and
runs those together (at most `max_weight` in all, the oldest request at least) in one worker thread (one batch at a
time: the generator already uses every core or the GPU). Under load the queue fills while a batch runs, so the next
batch starts at once and is full. The queue is bounded: `submit` raises `QueueFull` (the service answers 429)
instead of letting latency grow without limit. A failed batch's exception reaches its requests without its
traceback, whose frames would otherwise keep the batch's arrays alive.
"""
from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


class QueueFull(RuntimeError):
    """The queue holds `max_queue` requests; `retry_after` is a whole-second estimate of when it has room."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the protection queue is full ({depth} requests waiting); retry in {retry_after} s")
        self.depth, self.retry_after = depth, retry_after


@dataclass
class _Item:
    key: Hashable
    payload: Any
    weight: float
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Queue requests and run `run_batch(key, payloads) -> results` on batches of up to `max_batch` equal keys
    weighing at most `max_weight` together; a result that is an exception fails its request alone.

    `observe_batch(size, seconds)` is called after every batch (metrics); `depth` is the number of queued
    requests not yet running. Start it inside the event loop with `start()`, stop it with `await stop()`.
    """

    def __init__(self, run_batch: Callable[[Hashable, Sequence[Any]], Sequence[Any]], *, max_batch: int = 8,
                 max_wait_ms: float = 10.0, max_queue: int = 64, max_weight: float = math.inf,
                 observe_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0 and max_queue >= 1 "
                             f"(got {max_batch}, {max_wait_ms}, {max_queue})")
        self.run_batch, self.observe_batch = run_batch, observe_batch
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.max_weight = max_weight
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_seconds = 0.0  # the last batch's duration, for Retry-After

    @property
    def depth(self) -> int:
        return sum(not item.future.done() for item in self._pending)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gapdiff-batch")
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker and fail what is still queued (servers call this after in-flight requests finished)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def submit(self, key: Hashable, payload: Any, weight: float = 1.0) -> asyncio.Future:
        """Queue one request; its future resolves to (result, size of the batch it ran in), or raises its own or
        the batch's exception."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not called")
        self._drop_cancelled()
        if len(self._pending) >= self.max_queue:
            raise QueueFull(len(self._pending), self.retry_after())
        item = _Item(key, payload, weight, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._wakeup.set()
        return item.future

    def retry_after(self) -> int:
        """Seconds until the queue has drained, estimated from the last batch's duration (at least 1)."""
        batches = math.ceil(len(self._pending) / self.max_batch)
        return max(1, math.ceil(batches * self._batch_seconds))

    def _drop_cancelled(self) -> None:
        if any(item.future.done() for item in self._pending):  # timed out or the client went away
            self._pending = deque(item for item in self._pending if not item.future.done())

    def _take(self) -> list[_Item]:
        """Up to max_batch queued items with the oldest item's key weighing at most max_weight (the oldest item at
        least), in arrival order."""
        key = self._pending[0].key
        batch, rest, weight = [], deque(), 0.0
        for item in self._pending:
            fits = not batch or (len(batch) < self.max_batch and weight + item.weight <= self.max_weight)
            if item.key == key and fits:
                batch.append(item)
                weight += item.weight
            else:
                rest.append(item)
        self._pending = rest
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = self._pending[0]
            wait = oldest.arrived + self.max_wait - time.monotonic()
            mates = [item for item in self._pending if item.key == oldest.key]
            ready = len(mates) >= self.max_batch or sum(item.weight for item in mates) >= self.max_weight
            if wait > 0 and not ready:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self._take()
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, oldest.key,
                                                     [item.payload for item in batch])
            except Exception as exc:  # the whole batch failed: every request in it gets the error
                traceback.clear_frames(exc.__traceback__)
                results = [exc.with_traceback(None)] * len(batch)
            self._batch_seconds = time.monotonic() - started
            if self.observe_batch is not None:
                self.observe_batch(len(batch), self._batch_seconds)
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result((result, len(batch)))
            del batch, results, oldest, mates  # nothing of this batch is held while the next one waits
