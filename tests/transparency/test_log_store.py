"""Every ledger event is a log leaf, appended in the same transaction, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import insert, text, update

from broker.errors import LedgerUnavailable
from broker.ledger import Event, LedgerStore, event_dict, make_engine, migrate
from broker.ledger.chain import canonical
from broker.ledger.models import AuditEvent, ChainHead
from broker.ledger.transactions import chained_row
from broker.transparency import tree
from broker.transparency.log import LogReader
from tests.support.postgres import fresh_database
from tests.transparency.test_tree import reference_consistency_ok, reference_inclusion_ok, reference_mth


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        yield _migrated(url)
        return
    with fresh_database() as url:
        yield _migrated(url)


def _migrated(url: str):
    engine = make_engine(url)
    migrate.upgrade(engine)
    return engine


def _entries(store: LedgerStore) -> list[bytes]:
    return [canonical(event_dict(e)) for e in store.events(limit=100000)]


def test_each_event_is_a_leaf_and_proofs_verify(engine) -> None:
    store, reader = LedgerStore(engine), LogReader(engine)
    for n in range(13):
        store.record(*(Event(kind="denied", subject=f"s{n}", detail={"i": k}) for k in range(n % 3 + 1)))
    entries = _entries(store)
    size, root = reader.head()
    assert size == len(entries) == 25 and root == reference_mth(entries)
    for old in (1, 7, 16, 24):
        assert reader.root(old) == reference_mth(entries[:old])
        assert reference_consistency_ok(old, size, reader.root(old), root, reader.consistency(old, size))
    for index in (0, 5, 24):
        proof = reader.inclusion(index, size)
        assert reference_inclusion_ok(index, size, tree.leaf_hash(entries[index]), proof, root)
    assert [leaf for _, leaf in reader.entries(3, 6)] == entries[3:6]
    engine.dispose()


def test_concurrent_writers_keep_log_and_chain_in_step(engine) -> None:
    store = LedgerStore(engine)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.record(Event(kind="denied", subject=f"w{n}")), range(64)))
    assert store.verify().ok
    assert LogReader(engine).head() == (64, reference_mth(_entries(store)))
    engine.dispose()


def test_a_log_out_of_step_fails_closed(engine) -> None:
    store = LedgerStore(engine)
    store.record(Event(kind="denied", subject="a"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE log_head SET size = 5"))
    with pytest.raises(LedgerUnavailable, match="log out of step"):
        store.record(Event(kind="denied", subject="b"))
    assert len(store.events()) == 1  # the event was not written either
    engine.dispose()


def test_the_migration_backfills_existing_events(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(engine, "0001")
    store = LedgerStore(engine)
    with store.tx.session() as session:  # a ledger written before the log existed: the chain alone
        prev, rows = "0" * 64, []
        for seq in range(1, 12):
            rows.append(chained_row(Event(kind="denied", subject=f"old{seq}"), seq, 1.0 + seq, prev)[0])
            prev = rows[-1]["hash"]
        session.execute(insert(AuditEvent.__table__), rows)
        session.execute(update(ChainHead.__table__).values(seq=11, hash=prev))
    migrate.upgrade(engine)
    store.record(Event(kind="denied", subject="new"))
    entries = _entries(store)
    assert LogReader(engine).head() == (12, reference_mth(entries))
    assert store.verify().ok
    engine.dispose()
