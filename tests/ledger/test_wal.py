"""The WAL under continuous commits, on a real SQLite ledger: the commits checkpoint it, so the file
restarts instead of growing without end. (A checkpoint thread beside the commits, with
`wal_autocheckpoint=0`, never caught up and let it grow to 854 MB over three 8 s runs of load: bench/README.md.)"""

from __future__ import annotations

import os

from broker.ledger import Event, LedgerStore, make_engine, migrate

FRAME = 4096 + 24  # a page and its frame header
SQLITE_CHECKPOINT = 1000  # pages: SQLite's own wal_autocheckpoint, which the ledger keeps


def _fill(ledger: LedgerStore, commits: int, start: int = 0) -> None:
    for n in range(start, start + commits):  # one commit each, tens of pages each
        ledger.record(*(Event(kind="denied", subject=f"s{n}-{i}", detail={"pad": "x" * 900}) for i in range(8)))


def test_the_commits_keep_the_wal_bounded(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}", sqlite_synchronous="NORMAL")
    migrate.upgrade(engine)
    ledger, wal = LedgerStore(engine), tmp_path / "l.db-wal"
    largest = 0
    for round_ in range(10):  # ~10 times the checkpoint size in all
        _fill(ledger, 100, start=100 * round_)
        largest = max(largest, os.path.getsize(wal))
    assert largest <= 2 * SQLITE_CHECKPOINT * FRAME  # checkpointed and restarted, never far past
    assert os.path.getsize(tmp_path / "l.db") > 2 * SQLITE_CHECKPOINT * FRAME  # the pages reached the file
    assert ledger.verify().ok
    engine.dispose()
