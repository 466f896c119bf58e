"""POST /v1/grants prepares on the event loop when nothing on the way waits, else on an issuing thread,
from the start (broker/blocking.py): the same answers and the same ledger either way."""

from __future__ import annotations

import threading

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from broker.blocking import WouldBlock, acquire, may_block, on_loop
from tests.support.broker import broker_settings, open_client

NO_LIMITS = {"limits": {"max_active_grants": None, "issue_rate": None}}


@pytest.fixture
def unlimited(tmp_path, issuers):  # noqa: ANN201
    """A broker whose boundaries have no abuse limits (their check reads the ledger on every issuance)."""
    with open_client(broker_settings(tmp_path, issuers, **NO_LIMITS)) as client:
        yield client


def _where_prepared(client, monkeypatch) -> list[str]:  # noqa: ANN001
    """The thread of every call of the prepare use case (an aborted attempt on the loop included)."""
    threads: list[str] = []
    service = client.service
    prepare = service.prepare

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        threads.append(threading.current_thread().name)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(service, "prepare", recording)
    return threads


def test_a_jwt_grant_with_a_verified_identity_is_prepared_on_the_event_loop(unlimited, issuers, monkeypatch):
    token = issuers.worker()
    assert unlimited.grant(token, task="first").status_code == 201  # verifies in full (the JWKS may be fetched)
    threads = _where_prepared(unlimited, monkeypatch)
    answers = [unlimited.grant(token, task=f"t-{n}") for n in range(3)]
    assert [a.status_code for a in answers] == [201] * 3
    assert len(threads) == 3 and not any(t.startswith("broker-issue") for t in threads)
    issued = unlimited.events("issued")
    assert sorted(e.grant_id for e in issued if e.task.startswith("t-")) == sorted(a.json()["grant_id"] for a in answers)


def test_a_refusal_found_on_the_loop_is_recorded_once_from_a_thread(unlimited, issuers, monkeypatch):
    token = issuers.worker()
    assert unlimited.grant(token, task="warm").status_code == 201
    threads = _where_prepared(unlimited, monkeypatch)
    denied = unlimited.grant(token, scopes=["admin"], task="too-much")  # the policy allows read and write
    assert denied.status_code == 403 and denied.json()["code"] == "policy_denied"
    assert threads[0] != threads[-1] and threads[-1].startswith("broker-issue")  # recording it would wait
    assert [e.detail["code"] for e in unlimited.events("denied") if e.task == "too-much"] == ["policy_denied"]


def test_with_abuse_limits_on_a_jwt_grant_is_still_prepared_on_the_event_loop(broker, issuers, monkeypatch):
    """`broker` has the default limits on (tests/support/broker.py): they are counted at commit, not before."""
    token = issuers.worker()
    assert broker.grant(token, task="first").status_code == 201
    threads = _where_prepared(broker, monkeypatch)
    assert [broker.grant(token, task=f"l-{n}").status_code for n in range(3)] == [201] * 3
    assert len(threads) == 3 and not any(t.startswith("broker-issue") for t in threads)


def test_an_idempotency_key_reads_the_ledger_so_it_is_prepared_on_a_thread_from_the_start(unlimited, issuers, monkeypatch):
    token = issuers.worker()
    body = {"task": "t", "boundary": "orders", "scopes": ["read"], "ttl": 60}
    assert unlimited.post("/v1/grants", json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 201
    threads = _where_prepared(unlimited, monkeypatch)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
    answer = unlimited.post("/v1/grants", json={**body, "task": "u"}, headers=headers)
    assert answer.status_code == 201
    assert len(threads) == 1 and threads[0].startswith("broker-issue")  # never tried on the loop


def test_may_block_raises_only_on_the_loop_and_passes_every_except_exception():
    may_block()  # a thread may wait
    with pytest.raises(WouldBlock), on_loop():
        try:
            may_block()
        except Exception:  # noqa: BLE001 (what a use case's failure handling catches)
            pytest.fail("WouldBlock was caught as an error")
    may_block()  # the mark ends with its block


def test_a_held_lock_is_waited_for_on_a_thread_and_refused_on_the_loop():
    lock = threading.Lock()
    lock.acquire()
    with pytest.raises(WouldBlock), on_loop():
        acquire(lock)
    threading.Timer(0.05, lock.release).start()
    acquire(lock)  # waits for the holder
    lock.release()


def test_every_route_is_matched_directly_the_two_per_task_calls_first(unlimited):
    """No router is matched through (FastAPI >= 0.160 matches an included router's routes twice a request)."""
    routes = unlimited.app.router.routes
    assert all(isinstance(r, Route | APIRoute) for r in routes), [type(r).__name__ for r in routes]
    ours = [r for r in routes if r.path not in ("/openapi.json", "/docs", "/docs/oauth2-redirect")]  # FastAPI's
    assert [(r.path, r.name) for r in ours[:2]] == [("/v1/grants", "create_grant"),
                                                     ("/v1/grants/{grant_id}/complete", "complete_grant")]  # fmt: skip
    paths = {r.path for r in routes}
    assert {"/healthz", "/readyz", "/oauth/introspect", "/.well-known/jwks.json", "/v1/log/checkpoint"} <= paths
    assert unlimited.get("/healthz").json() == {"status": "ok"}
