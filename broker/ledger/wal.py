"""SQLite's WAL checkpoints on a thread of their own, off the ledger writer's commits.

By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages: that commit
copies the pages into the database file and fsyncs it before it returns. Under load here that was
every ~100th batch, 4 ms instead of 1 ms, and every grant of the batch (and every one queued behind
it) waited. The ledger writer process turns that off (`wal_autocheckpoint=0` on its connections,
see `make_engine`) and runs `WalCheckpoints`: a PASSIVE checkpoint every `interval` on its own
connection. A PASSIVE checkpoint never blocks the writer (WAL lets both run at once; the sqlite3
driver releases the GIL while it copies) and never waits for readers: it copies what they no longer
need and leaves the rest for the next pass. Durability is the commits' own (`synchronous=FULL` each);
checkpoints only move committed pages from the log into the database file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)
INTERVAL = 0.1  # seconds: ~300 pages of the WAL under full load here, a few ms to copy


class WalCheckpoints:
    """Every `interval` seconds, `PRAGMA wal_checkpoint(PASSIVE)` on one connection held by its thread."""

    def __init__(self, engine: Engine, interval: float = INTERVAL) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0  # checkpoints run

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="broker-wal-checkpoints", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        connection = None  # its own, held: a checkpoint runs outside any transaction
        try:
            while not self._stop.wait(self._interval):
                try:
                    connection = connection or self._engine.raw_connection()
                    connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.passes += 1
                except (sqlite3.Error, SQLAlchemyError) as exc:  # the next pass tries again; no commit waits on it
                    log.warning("WAL checkpoint failed: %s", type(exc).__name__)
        finally:
            if connection is not None:
                connection.close()
