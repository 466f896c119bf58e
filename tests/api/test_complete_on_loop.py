"""POST /v1/grants/{id}/complete: the ledger writer ends an owner's broker JWT in its next batch,
awaited on the event loop; what it declines goes to `GrantService.complete` on an issuing thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from broker.ledger.issuing import Declined, Ended, EndGrant, Write
from tests.operators.fleet import auth
from tests.support.broker import BrokerClient, broker_settings, open_client
from tests.support.postgres import ledger_database

WORKER = "system:serviceaccount:payments:worker"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledgers(request, tmp_path, issuers) -> Iterator[BrokerClient]:
    with ledger_database(request.param) as extra, open_client(broker_settings(tmp_path, issuers, **extra)) as client:
        yield client


def _where_completed(client: BrokerClient, monkeypatch) -> list[str]:  # noqa: ANN001
    """The thread of every call of the full `complete` use case."""
    threads: list[str] = []
    complete = client.service.complete

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        threads.append(threading.current_thread().name)
        return complete(*args, **kwargs)

    monkeypatch.setattr(client.service, "complete", recording)
    return threads


def test_the_owner_completing_a_broker_jwt_is_ended_by_the_ledger_writer(ledgers, issuers, monkeypatch):
    body = ledgers.grant(issuers.worker(), ttl=120).json()
    threads = _where_completed(ledgers, monkeypatch)
    done = ledgers.post(f"/v1/grants/{body['grant_id']}/complete",
                        headers={**auth(issuers.worker()), "X-Request-Id": "finish-1"})  # fmt: skip
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    assert done.json()["grant_id"] == body["grant_id"] and done.headers["x-request-id"] == "finish-1"
    assert threads == []  # never the full use case
    grant = ledgers.service.ledger.get_grant(body["grant_id"])
    assert (grant.status, grant.end_status, grant.end_actor, grant.end_reason) == (
        "completed", "completed", WORKER, "completed by owner")  # fmt: skip
    (event,) = [e for e in ledgers.events("completed") if e.grant_id == body["grant_id"]]
    assert event.actor == WORKER and event.detail["reason"] == "completed by owner"
    assert event.detail["request_id"] == "finish-1" and event.detail["backend"] == "jwt"
    resource_server = auth(issuers.worker("resource"))
    token = body["credential"]["token"]
    assert ledgers.post("/oauth/introspect", data={"token": token}, headers=resource_server).json() == {"active": False}
    assert ledgers.service.ledger.verify().ok


@pytest.mark.parametrize("case", ["another subject's", "completed already", "unknown"])
def test_what_the_writer_declines_takes_the_full_use_case_on_a_thread(broker, issuers, monkeypatch, case):
    grant_id = broker.grant(issuers.worker(), ttl=120).json()["grant_id"]
    caller = issuers.worker("intruder") if case == "another subject's" else issuers.worker()
    if case == "completed already":
        assert broker.post(f"/v1/grants/{grant_id}/complete", headers=auth(caller)).status_code == 200
    threads = _where_completed(broker, monkeypatch)
    answer = broker.post(f"/v1/grants/{'g_unknown' if case == 'unknown' else grant_id}/complete", headers=auth(caller))
    assert len(threads) == 1 and threads[0].startswith("broker-issue")
    if case == "completed already":
        assert answer.status_code == 200 and answer.json()["status"] == "completed"
        assert len(broker.events("completed")) == 1
    else:
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
        assert broker.service.ledger.get_grant(grant_id).status == "active"
        assert [e.detail["code"] for e in broker.events("denied")] == ["not_found"]


def test_a_failed_identity_is_refused_and_recorded_from_a_thread(broker, issuers, monkeypatch):
    grant_id = broker.grant(issuers.worker(), ttl=120).json()["grant_id"]
    answer = broker.post(f"/v1/grants/{grant_id}/complete", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_identity"
    assert broker.service.ledger.get_grant(grant_id).status == "active"
    assert [e.detail["action"] for e in broker.events("denied")] == ["POST /v1/grants/{grant_id}/complete"]


def test_one_batch_completing_a_grant_twice_ends_it_once(broker, issuers):
    grant_id = broker.grant(issuers.worker(), ttl=120).json()["grant_id"]
    service = broker.service
    end = EndGrant(grant_id, WORKER, "k8s", frozenset(service.boundaries), frozenset({"jwt"}))
    other = EndGrant(grant_id, "system:serviceaccount:payments:intruder", "k8s", end.boundaries, end.local_backends)
    vault_only = EndGrant(grant_id, WORKER, "k8s", end.boundaries, frozenset({"vault_token"}))
    applied = service.ledger.apply_writes([Write([], end=e) for e in (other, vault_only, end, end)])
    assert [type(a.outcome) for a in applied] == [Declined, Declined, Ended, Declined]
    assert [len(a.rows) for a in applied] == [0, 0, 1, 0] and applied[2].rows[0]["kind"] == "completed"
    assert service.ledger.get_grant(grant_id).status == "completed"
    assert service.ledger.verify().ok
