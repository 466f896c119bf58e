"""Schemathesis over the app's own OpenAPI schema, every operation: no 500, and no token echoed back.

Each operation is fuzzed as three callers (no identity, a workload, an operator) so generated bodies
reach validation and the use cases, not only the 401 in front of them. Bounded: a few examples per
operation and caller, no shrinking, no example database (well under a minute). Seeded: the seed is
printed (shown with a failure) and `FUZZ_SEED=<seed>` replays exactly that run.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.support.broker import BrokerClient, Issuers, broker_settings, open_client

EXAMPLES = 8
MIN_ECHO = 16  # shorter strings appear in answers by chance
SEED = int(os.environ.get("FUZZ_SEED") or secrets.randbits(32))


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, issuers: Issuers) -> Iterator[BrokerClient]:
    with open_client(broker_settings(tmp_path_factory.mktemp("fuzz"), issuers)) as running:
        yield running


def _operations(client: BrokerClient) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    return [result.ok() for result in schema.get_all_operations()]


def _sent_tokens(case, identity: str | None) -> list[str]:  # noqa: ANN001
    """Every token we sent: the bearer, and the body's token fields (`token`, `subject_token`, …)."""
    sent = [identity] if identity else []
    if isinstance(case.body, dict):
        sent += [v for k, v in case.body.items() if "token" in str(k) and isinstance(v, str) and len(v) >= MIN_ECHO]
    return sent


def _check(case, token: str | None) -> None:  # noqa: ANN001
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = case.call(headers=headers)
    assert response.status_code < 500 or (case.path == "/readyz" and response.status_code == 503), response.text[:500]
    for sent in _sent_tokens(case, token):
        assert sent not in response.text, f"{case.method} {case.path} echoed a token-like input"


@pytest.mark.parametrize("caller", ["anonymous", "workload", "operator"])
def test_every_operation_no_server_error_and_no_echo(fuzz_client: BrokerClient, issuers: Issuers, caller: str) -> None:
    token = {"anonymous": None, "workload": issuers.worker(), "operator": issuers.operator()}[caller]
    print(f"schema fuzz seed {SEED}: replay with FUZZ_SEED={SEED}", file=sys.stderr)
    operations = _operations(fuzz_client)
    assert len(operations) >= 15  # the whole surface, not a stub

    for operation in operations:

        @seed(SEED)
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def fuzz(case) -> None:  # noqa: ANN001
            _check(case, token)

        fuzz()
