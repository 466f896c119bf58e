"""Group commit: concurrent appends share one transaction and one fsync, each still all-or-nothing.

A durable ledger pays one fsync per commit (about 3 ms here); serialising one per request would cap
issuance near 330/s. The first waiting thread leads: it takes every queued write, runs each inside its
own savepoint, commits once, and wakes the others (the idea of PostgreSQL's commit_delay).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy.orm import Session

Write = Callable[[Session], Any]
MAX_BATCH = 256


class _Item:
    """One caller's write and, once run, its result or error."""

    __slots__ = ("write", "done", "result", "error")

    def __init__(self, write: Write) -> None:
        self.write = write
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Batches writes from many threads into one transaction per batch."""

    def __init__(self, transaction: Callable[[], AbstractContextManager[Session]]) -> None:
        self._transaction = transaction
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._leading = False

    def run(self, write: Write) -> Any:
        """Run `write(session)` in a shared transaction; returns its result or raises its error."""
        item = _Item(write)
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
        return item.result

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
            with self._transaction() as session:
                if len(batch) == 1:  # alone in the batch: its failure is the transaction's failure
                    batch[0].result = batch[0].write(session)
                    return
                for queued in batch:
                    _run_in_savepoint(session, queued)
        except BaseException as exc:  # the commit itself failed: nobody's write is durable
            for queued in batch:
                queued.error, queued.result = exc, None


def _run_in_savepoint(session: Session, item: _Item) -> None:
    """A failing write rolls back alone; the others in the batch still commit."""
    try:
        with session.begin_nested():
            item.result = item.write(session)
    except Exception as exc:  # one write's failure (SQL or a bug) goes to its own caller only
        item.error = exc
