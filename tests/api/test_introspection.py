"""RFC 7662 §4: introspection answers with claims only to the token's owner and to resource servers.

A resource server is a subject whose policy role is `resource_server`; any other attested caller
(another workload, even an operator) learns `{"active": false}` and the attempt is recorded.
"""

from __future__ import annotations

import threading

import pytest

from broker_client import DpopKey
from tests.support.broker import BROKER_ISSUER


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _introspect(broker, caller: str, token: str) -> dict:  # noqa: ANN001
    answer = broker.post("/oauth/introspect", data={"token": token}, headers=auth(caller))
    assert answer.status_code == 200
    return answer.json()


def test_owner_and_resource_server_get_the_claims(broker, issuers) -> None:
    body = broker.grant(issuers.worker(), task="rs-task", ttl=120).json()
    token = body["credential"]["token"]
    for caller in (issuers.worker(), issuers.worker("resource")):
        claims = _introspect(broker, caller, token)
        assert claims["active"] is True and claims["sub"] == "system:serviceaccount:payments:worker"
        assert (claims["task"], claims["scope"], claims["jti"]) == ("rs-task", "read", body["grant_id"])
    assert broker.events("denied") == []


@pytest.mark.parametrize("who", ["other-workload", "operator"])
def test_anyone_else_learns_nothing_and_is_recorded(broker, issuers, who) -> None:
    body = broker.grant(issuers.worker(), task="private-task", ttl=120).json()
    caller = issuers.worker("intruder") if who == "other-workload" else issuers.operator()
    assert _introspect(broker, caller, body["credential"]["token"]) == {"active": False}
    [denied] = broker.events("denied")
    assert (denied.grant_id, denied.detail["code"], denied.detail["action"]) == (
        body["grant_id"], "forbidden", "POST /oauth/introspect")
    assert denied.subject != "system:serviceaccount:payments:worker"
    # nothing changed: the owner still sees an active grant
    assert _introspect(broker, issuers.worker(), body["credential"]["token"])["active"] is True


def test_a_resource_server_gets_cnf_of_a_bound_token_without_a_proof_of_its_own(broker, issuers) -> None:
    key, token = DpopKey(), issuers.worker()
    proof = key.proof("POST", BROKER_ISSUER + "/v1/grants", token)
    body = broker.post("/v1/grants", json={"task": "bound", "boundary": "orders", "scopes": ["read"], "ttl": 60},
                       headers={**auth(token), "DPoP": proof}).json()  # fmt: skip
    claims = _introspect(broker, issuers.worker("resource"), body["credential"]["token"])
    assert claims["active"] is True and claims["token_type"] == "DPoP" and claims["cnf"] == {"jkt": key.jkt}


def test_the_caller_is_verified_on_the_event_loop_and_the_rest_takes_one_issuing_thread(broker, issuers, monkeypatch):
    """Each hop to a thread waits its turn for the GIL on a busy server: introspection makes one."""
    from broker.grants import introspection

    token = broker.grant(issuers.worker(), ttl=120).json()["credential"]["token"]
    caller = issuers.worker("resource")
    assert _introspect(broker, caller, token)["active"] is True  # the caller's token verified in full once
    threads: dict[str, list[str]] = {"authenticate": [], "introspect": []}
    for name, owner in (("authenticate", broker.service), ("introspect", introspection)):
        original = getattr(owner, name)

        def recording(*args, _name=name, _original=original, **kwargs):  # noqa: ANN002, ANN003, ANN202
            threads[_name].append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recording)
    assert _introspect(broker, caller, token)["active"] is True
    assert len(threads["authenticate"]) == 1 and not threads["authenticate"][0].startswith(("broker-issue", "AnyIO"))
    assert len(threads["introspect"]) == 1 and threads["introspect"][0].startswith("broker-issue")
