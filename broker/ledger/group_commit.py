"""Group commit: concurrent appends share one transaction, one set of statements and one fsync.

A durable ledger pays one fsync per commit (about 3 ms here); serialising one per request would cap
issuance near 330/s, and a handful of statements per request costs more CPU than the request's own
work. The first waiting thread leads: it takes every queued write, inserts all their grant rows in one
statement and chains all their events in one append, commits once, and wakes the others. If that
batch fails, each write is retried alone, so one bad write never fails its neighbours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MAX_BATCH = 256
Apply = Callable[[list[dict[str, Any]], list[Any]], None]  # (grant rows, events) in one transaction


class _Item:
    """One caller's rows and, once committed, its error if any."""

    __slots__ = ("grants", "events", "done", "error")

    def __init__(self, grants: list[dict[str, Any]], events: list[Any]) -> None:
        self.grants = grants
        self.events = events
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Batches writes from many threads into one transaction per batch."""

    def __init__(self, apply: Apply) -> None:
        self._apply = apply
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._leading = False

    def run(self, grants: list[dict[str, Any]], events: list[Any]) -> None:
        """Commit these grant rows and events durably, with others' if they arrive together."""
        item = _Item(grants, events)
        with self._cond:
            self._queue.append(item)
        while True:
            with self._cond:
                while not item.done and self._leading:
                    self._cond.wait()
                if item.done:
                    break
                self._leading = True
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self._lead(batch)
        if item.error is not None:
            raise item.error

    def _lead(self, batch: list[_Item]) -> None:
        try:
            self._commit(batch)
        finally:
            with self._cond:
                for queued in batch:
                    queued.done = True
                self._leading = False
                self._cond.notify_all()

    def _commit(self, batch: list[_Item]) -> None:
        try:
            self._apply([g for i in batch for g in i.grants], [e for i in batch for e in i.events])
            return
        except BaseException as exc:  # noqa: BLE001 (handed to the callers below, never swallowed)
            if len(batch) == 1:
                batch[0].error = exc
                return
        for queued in batch:  # find the bad write: each alone, in its own transaction
            try:
                self._apply(queued.grants, queued.events)
            except BaseException as exc:  # noqa: BLE001
                queued.error = exc
