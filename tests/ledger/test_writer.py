"""The ledger writer on a real SQLite ledger: concurrent appends share transactions, a bad write fails alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.errors import LedgerUnavailable
from broker.ledger import Event, Grant, LedgerStore, make_engine, migrate


def _grant(grant_id: str) -> Grant:
    now = time.time()
    return Grant(id=grant_id, subject="s", attestor="a", task="t", boundary="b", backend="jwt", scopes="read",
                 handle=grant_id, fingerprint="sha256:x", issued_at=now, expires_at=now + 60)  # fmt: skip


@pytest.fixture
def ledger(tmp_path) -> LedgerStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}", sqlite_synchronous="FULL")
    migrate.upgrade(engine)
    return LedgerStore(engine)


def test_concurrent_issues_batch_and_keep_one_verifiable_chain(ledger):
    batches = []
    apply = ledger._writer._apply  # count transactions to prove that writes were grouped
    ledger._writer._apply = lambda writes: (batches.append(len(writes)), apply(writes))[1]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: ledger.record_issued(_grant(f"g{n}"), Event(kind="issued", grant_id=f"g{n}")), range(400)))
    assert len(ledger.grants()) == 400 and sum(batches) == 400
    assert len(batches) < 400, "concurrent writes should share transactions"
    result = ledger.verify()
    assert result.ok and result.checked == 400


def test_a_failing_write_fails_alone_in_its_batch(ledger):
    ledger.record_issued(_grant("dup"), Event(kind="issued", grant_id="dup"))
    barrier, errors = threading.Barrier(16), []

    def write(n: int) -> None:
        barrier.wait()
        grant_id = "dup" if n == 0 else f"ok{n}"
        try:
            ledger.record_issued(_grant(grant_id), Event(kind="issued", grant_id=grant_id))
        except LedgerUnavailable:
            errors.append(n)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(16)))
    assert errors == [0]
    assert len(ledger.grants()) == 16 and ledger.verify().ok
