"""SQLite writers of one file take turns through a kernel lock (broker/ledger/turns.py), across processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from broker.ledger import make_engine, migrate
from broker.ledger.models import Event
from broker.ledger.store import LedgerStore
from broker.ledger.turns import WriteTurns, turns_for
from tests.support.wait import wait_until

HOLDER = """
import sys, time
from pathlib import Path
from broker.ledger.turns import WriteTurns
with WriteTurns(sys.argv[1]).turn():
    Path(sys.argv[2]).write_text("holding")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.01)
"""


def test_a_writer_waits_for_another_process_turn_and_gets_it_when_released(tmp_path: Path) -> None:
    database, holding, release = str(tmp_path / "broker.db"), tmp_path / "holding", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, database, str(holding), str(release)])
    try:
        wait_until(holding.exists, timeout=30)
        got = threading.Event()

        def take() -> None:
            with WriteTurns(database).turn():
                got.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not got.wait(0.5), "took the turn while another process held it"
        release.write_text("go")
        assert got.wait(30), "never got the turn after the holder released it"
        taker.join(5)
    finally:
        release.write_text("go")
        holder.wait(30)


def test_a_transaction_may_take_its_own_turn_again(tmp_path: Path) -> None:
    turns = WriteTurns(str(tmp_path / "broker.db"))
    with turns.turn(), turns.turn():
        pass
    done = threading.Event()
    threading.Thread(target=lambda: (turns.turn().__enter__(), done.set()), daemon=True).start()
    assert done.wait(5), "the turn was not released after the nested use"


def test_the_ledger_takes_turns_on_a_sqlite_file_only(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    migrate.upgrade(engine)
    ledger = LedgerStore(engine)
    try:
        ledger.record(Event(kind="probe"))
        assert (tmp_path / "broker.db.writer.lock").exists()
    finally:
        ledger.close()
    assert turns_for("postgresql", "broker") is None and turns_for("sqlite", ":memory:") is None
