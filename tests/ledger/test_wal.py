"""WAL checkpoints off the commit path (broker/ledger/wal.py), on a real SQLite ledger: with
`own_checkpoints` the commits leave every page in the WAL; `WalCheckpoints` moves them into the
database file on its own thread while the commits go on."""

from __future__ import annotations

import os
import threading

from broker.ledger import Event, LedgerStore, make_engine, migrate
from broker.ledger.wal import WalCheckpoints
from tests.support.wait import wait_until


def _ledger(path, own: bool) -> LedgerStore:  # noqa: ANN001
    engine = make_engine(f"sqlite:///{path}", sqlite_synchronous="FULL", own_checkpoints=own)
    migrate.upgrade(engine)
    return LedgerStore(engine)


def _fill(ledger: LedgerStore, commits: int) -> None:
    for n in range(commits):  # one commit each: the WAL past SQLite's 1,000-page autocheckpoint
        ledger.record(*(Event(kind="denied", subject=f"s{n}-{i}", detail={"pad": "x" * 600}) for i in range(8)))


def test_commits_leave_the_checkpoint_to_the_thread_which_runs_beside_them(tmp_path):
    auto, own = _ledger(tmp_path / "auto.db", own=False), _ledger(tmp_path / "own.db", own=True)
    _fill(auto, 400)
    start_size = os.path.getsize(tmp_path / "own.db")
    _fill(own, 400)
    assert os.path.getsize(tmp_path / "auto.db") > 4 * start_size  # SQLite checkpointed inside some commit
    assert os.path.getsize(tmp_path / "own.db") == start_size  # every page still in the WAL
    checkpoints = WalCheckpoints(own.engine, interval=0.01)
    checkpoints.start()
    writing = threading.Thread(target=_fill, args=(own, 100))
    writing.start()  # the commits go on meanwhile
    try:
        wait_until(lambda: os.path.getsize(tmp_path / "own.db") > 4 * start_size, 30, "pages moved into the file")
        writing.join()
    finally:
        checkpoints.close()
    assert checkpoints.passes > 0
    result = own.verify()
    assert result.ok and result.checked == 500 * 8
