"""A lost answer costs no second live credential: `Idempotency-Key` on `POST /v1/grants` (promise 9)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from tests.support.broker import BrokerClient

BODY = {"task": "deploy-1", "boundary": "orders", "scopes": ["read"], "ttl": 300}


def _post(broker: BrokerClient, token: str, key: str | list[str] | None, **body):  # noqa: ANN003, ANN202
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    for value in [key] if isinstance(key, str) else key or []:
        headers.append((b"Idempotency-Key", value.encode()))
    return broker.post("/v1/grants", json={**BODY, **body}, headers=headers)


def _claims(answer) -> dict:  # noqa: ANN001
    return jwt.decode(answer.json()["credential"]["token"], options={"verify_signature": False})


def test_a_retry_with_the_same_key_returns_the_same_grant(broker, issuers):
    token = issuers.worker()
    first, again = _post(broker, token, "k-1"), _post(broker, token, "k-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["grant_id"] == again.json()["grant_id"]
    assert _claims(first)["jti"] == _claims(again)["jti"] and _claims(first)["exp"] == _claims(again)["exp"]
    assert len(broker.service.ledger.grants(task="deploy-1")) == 1
    assert [e.kind for e in broker.events() if e.grant_id == first.json()["grant_id"]] == ["issued", "replayed"]


def test_concurrent_identical_requests_share_one_grant(broker, issuers):
    token, barrier = issuers.worker(), threading.Barrier(12)

    def ask(_: int):  # noqa: ANN202
        barrier.wait()
        return _post(broker, token, "k-concurrent")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["grant_id"] for a in answers}) == 1
    live = [g for g in broker.service.ledger.grants(task="deploy-1") if g.status == "active"]
    assert len(live) == 1 and broker.service.ledger.verify().ok


def test_keys_are_per_caller_and_without_a_key_every_request_is_new(broker, issuers):
    one, two = _post(broker, issuers.worker("worker"), "shared"), _post(broker, issuers.worker("batch"), "shared")
    assert one.json()["grant_id"] != two.json()["grant_id"]
    plain = [_post(broker, issuers.worker(), None).json()["grant_id"] for _ in range(2)]
    assert plain[0] != plain[1]


def test_the_same_key_for_another_request_is_refused_and_recorded(broker, issuers):
    token = issuers.worker()
    first = _post(broker, token, "k-2")
    other = _post(broker, token, "k-2", scopes=["write"])
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert broker.service.ledger.get_grant(first.json()["grant_id"]).status == "active"
    assert [e.detail["code"] for e in broker.events("denied")] == ["idempotency_key_reused"]


def test_a_completed_grant_frees_its_key(broker, issuers):
    token = issuers.worker()
    first = _post(broker, token, "k-3").json()
    broker.post(f"/v1/grants/{first['grant_id']}/complete", headers={"Authorization": f"Bearer {token}"})
    assert _post(broker, token, "k-3").json()["grant_id"] != first["grant_id"]


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "tab\there", "é", ["a", "b"]], ids=["empty", "too-long", "control", "non-ascii", "twice"]
)
def test_a_malformed_key_is_refused_and_recorded(broker, issuers, key):
    answer = _post(broker, issuers.worker(), key)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
    assert broker.service.ledger.grants() == []
    assert [e.detail["code"] for e in broker.events("denied")] == ["invalid_request"]
