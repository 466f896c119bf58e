"""The background passes every worker runs once a second find most of the time that nothing is due; they
find that on a read, so they never hold SQLite's write lock, which the ledger writer's next commit (and
every grant in it) would wait for. The checkpoint signer's pass: tests/transparency/test_checkpoints.py."""

from __future__ import annotations

import threading
import time

import pytest

from broker.ledger import Event, Grant, LedgerStore, make_engine, migrate


@pytest.fixture
def ledger(tmp_path) -> LedgerStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}", sqlite_synchronous="FULL")
    migrate.upgrade(engine)
    return LedgerStore(engine)


def _issue(ledger: LedgerStore, grant_id: str) -> None:
    now = time.time()
    grant = Grant(id=grant_id, subject="s", attestor="a", task="t", boundary="b", backend="jwt", scopes="read",
                  handle=grant_id, fingerprint="sha256:x", issued_at=now, expires_at=now + 60)  # fmt: skip
    ledger.record_issued(grant, Event(kind="issued", grant_id=grant_id))


def test_the_outbox_pass_with_nothing_due_waits_for_no_writer(ledger):
    _issue(ledger, "g-active")
    with ledger.engine.begin():  # BEGIN IMMEDIATE: another writer's commit in progress (a waiter gives up at 30 s)
        started = time.monotonic()
        assert ledger.claim_due_revocations(time.time(), 500, lease=30.0) == []
        assert time.monotonic() - started < 5


def test_a_due_revocation_is_still_claimed_once_under_the_write_lock(ledger):
    _issue(ledger, "g-due")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE grants SET status = 'revoke_pending', next_attempt_at = 0 WHERE id = 'g-due'")
    claims: list[list[str]] = []
    threads = [threading.Thread(target=lambda: claims.append(
        [g.id for g in ledger.claim_due_revocations(time.time(), 500, lease=30.0)])) for _ in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [[], [], [], ["g-due"]]  # leased to one pass; the others find it not due
