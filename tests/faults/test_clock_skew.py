"""Clock skew at the edge of the allowed window: one second inside is accepted, one second outside refused.

The attestors allow `leeway` seconds (30 by default) between the issuer's clock and ours, for
`iat`, `nbf` and `exp` alike. The broker runs on an injected clock that stands still at `now`, and
every claim is `now` plus an exact offset, so the edges hold however long the test takes. `now` is
20 s behind the wall clock when each test starts (not at import, which a long run leaves far behind):
a check that still read the wall clock would refuse the accepted `exp` edge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.broker import BrokerClient, Issuers, broker_settings, open_client

LEEWAY = 30
SUBJECT = "system:serviceaccount:payments:worker"

# name: (claims as offsets from now, accepted?)
EDGES = {
    "iat-ahead-leeway-minus-1": ({"iat": LEEWAY - 1, "nbf": 0, "exp": 300}, True),
    "iat-ahead-leeway-plus-1": ({"iat": LEEWAY + 1, "nbf": 0, "exp": 300}, False),
    "nbf-ahead-leeway-minus-1": ({"iat": 0, "nbf": LEEWAY - 1, "exp": 300}, True),
    "nbf-ahead-leeway-plus-1": ({"iat": 0, "nbf": LEEWAY + 1, "exp": 300}, False),
    "exp-behind-leeway-minus-1": ({"iat": -300, "nbf": -300, "exp": -(LEEWAY - 1)}, True),
    "exp-behind-leeway-plus-1": ({"iat": -300, "nbf": -300, "exp": -(LEEWAY + 1)}, False),
}


@pytest.fixture
def now() -> int:
    """The broker's clock for one test, standing still."""
    return int(time.time()) - 20


@pytest.fixture
def broker(tmp_path, issuers, now: int) -> Iterator[BrokerClient]:
    with open_client(broker_settings(tmp_path, issuers), clock=lambda: float(now)) as client:
        yield client


@pytest.mark.parametrize(("offsets", "accepted"), EDGES.values(), ids=EDGES.keys())
def test_skew_at_the_edge(
    broker: BrokerClient, issuers: Issuers, now: int, offsets: dict[str, int], accepted: bool
) -> None:
    token = issuers.k8s.token(alg="ES256", sub=SUBJECT, **{claim: now + delta for claim, delta in offsets.items()})
    response = broker.grant(token, task="skew")
    if accepted:
        assert response.status_code == 201, response.text
    else:
        assert response.status_code == 401 and response.json()["code"] == "invalid_identity"
        assert broker.service.ledger.grants() == []
        assert broker.events("denied")[-1].detail["code"] == "invalid_identity"
