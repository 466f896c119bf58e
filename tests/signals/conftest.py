"""Brokers whose policy has signal receivers (`receiver-*` via the oidc attestor)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.broker import POLICY, RECEIVERS, BrokerClient, broker_settings, open_client

SIGNALS_POLICY: dict[str, Any] = {"rules": [*POLICY["rules"], RECEIVERS]}


def signals_settings(tmp_path, issuers, **overrides: Any):  # noqa: ANN001, ANN201
    return broker_settings(tmp_path, issuers, policy=SIGNALS_POLICY, signal_push_allow_http=True, **overrides)


@pytest.fixture
def broker(tmp_path, issuers) -> Iterator[BrokerClient]:
    with open_client(signals_settings(tmp_path, issuers)) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
