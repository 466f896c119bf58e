"""Shared fixtures: real OIDC issuers on loopback and a broker on a temp SQLite ledger."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import BrokerClient, Issuers, broker_settings, open_client


@pytest.fixture(scope="session")
def issuers() -> Iterator[Issuers]:
    started = Issuers.start()
    yield started
    started.close()


@pytest.fixture
def broker(tmp_path, issuers) -> Iterator[BrokerClient]:
    """A broker app with the test boundaries and policy, lifespan running."""
    with open_client(broker_settings(tmp_path, issuers)) as client:
        yield client
