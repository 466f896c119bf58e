"""Problem codes map one-to-one to exceptions; retries only for idempotent calls on 503/connection errors."""

from __future__ import annotations

from types import ModuleType

import httpx
import pytest

import broker_client
import broker_client.errors as sdk_errors
from broker.api.errors import STATUS
from broker_client import Client, StaticToken
from broker_client._wire import Retry


def test_every_broker_problem_code_has_exactly_one_exception() -> None:
    codes = set(STATUS) | {"validation_error", "internal_error"}
    assert codes <= set(sdk_errors.BY_CODE), codes - set(sdk_errors.BY_CODE)
    assert all(cls.code == code for code, cls in sdk_errors.BY_CODE.items())


def test_the_public_names_are_the_exception_tree_and_the_listed_api() -> None:
    tree = {name for name, value in vars(sdk_errors).items() if isinstance(value, type) and issubclass(value, Exception)}
    assert set(sdk_errors.__all__) == tree
    public = {name for name, value in vars(broker_client).items()
              if not name.startswith("_") and not isinstance(value, ModuleType)}  # fmt: skip
    assert public == set(broker_client.__all__)  # nothing leaks (typing names, BY_CODE, from_problem)
    assert tree <= public
    assert len(broker_client.__all__) == len(public)  # each name listed once


@pytest.mark.parametrize(
    ("boundary", "scopes", "ttl", "error"),
    [
        ("nowhere", ["read"], 60, sdk_errors.UnknownBoundary),
        ("orders", ["delete"], 60, sdk_errors.UnknownScope),
        ("orders", ["payments:read"], 60, sdk_errors.MultiBoundary),
        ("orders", ["read"], 3600, sdk_errors.TtlExceedsCap),
        ("orders", ["admin"], 60, sdk_errors.PolicyDenied),
    ],
    ids=["unknown-boundary", "unknown-scope", "multi-boundary", "ttl-cap", "policy"],
)
def test_refusals_raise_the_mapped_exception(client, boundary, scopes, ttl, error) -> None:
    with pytest.raises(error) as caught:
        client.grant("refused", boundary, scopes, ttl=ttl)
    assert caught.value.code == error.code and caught.value.status in (400, 403)


def test_an_invalid_identity_is_refused(live, issuers) -> None:
    forged = issuers.k8s.token(sub="system:serviceaccount:payments:worker", aud="someone-else")
    with Client(live.url, forged) as client, pytest.raises(sdk_errors.InvalidIdentity) as caught:
        client.grant("t", "orders", ["read"])
    assert caught.value.status == 401 and forged not in str(caught.value)


def _counting(status: int) -> tuple[list[str], list[str | None], httpx.MockTransport]:
    seen: list[str] = []
    keys: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("dpop", ""))
        keys.append(request.headers.get("idempotency-key"))
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        code = {503: "backend_unavailable", 500: "internal_error", 403: "policy_denied"}[status]
        body = {"code": code, "title": "x", "status": status}
        return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})

    return seen, keys, httpx.MockTransport(answer)


@pytest.mark.parametrize(
    ("status", "call", "attempts", "error"),
    [
        (503, "get", 3, sdk_errors.BackendUnavailable),
        (0, "get", 3, sdk_errors.TransportError),
        (503, "grant", 3, sdk_errors.BackendUnavailable),
        (0, "grant", 3, sdk_errors.TransportError),
        (500, "get", 1, sdk_errors.InternalError),
        (403, "complete", 1, sdk_errors.PolicyDenied),
    ],
    ids=["503-idempotent", "conn-idempotent", "503-grant-one-key", "conn-grant-one-key", "500-no-retry", "403-no-retry"],
)
def test_retry_only_on_503_or_connection_errors_and_grants_under_one_key(status, call, attempts, error) -> None:
    seen, keys, transport = _counting(status)
    client = Client("http://broker.invalid", StaticToken("t"), transport=transport, retry=Retry(attempts=3, base=0.001))
    calls = {"get": lambda: client.get("g_1"), "grant": lambda: client.grant("t", "b", ["read"]),
             "complete": lambda: client.complete("g_1")}  # fmt: skip
    with pytest.raises(error):
        calls[call]()
    assert len(seen) == attempts
    assert len(set(seen)) == attempts  # a fresh DPoP proof (new jti) per attempt
    if call == "grant":  # every attempt of one grant under the same Idempotency-Key
        assert len(set(keys)) == 1 and keys[0] is not None


def test_jitter_stays_within_the_exponential_cap() -> None:
    retry = Retry(base=0.1, cap=1.0)
    delays = [retry.delay(n) for n in range(8) for _ in range(50)]
    assert 0 <= min(delays) and max(delays) <= 1.0
    assert len(set(delays)) > 100  # jittered, not fixed
