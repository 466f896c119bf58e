"""Alembic migrations: up from empty on SQLite and PostgreSQL, equal to the models, safe to race."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from broker.ledger import LedgerStore, make_engine, migrate
from tests.support.postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with fresh_database() as url:
        yield url


def _broker(*args: str) -> subprocess.CompletedProcess:
    broker = Path(sys.executable).with_name("broker")
    return subprocess.run([str(broker), *args], capture_output=True, text=True, timeout=120)


def test_db_upgrade_from_empty_matches_the_models(database_url: str) -> None:
    """Fails when someone adds a table or column to ledger/models.py without a migration."""
    done = _broker("db", "upgrade", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    assert f"schema at revision {migrate.head()}" in done.stdout
    engine = make_engine(database_url)
    diverged = "models and migrations diverge: add a migration (broker.ledger.migrate.revision)"
    assert migrate.differences(engine) == [], diverged
    assert LedgerStore(engine).verify().ok  # the chain head row is there from the first migration
    engine.dispose()


def test_upgrade_twice_changes_nothing(database_url: str) -> None:
    engine = make_engine(database_url)
    first = migrate.upgrade(engine)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT seq, hash FROM ledger_head")).all()
    assert migrate.upgrade(engine) == first == migrate.head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seq, hash FROM ledger_head")).all() == before
    engine.dispose()


def test_a_ledger_created_before_migrations_is_adopted(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    # what the first releases made before migrations existed: the initial schema, unversioned
    migrate.upgrade(engine, migrate.INITIAL)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    assert "alembic_version" not in inspect(engine).get_table_names()
    assert migrate.upgrade(engine) == migrate.head()
    assert migrate.differences(engine) == []


def test_replicas_migrating_at_once_all_succeed() -> None:
    """Three replicas start together on an empty PostgreSQL database: the advisory lock serialises them."""
    with fresh_database() as url:
        engines = [make_engine(url) for _ in range(3)]
        results: list[object] = []
        threads = [threading.Thread(target=lambda e=e: results.append(_try_upgrade(e))) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == [migrate.head()] * 3
        with engines[0].connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ledger_head")).scalar() == 1
        for engine in engines:
            engine.dispose()


def _try_upgrade(engine) -> object:  # noqa: ANN001
    try:
        return migrate.upgrade(engine)
    except Exception as exc:  # noqa: BLE001 (the assertion shows which replica failed and why)
        return exc


def test_open_ledger_migrates_the_configured_database(tmp_path: Path, issuers) -> None:
    from broker.app import open_ledger
    from tests.support.broker import broker_settings

    ledger = open_ledger(broker_settings(tmp_path, issuers))
    with create_engine(str(ledger.engine.url)).connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == migrate.head()
