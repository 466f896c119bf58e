"""Shared fixtures: real OIDC issuers on loopback and a broker on a temp SQLite ledger."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.broker import BrokerClient, Issuers, broker_settings, open_client

# pytest-xdist's workers (`make test` runs two) have COLUMNS=80 in their environment, which rich's
# console (broker/cli/output.py, built when a test module imports the CLI) would keep as its width for
# every CLI test; each CLI test names its own width when it invokes a command.
os.environ.pop("COLUMNS", None)


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
