"""Signed checkpoints: only when the log grew, at most once per interval, one sequence for all replicas."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from broker.cli import app as cli
from broker.ledger import Event, LedgerStore, make_engine, migrate
from broker.signing import SigningKeyError
from broker.transparency import checkpoint as cp
from broker.transparency import note
from broker.transparency.checkpoints import Checkpointer
from broker.transparency.keys import DatabaseLogKeys, load_or_create, rotate
from broker.transparency.log import LogReader
from tests.support.broker import broker_settings, open_client
from tests.support.postgres import fresh_database
from tests.transparency.test_tree import reference_consistency_ok

ORIGIN = "broker.test/log"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator:
    def _open(url: str):
        engine = make_engine(url)
        migrate.upgrade(engine)
        return engine

    if request.param == "sqlite":
        engine = _open(f"sqlite:///{tmp_path / 'ledger.db'}")
        yield engine
        engine.dispose()
        return
    with fresh_database() as url:
        engine = _open(url)
        yield engine
        engine.dispose()


def test_signs_only_when_grown_and_due(engine) -> None:
    clock, signer = Clock(), note.Signer.generate(ORIGIN)
    store, points = LedgerStore(engine), Checkpointer(engine, lambda: signer, interval=1.0, clock=clock)
    assert points.maybe_sign() is None  # empty log: nothing to sign
    store.record(Event(kind="denied", subject="a"), Event(kind="denied", subject="b"))
    first = points.maybe_sign()
    assert first is not None and first.size == 2
    opened, _ = cp.open_checkpoint(first.note, signer.verifier)
    assert (opened.origin, opened.size, opened.root) == (ORIGIN, 2, LogReader(engine).head()[1])
    store.record(Event(kind="denied", subject="c"))
    clock.now += 0.5
    assert points.maybe_sign() is None  # grew, but not due
    clock.now += 0.5
    assert points.maybe_sign().size == 3
    clock.now += 5
    assert points.maybe_sign() is None  # due, but did not grow
    assert points.latest().size == 3 and points.at_least(1).size == 2


def test_replicas_write_one_checkpoint_sequence(engine) -> None:
    clock, signer = Clock(), note.Signer.generate(ORIGIN)
    replicas = [Checkpointer(engine, lambda: signer, interval=0.01, clock=clock) for _ in range(3)]
    store, stop = LedgerStore(engine), threading.Event()

    def write() -> None:
        for round_ in range(1, 7):  # six rounds, each waiting until some replica signed it: a real sequence
            for n in range(10):
                store.record(Event(kind="denied", subject=f"w{round_}-{n}"))
            signed, deadline = threading.Event(), time.monotonic() + 30
            while not signed.wait(0.005) and time.monotonic() < deadline:
                latest = replicas[0].latest()
                if latest and latest.size >= round_ * 10:
                    signed.set()
        stop.set()

    def sign(points: Checkpointer) -> None:
        while not stop.is_set():
            clock.now += 0.004
            points.maybe_sign()

    threads = [threading.Thread(target=write), *(threading.Thread(target=sign, args=(r,)) for r in replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.now += 1
    replicas[0].maybe_sign()
    reader = LogReader(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT size, root, created_at FROM log_checkpoints ORDER BY size").all()
    assert rows[-1][0] == 60 and len(rows) >= 6
    for (size1, root1, t1), (size2, root2, t2) in zip(rows, rows[1:]):
        assert t2 - t1 >= 0.01 - 1e-9  # at most one per interval, whichever replica signed
        proof = reader.consistency(size1, size2)
        assert reference_consistency_ok(size1, size2, bytes.fromhex(root1), bytes.fromhex(root2), proof)


def test_a_pass_with_nothing_due_waits_for_no_writer(tmp_path) -> None:
    """Deciding is a read: while another connection holds SQLite's write lock (the ledger writer's commit),
    a pass with nothing due answers at once. It once took the write lock for its reads, proof and
    signature, once a second in every worker, and every grant's commit waited behind it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate.upgrade(engine)
    clock, signer = Clock(), note.Signer.generate(ORIGIN)
    store, points = LedgerStore(engine), Checkpointer(engine, lambda: signer, interval=1.0, clock=clock)
    store.record(Event(kind="denied", subject="a"))
    assert points.maybe_sign().size == 1
    store.record(Event(kind="denied", subject="b"))
    clock.now += 0.5  # grown, not due
    with engine.begin():  # BEGIN IMMEDIATE (make_engine): the write lock, held; a waiter gives up after 30 s
        started = time.monotonic()
        assert points.maybe_sign() is None
        assert time.monotonic() - started < 5
    engine.dispose()


def test_a_checkpoint_stored_between_the_read_and_the_insert_stands(engine) -> None:
    """Two signers decide on the same read: the first to store wins, the other stores nothing."""
    clock, signer = Clock(), note.Signer.generate(ORIGIN)
    store = LedgerStore(engine)
    store.record(Event(kind="denied", subject="a"))
    other = Checkpointer(engine, lambda: signer, interval=1.0, clock=clock)
    first: list = []

    def signer_that_loses_the_race() -> note.Signer:  # called after the read, before the insert
        first.append(other.maybe_sign())
        return signer

    late = Checkpointer(engine, signer_that_loses_the_race, interval=1.0, clock=clock)
    assert late.maybe_sign() is None
    assert first[0] is not None and first[0].size == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT size FROM log_checkpoints").scalars().all() == [1]


def test_database_log_key_is_sealed_and_shared(engine) -> None:
    kek = os.urandom(32)
    first = load_or_create(DatabaseLogKeys(engine, kek), ORIGIN)
    assert load_or_create(DatabaseLogKeys(engine, kek), ORIGIN).key_string() == first.key_string()
    with engine.connect() as conn:
        sealed = conn.exec_driver_sql("SELECT sealed FROM log_keys").scalar_one()
    assert first.key_string() not in sealed and "PRIVATE" not in sealed
    with pytest.raises(SigningKeyError, match="sealed with KEK"):
        DatabaseLogKeys(engine, os.urandom(32)).active()
    second = rotate(DatabaseLogKeys(engine, kek), ORIGIN)
    assert second.key_id != first.key_id and load_or_create(DatabaseLogKeys(engine, kek), ORIGIN).key_id == second.key_id


def test_broker_log_key_prints_the_verifier_of_the_served_checkpoints(tmp_path, issuers) -> None:
    settings = broker_settings(tmp_path, issuers)
    with open_client(settings) as client:
        client.grant(issuers.worker(), task="t1", ttl=60)
        client.components.log.checkpointer.maybe_sign(force=True)
        signed = client.components.log.checkpoint()
    env = {"BROKER_ISSUER": "http://broker.test", "BROKER_ENV": "test"}
    done = CliRunner().invoke(cli, ["log", "key", "--data-dir", str(tmp_path)], env=env)
    assert done.exit_code == 0, done.output
    verifier = note.Verifier.parse(done.output.strip())
    assert verifier.name == "broker.test/log"
    checkpoint, _ = cp.open_checkpoint(signed.note, verifier)
    assert checkpoint.size == signed.size
    assert (tmp_path / "log_key").stat().st_mode & 0o777 == 0o600
