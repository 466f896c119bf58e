"""The shared DPoP replay table on SQLite and PostgreSQL: expiry, pruning, and the cap (clock injected)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from broker.errors import DpopReplayFull
from broker.ledger import make_engine, migrate
from broker.ledger.replay import ReplayStore
from tests.support.postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator[Engine]:  # noqa: ANN001
    if request.param == "sqlite":
        made = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
        migrate.upgrade(made)
        yield made
        made.dispose()
        return
    with fresh_database() as url:
        made = make_engine(url)
        migrate.upgrade(made)
        yield made
        made.dispose()


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM dpop_replay")).scalar_one()


def test_a_key_is_a_replay_until_it_expires(engine) -> None:
    now = [1000.0]
    store = ReplayStore(engine, capacity=10, clock=lambda: now[0])
    assert [store.seen("jkt:a", 1120), store.seen("jkt:a", 1120), store.seen("jkt:b", 1120)] == [False, True, False]
    assert ReplayStore(engine, capacity=10, clock=lambda: now[0]).seen("jkt:a", 1120) is True  # another replica
    now[0] = 1120
    assert store.seen("jkt:a", 1240) is False  # expired, not yet pruned: a new use, kept again
    assert store.seen("jkt:a", 1240) is True


def test_the_cap_fails_closed_and_pruning_frees_it(engine) -> None:
    now = [1000.0]
    store = ReplayStore(engine, capacity=2, clock=lambda: now[0])
    assert store.seen("k1", 1100) is False and store.seen("k2", 1200) is False
    with pytest.raises(DpopReplayFull):
        store.seen("k3", 1300)
    assert _rows(engine) == 2
    now[0] = 1100  # k1 expired: pruned at the next check, which makes room
    assert store.seen("k3", 1300) is False
    assert _rows(engine) == 2
