"""Writers of one SQLite file take turns through a kernel file lock, not through SQLite's busy handler.

SQLite's busy handler polls: a writer that finds the database locked sleeps 1, 2, 5, 10, 15, 20,
25… ms between tries. With two worker processes issuing at once, each one's writer thread sleeps
far longer than the ~1-3 ms the other holds the lock for a batch: the p99 reaches hundreds of ms and
the second worker adds nothing. An exclusive `flock` on a file beside the database queues the waiter
in the kernel and wakes it the moment the holder commits. It is taken before `BEGIN IMMEDIATE` by
every write transaction of the ledger, so SQLite's own lock is then free when asked for.

`flock` belongs to an open file, not to a thread, so threads of one process queue on a lock in front
of it (re-entrant: a transaction's own code may take a turn again without deadlocking itself).
Server databases (PostgreSQL) need none of this: their row locks queue waiters already.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import ContextManager

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone, as before
    fcntl = None  # type: ignore[assignment]


class WriteTurns:
    """One writer at a time on one SQLite file, across the threads and processes that share it."""

    def __init__(self, database_path: str) -> None:
        self._path = database_path + ".writer.lock"
        self._fd: int | None = None
        self._lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd


def turns_for(dialect: str, database: str | None) -> WriteTurns | None:
    """Turns for a SQLite file; None for server databases, in-memory SQLite and non-POSIX systems."""
    if dialect != "sqlite" or not database or database == ":memory:" or database.startswith("file:") or fcntl is None:
        return None
    return WriteTurns(database)


def turn(turns: WriteTurns | None) -> ContextManager[None]:
    return turns.turn() if turns is not None else nullcontext()
