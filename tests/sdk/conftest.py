"""SDK tests run against a real broker over HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk.live import LiveBroker
from tests.support.broker import Issuers

WORKER = "system:serviceaccount:payments:worker"


@pytest.fixture(scope="session")
def live(tmp_path_factory, issuers: Issuers) -> Iterator[LiveBroker]:
    broker = LiveBroker.start(tmp_path_factory.mktemp("live-broker"), issuers)
    yield broker
    broker.stop()


@pytest.fixture
def worker_token(issuers: Issuers) -> str:
    return issuers.worker()


@pytest.fixture
def client(live: LiveBroker, worker_token: str):  # noqa: ANN201
    from broker_client import Client

    with Client(live.url, worker_token) as made:
        yield made
