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


def test_close_while_a_submit_is_starting_the_thread_joins_it_started(monkeypatch):
    """close() on shutdown against a first submit on another thread: it waits for the start, then joins."""
    import types

    from broker.ledger import writer as writer_module
    from broker.ledger.writer import LedgerWriter

    writer = LedgerWriter(lambda writes: [None for _ in writes])
    errors: list[BaseException] = []
    closed = threading.Event()

    def close_now() -> None:
        try:
            writer.close()
        except BaseException as exc:  # noqa: BLE001 (the assertion below reports it)
            errors.append(exc)
        finally:
            closed.set()

    started: list[threading.Thread] = []

    class CloseDuringStart(threading.Thread):
        def start(self) -> None:
            threading.Thread(target=close_now, daemon=True).start()
            closed.wait(0.5)  # the old close() joined here, before the thread had started
            super().start()
            started.append(self)

    fake = types.SimpleNamespace(Thread=CloseDuringStart, Lock=threading.Lock)
    monkeypatch.setattr(writer_module, "threading", fake)
    writer.submit("w")
    assert closed.wait(10) and errors == []
    assert [thread.is_alive() for thread in started] == [False]  # close() joined the thread it stopped


def test_a_write_submitted_while_close_runs_is_still_committed():
    """A submit that found the writer running against close() on another thread: the write is never queued
    behind the stop marker, where no thread would take it and its caller would wait forever."""
    from broker.ledger.writer import LedgerWriter

    committed: list[str] = []
    writer = LedgerWriter(lambda writes: [committed.append(w) for w in writes])
    writer.run("first")  # the thread is running
    queue, closing = writer._queue, threading.Event()

    class CloseBeforePut:
        def put(self, item):  # noqa: ANN001, ANN202
            if item is not None and not closing.is_set():
                closing.set()
                closer = threading.Thread(target=writer.close)
                closer.start()
                closer.join(0.5)  # the old submit let close() put its marker and stop the thread here
            queue.put(item)

        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(queue, name)

    writer._queue = CloseBeforePut()
    late = writer.submit("late")
    assert late.result(timeout=10) is None and committed == ["first", "late"]
    writer.close()
