"""The ledger's writer: one thread per process commits every hot-path write, batched.

A durable commit costs about 1.3 ms here (SQLite FULL, one fsync); one per request would cap
issuance near 700/s and leave the request threads waiting on locks. Callers hand a write to the
writer's queue and get a `Future` back (sync callers wait on it; the async route awaits it on the
event loop, without a thread-pool hop). The writer takes everything queued, up to `MAX_BATCH`,
applies it in one transaction with one fsync, and resolves each future with that write's own
outcome. If a batch fails, each write is retried alone, so one bad write never fails its neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from broker.blocking import may_block

log = logging.getLogger(__name__)
MAX_BATCH = 256
Apply = Callable[[Sequence[Any]], list[Any]]  # writes → one outcome per write, in one transaction


class LedgerWriter:
    """Queue → batches → `apply`; one daemon thread, started on first use."""

    def __init__(self, apply: Apply, name: str = "broker-ledger-writer") -> None:
        self._apply = apply
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Any, Future] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.listeners: list[Callable[[float, int], None]] = []  # (seconds, writes) per committed batch
        self.after_batch: list[Callable[[], None]] = []  # once every future of a batch is resolved

    def submit(self, write: Any, on_done: Callable[[Future], None] | None = None) -> Future:
        """Queue one write; the future resolves to its outcome once it is durable (or to its error).
        `on_done` is attached before the write is queued, so it always runs on the writer thread."""
        future: Future = Future()
        if on_done is not None:
            future.add_done_callback(on_done)
        with self._start_lock:  # queued before close()'s stop marker, or to a thread started after it
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put((write, future))
        return future

    def run(self, write: Any) -> Any:
        """Submit and wait: for callers on ordinary threads (workers, CLI, sync routes)."""
        may_block()
        return self.submit(write).result()

    def close(self) -> None:
        with self._start_lock:  # the stop marker goes after every write queued to this thread
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._commit(batch)
            for after in self.after_batch:
                after()

    def _commit(self, batch: list[tuple[Any, Future]]) -> None:
        started = time.perf_counter()
        try:
            outcomes = self._apply([write for write, _ in batch])
        except BaseException as exc:  # noqa: BLE001 (handed to the callers, never swallowed)
            log.warning("ledger write of %d failed: %s", len(batch), getattr(exc, "detail", type(exc).__name__))
            if len(batch) == 1:
                _resolve(batch[0][1], error=exc)
                return
            for write, future in batch:  # find the bad write: each alone, in its own transaction
                try:
                    _resolve(future, outcome=self._apply([write])[0])
                except BaseException as alone:  # noqa: BLE001
                    _resolve(future, error=alone)
            return
        for listener in self.listeners:
            listener(time.perf_counter() - started, len(batch))
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _resolve(future, outcome=outcome)


def _resolve(future: Future, *, outcome: Any = None, error: BaseException | None = None) -> None:
    if future.set_running_or_notify_cancel():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)
