"""The ledger writer process's protocol on a real SQLite ledger: two workers' stores hand their writes to
one writer (served here on a thread; `broker serve` runs it as a process, tests/cli/test_serving.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker.errors import LedgerUnavailable
from broker.ledger import Event, Freeze, Grant, LedgerStore, make_engine, migrate
from broker.ledger.issuing import Committed, Refused
from broker.ledger.writer_process import KEY_NAME, WriterServer, socket_path
from tests.support.wait import wait_until


def _grant(grant_id: str, subject: str = "s") -> Grant:
    now = time.time()
    return Grant(id=grant_id, subject=subject, attestor="a", task="t", boundary="b", backend="jwt", scopes="read",
                 handle=grant_id, fingerprint="sha256:x", issued_at=now, expires_at=now + 60)  # fmt: skip


def _store(data_dir: Path, *, remote: bool) -> LedgerStore:
    engine = make_engine(f"sqlite:///{data_dir / 'broker.db'}", sqlite_synchronous="FULL")
    migrate.upgrade(engine)
    return LedgerStore(engine, writer_dir=data_dir if remote else None)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "d"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def writer(data_dir) -> Iterator[tuple[WriterServer, LedgerStore]]:
    own = _store(data_dir, remote=False)
    server = WriterServer(own.apply_writes, data_dir)
    server.listen()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, own
    server.close()


def test_two_workers_writes_commit_through_one_writer_on_one_chain(data_dir, writer):
    workers = [_store(data_dir, remote=True) for _ in range(2)]
    fed: list[list[str]] = [[], []]
    for seen, store in zip(fed, workers, strict=True):
        store.feed.subscribe(lambda rows, seen=seen: seen.extend(r["grant_id"] for r in rows))

    def issue(n: int):  # noqa: ANN202
        store = workers[n % 2]
        return store.record_issued(_grant(f"g{n}"), Event(kind="issued", grant_id=f"g{n}"))

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(issue, range(300)))
    assert all(isinstance(o, Committed) for o in outcomes)
    assert sorted(o.log_index for o in outcomes) == list(range(300))  # one chain, no index twice
    # each worker's feed (its metrics, its signal delivery) got exactly its own writes' rows
    assert sorted(fed[0]) == sorted(f"g{n}" for n in range(0, 300, 2))
    assert sorted(fed[1]) == sorted(f"g{n}" for n in range(1, 300, 2))
    result = writer[1].verify()
    assert result.ok and result.checked == 300 and len(writer[1].grants()) == 300


def test_a_freeze_refuses_inside_the_writers_transaction_and_the_worker_learns_it(data_dir, writer):
    worker = _store(data_dir, remote=True)
    assert worker.records.frozen("s", "b") is None  # the worker's snapshot: nothing frozen
    other = _store(data_dir, remote=False)  # an operator on another replica freezes the subject
    other.records.add_freeze(Freeze(kind="subject", value="s", reason="incident", actor="op", created_at=time.time()),
                             Event(kind="frozen", subject="s", actor="op"))  # fmt: skip
    outcome = worker.record_issued(_grant("late"), Event(kind="issued", grant_id="late", subject="s"))
    assert outcome == Refused("subject_frozen", "subject was frozen while the grant was being issued")
    assert worker.records.frozen("s", "b") == "subject"  # the refusal's freeze reached this worker's snapshot
    (late,) = [g for g in writer[1].grants() if g.id == "late"]
    assert late.status == "revoke_pending"  # kept for the outbox to revoke, as with the thread writer


def test_a_wrong_key_is_refused_and_nothing_is_written(data_dir, writer):
    (data_dir / KEY_NAME).write_bytes(b"\0" * 32)  # a worker holding another key than the writer's
    worker = _store(data_dir, remote=True)
    with pytest.raises(LedgerUnavailable, match="AuthenticationError"):
        worker.record(Event(kind="denied", subject="s"))
    assert writer[1].verify().checked == 0


def test_writes_fail_closed_when_the_writer_is_gone(data_dir, writer):
    worker = _store(data_dir, remote=True)
    worker.record(Event(kind="denied", subject="s"))
    worker.probe_write()  # readiness: the writer answers
    writer[0].close()
    wait_until(lambda: _fails(worker), 10, "a write refused once the writer is gone")
    with pytest.raises(LedgerUnavailable, match="ledger writer process unavailable"):
        worker.probe_write()
    assert writer[1].verify().checked == 1


def _fails(worker: LedgerStore) -> bool:
    try:
        worker.record(Event(kind="denied", subject="s"))
    except LedgerUnavailable:
        return True
    return False


def test_the_socket_and_key_are_only_the_brokers_users(data_dir, writer):
    assert socket_path(data_dir).stat().st_mode & 0o777 == 0o600
    assert (data_dir / KEY_NAME).stat().st_mode & 0o777 == 0o600


def test_a_data_dir_too_long_for_a_unix_socket_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(LedgerUnavailable, match="ledger_writer: thread"):
        socket_path(tmp_path / ("d" * 120))



def test_closing_the_writer_ends_its_accept_loop_without_a_warning(data_dir, caplog):
    """Closed, the listener's accept fails at once and for ever: the loop ends instead of spinning on it
    (it once logged 'refused a connection' thousands of times a second until the process exited)."""
    server = WriterServer(_store(data_dir, remote=False).apply_writes, data_dir)
    server.listen()
    accepting = threading.Thread(target=server.serve_forever, daemon=True)
    accepting.start()
    worker = _store(data_dir, remote=True)
    assert isinstance(worker.record_issued(_grant("g-before"), Event(kind="issued", grant_id="g-before")), Committed)
    with caplog.at_level("WARNING", logger="broker.ledger.writer_process"):
        server.close()
        wait_until(lambda: not accepting.is_alive(), timeout=10, what="the accept loop's end")
    assert "refused a connection" not in caplog.text


def test_the_writes_of_one_event_loop_turn_go_as_one_message(data_dir, writer, monkeypatch):
    """On an event loop, what one turn submits is sent once the turn ends, as one message; from a thread,
    each write at once (nothing else would send it)."""
    import asyncio

    from broker.ledger import writer_process
    from broker.ledger.issuing import grant_values

    sent: list[int] = []
    real_send = writer_process._send

    def counted(conn, message) -> None:  # noqa: ANN001
        if isinstance(message, list):  # a worker's writes (the writer's answers, sent here too, are a tuple)
            sent.append(len(message))
        real_send(conn, message)

    monkeypatch.setattr(writer_process, "_send", counted)
    worker = _store(data_dir, remote=True)

    async def one_turn() -> list:
        futures = [worker.submit_issued(grant_values(_grant(f"loop{n}")), Event(kind="issued", grant_id=f"loop{n}"))
                   for n in range(10)]  # fmt: skip
        return [await asyncio.wrap_future(f) for f in futures]

    outcomes = asyncio.run(one_turn())
    assert all(isinstance(o, Committed) for o in outcomes) and sent == [10]
    for n in range(2):
        assert isinstance(worker.record_issued(_grant(f"thread{n}"), Event(kind="issued", grant_id=f"thread{n}")), Committed)
    assert sent == [10, 1, 1]
    assert writer[1].verify().checked == 12
