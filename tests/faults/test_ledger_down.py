"""The ledger database becomes unavailable: the broker fails closed (503 ledger_unavailable, nothing out).

The outage is real: the broker's PostgreSQL database stops accepting connections and its sessions
are terminated, as when a primary goes away. SQLite is not used here: the broker runs as root in
this sandbox, and root writes through a read-only file, so that outage cannot be staged honestly.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

from tests.support.broker import BrokerClient, Issuers, broker_settings, open_client
from tests.support.postgres import SERVER, fresh_database


@contextmanager
def database_outage(url: str) -> Iterator[None]:
    """Refuse new connections to the database and cut the open ones; restore afterwards."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.fixture
def pg_broker(tmp_path, issuers: Issuers) -> Iterator[tuple[BrokerClient, str]]:
    with fresh_database("broker_faults") as url:
        settings = broker_settings(tmp_path, issuers, database_url=url, key_encryption_key=secrets.token_hex(32))
        with open_client(settings) as client:
            yield client, url


def test_ledger_down_fails_closed_then_recovers(pg_broker, issuers: Issuers) -> None:
    client, url = pg_broker
    assert client.grant(issuers.worker(), task="before").status_code == 201
    with database_outage(url):
        refused = client.grant(issuers.worker(), task="during")
        # readiness is checked in the background (broker/grants/readiness.py): wait for its verdict
        assert client.components.readiness.wait_for(lambda r: not r.ready(), timeout=20)
        ready = client.get("/readyz")
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["code"] == "ledger_unavailable" and "credential" not in body and "token" not in refused.text
    assert ready.status_code == 503 and ready.json()["checks"]["ledger"] != "ok"
    # back up: the outage left no grant behind, the chain is intact, and issuing works again
    assert [g.task for g in client.service.ledger.grants()] == ["before"]
    assert client.grant(issuers.worker(), task="after").status_code == 201
    assert client.service.ledger.verify().ok
