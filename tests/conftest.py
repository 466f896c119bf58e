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
        assert_provenance(client.events())


def assert_provenance(events: list) -> None:
    """Issue 15: every issued and denied event of every test names the policy revision and the deciding rule."""
    for event in events:
        if event.kind in ("issued", "denied"):
            assert len(event.detail.get("policy_revision") or "") == 64, (event.kind, event.detail)
            assert "rule" in event.detail, (event.kind, event.detail)
            assert event.kind == "denied" or event.detail["rule"], event.detail
