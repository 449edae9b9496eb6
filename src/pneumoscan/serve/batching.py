"""Dynamic micro-batching: single-film requests that arrive together run through the model once.

A `Workers` pool owns a few threads. Work reaches them two ways:

- `submit_item(key, item, run_batch)`: one item (a decoded film) that may share a model run with
  others. A free thread takes the oldest item and waits at most `max_wait_s` from that item's
  arrival for more with the same key (same model, same options), up to `max_batch` in all; then it
  calls `run_batch(items)` once and hands each request its own result, in order. This is the
  scheme of Triton's dynamic batcher (preferred size, maximum queue delay): under load the batch
  fills while the model is busy and nobody waits; a lone request waits `max_wait_s` at most.
- `submit_job(work)`: anything run alone (decoding an upload, a heatmap, a batch request).

Each returns a `concurrent.futures.Future`, which the server awaits on its event loop and cancels
when the request times out: an item not yet taken into a batch is then dropped. A batch whose run
raises fails its own requests only, each with a `BatchFailed` whose cause is the error.

The server has two pools: the model's (`parallel` threads shared by every loaded model, so no more
than `parallel` model runs are ever under way) and the decoders'. Threads start on demand and end
after `idle_s` without work, so an app needs no shutdown. Stdlib only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

IDLE_S = 30.0


class BatchFailed(RuntimeError):
    """The model run of a batch raised; every request in that batch gets its own copy, with the
    error as `__cause__` (its message is never shown: it may hold an upload's values)."""

    def __init__(self, size: int, error: BaseException) -> None:
        super().__init__(
            f"the model failed on a batch of {size} concurrent request(s) ({type(error).__name__})"
        )
        self.size = size
        self.__cause__ = error


@dataclass
class _Entry:
    future: Future
    enqueued: float
    work: Callable[..., Any]  # a job: work(); an item: work(items) -> results
    key: Hashable | None = None  # None: a job, run alone
    item: Any = None


@dataclass
class Workers:
    """Threads that run jobs and batches of items; see the module docstring."""

    threads: int
    max_batch: int = 1
    max_wait_s: float = 0.0
    # Called after each batch with (key, size, seconds its oldest item waited); for metrics.
    on_batch: Callable[[Hashable, int, float], None] | None = None
    name: str = "pneumoscan-worker"
    idle_s: float = IDLE_S
    busy: int = 0  # jobs and batches running now
    _queue: deque[_Entry] = field(default_factory=deque, repr=False)
    _condition: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _alive: int = 0

    def __post_init__(self) -> None:
        if self.threads < 1 or self.max_batch < 1 or self.max_wait_s < 0:
            raise ValueError("workers need threads >= 1, max_batch >= 1 and max_wait_s >= 0")

    @property
    def queued(self) -> int:
        """Jobs and items waiting for a thread (those being gathered into a batch excepted)."""
        with self._condition:
            return len(self._queue)

    def submit_job(self, work: Callable[[], Any]) -> Future:
        return self._submit(_Entry(Future(), time.monotonic(), work))

    def submit_item(
        self, key: Hashable, item: Any, run_batch: Callable[[list], Sequence[Any]]
    ) -> Future:
        """`run_batch(items)` must return one result per item, in order; items with equal keys
        must be fine with the same `run_batch` (the first item's is called)."""
        return self._submit(_Entry(Future(), time.monotonic(), run_batch, key, item))

    def _submit(self, entry: _Entry) -> Future:
        with self._condition:
            self._queue.append(entry)
            if self._alive < self.threads:
                self._alive += 1
                threading.Thread(target=self._serve, name=self.name, daemon=True).start()
            self._condition.notify_all()
        return entry.future

    def _serve(self) -> None:
        while True:
            with self._condition:
                idle_until = time.monotonic() + self.idle_s
                while not self._queue and time.monotonic() < idle_until:
                    self._condition.wait(idle_until - time.monotonic())
                if not self._queue:
                    self._alive -= 1
                    return
                first = self._queue.popleft()
                batch = [first] if first.key is None else self._gather(first)
                batch = [entry for entry in batch if entry.future.set_running_or_notify_cancel()]
                if not batch:
                    continue
                self.busy += 1
            try:
                self._run(batch)
            finally:
                first = batch = None  # an idle thread holds no upload or film
                with self._condition:
                    self.busy -= 1

    def _gather(self, first: _Entry) -> list[_Entry]:
        """With the lock held: `first` and the queued items of its key, waiting for more until the
        batch is full or `max_wait_s` has passed since `first` arrived."""
        batch = [first]
        deadline = first.enqueued + self.max_wait_s
        while True:
            kept: deque[_Entry] = deque()
            for entry in self._queue:
                if entry.key == first.key and len(batch) < self.max_batch:
                    batch.append(entry)
                else:
                    kept.append(entry)
            self._queue = kept
            remaining = deadline - time.monotonic()
            if len(batch) >= self.max_batch or remaining <= 0:
                return batch
            self._condition.wait(remaining)

    def _run(self, batch: list[_Entry]) -> None:
        first = batch[0]
        if first.key is None:
            try:
                first.future.set_result(first.work())
            except BaseException as error:  # the request that waits for it raises it
                first.future.set_exception(error)
            return
        waited = time.monotonic() - first.enqueued
        try:
            results = list(first.work([entry.item for entry in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as error:
            for entry in batch:
                entry.future.set_exception(BatchFailed(len(batch), error))
            return
        for entry, result in zip(batch, results):
            entry.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(first.key, len(batch), waited)
