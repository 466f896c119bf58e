"""A hostile or broken JWKS endpoint, through HTTP: slow, huge, HTML, failing, and keys rotating mid-test.

Each broker here trusts one extra issuer ("edge") whose key endpoint misbehaves on demand; a token
from it must be refused as `invalid_identity`, recorded, and issue nothing, within the fetch timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.fingerprint import fingerprint as token_fingerprint
from tests.support.broker import POLICY, BrokerClient, Issuers, broker_settings, open_client
from tests.support.issuer import TestIssuer

EDGE_SUBJECT = "edge-workload"
FETCH_TIMEOUT = 1.0
EDGE_POLICY = {
    "rules": [
        *POLICY["rules"],
        {"name": "edge", "match": {"attestor": "edge", "subject": EDGE_SUBJECT},
         "allow": [{"boundary": "orders", "scopes": ["read"], "max_ttl": "5m"}]},
    ]
}  # fmt: skip


@pytest.fixture
def edge() -> Iterator[TestIssuer]:
    with TestIssuer(slow_seconds=3.0, huge_bytes=2 * 1024 * 1024) as issuer:
        yield issuer


@pytest.fixture
def client(tmp_path, issuers: Issuers, edge: TestIssuer) -> Iterator[BrokerClient]:
    config = edge.attestor_config(
        "oidc", name="edge", jwks_timeout=FETCH_TIMEOUT, jwks_min_refresh_interval=1, jwks_max_bytes=65_536
    ).model_dump(mode="json")
    settings = broker_settings(tmp_path, issuers, attestors=[*issuers.attestors(), config], policy=EDGE_POLICY)
    with open_client(settings) as running:
        yield running


def _ask(client: BrokerClient, token: str) -> Any:
    return client.grant(token, boundary="orders", scopes=["read"], task="edge")


def _assert_refused(client: BrokerClient, token: str) -> float:
    before = len(client.service.ledger.grants())
    started = time.monotonic()
    response = _ask(client, token)
    elapsed = time.monotonic() - started
    assert response.status_code == 401 and response.json()["code"] == "invalid_identity", response.text
    assert token_fingerprint(token) in [e.detail.get("identity_fp") for e in client.events("denied")]
    assert len(client.service.ledger.grants()) == before
    return elapsed


MODES = {"slow": "slow", "huge": "huge", "html": "html", "http-error": "error"}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_a_misbehaving_jwks_refuses_within_the_timeout_then_recovers(client, edge: TestIssuer, mode: str) -> None:
    edge.serve_mode = mode
    token = edge.token(sub=EDGE_SUBJECT)
    # the discovery document and the JWKS each get at most the timeout; a slow server is not waited out
    assert _assert_refused(client, token) < 2 * FETCH_TIMEOUT + 1.0
    edge.serve_mode = "normal"
    time.sleep(1.1)  # the refresh rate limit
    assert _ask(client, edge.token(sub=EDGE_SUBJECT)).status_code == 201


def test_keys_rotating_mid_test(client, edge: TestIssuer) -> None:
    """New kid: one refresh picks it up. Old kid after that refresh: gone from the JWKS, refused."""
    before_rotation = edge.token(sub=EDGE_SUBJECT)
    assert _ask(client, before_rotation).status_code == 201
    edge.rotate()
    time.sleep(1.1)
    assert _ask(client, edge.token(sub=EDGE_SUBJECT)).status_code == 201
    _assert_refused(client, before_rotation)
