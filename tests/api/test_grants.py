"""The spine through HTTP: attested identity → policy → one-boundary grant → ledger → completion."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.support.broker import broker_settings, open_client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def verify_with_jwks(broker, token: str, audience: str) -> dict:
    """What a resource server does: fetch the JWKS and verify offline."""
    jwks = broker.get("/.well-known/jwks.json").json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    return jwt.decode(token, key, algorithms=["ES256", "EdDSA"], audience=audience, issuer="http://broker.test")


PRESETS = [
    ("kubernetes", lambda i: i.k8s.k8s_token("payments", "worker"), "orders", "system:serviceaccount:payments:worker"),
    ("github_actions", lambda i: i.gha.github_token("acme/api"), "orders", "repo:acme/api:ref:refs/heads/main"),
    (
        "spiffe_jwt",
        lambda i: i.spiffe.spiffe_token("spiffe://acme.internal/ns/payments/sa/worker"),
        "orders",
        "spiffe://acme.internal/ns/payments/sa/worker",
    ),
    ("oidc", lambda i: i.oidc.token(sub="agent-7"), "payments", "agent-7"),
]


@pytest.mark.parametrize(("preset", "make_token", "boundary", "subject"), PRESETS, ids=[p[0] for p in PRESETS])
def test_each_preset_gets_a_verifiable_credential(broker, issuers, preset, make_token, boundary, subject):
    response = broker.grant(make_token(issuers), boundary=boundary, scopes=["read"], ttl=60, task=f"task-{preset}")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["subject"], body["boundary"], body["scopes"], body["status"]) == (subject, boundary, ["read"], "active")
    claims = verify_with_jwks(broker, body["credential"]["token"], audience=boundary)
    assert claims["sub"] == subject and claims["scope"] == "read" and claims["task"] == f"task-{preset}"
    assert claims["jti"] == body["grant_id"] and claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(body["credential"]["token"])["typ"] == "at+jwt"
    issued = broker.events("issued")
    assert [e.grant_id for e in issued] == [body["grant_id"]]
    assert body["credential"]["token"] not in str(issued[0].detail)


REFUSALS = [
    ("no-token", None, {"scopes": ["read"]}, 401, "invalid_identity"),
    ("garbage-token", "not.a.jwt", {"scopes": ["read"]}, 401, "invalid_identity"),
    ("unknown-subject", "other-ns", {"scopes": ["read"]}, 403, "policy_denied"),
    ("scope-not-allowed", "worker", {"scopes": ["admin"]}, 403, "policy_denied"),
    ("two-boundaries-list", "worker", {"boundary": ["orders", "payments"], "scopes": ["read"]}, 400, "multi_boundary"),
    ("empty-boundary-list", "worker", {"boundary": [], "scopes": ["read"]}, 400, "invalid_request"),
    ("qualified-other-scope", "worker", {"scopes": ["read", "payments:write"]}, 400, "multi_boundary"),
    ("unknown-scope", "worker", {"scopes": ["delete"]}, 400, "unknown_scope"),
    ("unknown-boundary", "worker", {"boundary": "nope", "scopes": ["read"]}, 400, "unknown_boundary"),
    ("ttl-over-policy-cap", "worker", {"scopes": ["read"], "ttl": 601}, 400, "ttl_exceeds_cap"),
    ("ttl-over-boundary-cap", "worker", {"scopes": ["read"], "ttl": 901}, 400, "ttl_exceeds_cap"),
    ("ttl-negative", "worker", {"scopes": ["read"], "ttl": -5}, 422, "validation_error"),
    ("no-scopes", "worker", {"scopes": []}, 422, "validation_error"),
    ("extra-field", "worker", {"scopes": ["read"], "admin": True}, 422, "validation_error"),
    ("bad-task", "worker", {"scopes": ["read"], "task": "../etc"}, 422, "validation_error"),
]


@pytest.mark.parametrize(("who", "body", "status", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_have_a_stable_code_record_denied_and_issue_nothing(broker, issuers, who, body, status, code):
    token = {None: None, "not.a.jwt": "not.a.jwt", "worker": issuers.worker(), "other-ns": None}.get(who)
    if who == "other-ns":
        token = issuers.k8s.k8s_token("billing", "worker")
    payload = {"task": body.pop("task", "t-1"), "boundary": body.pop("boundary", "orders"), **body}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = broker.post("/v1/grants", json=payload, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code and problem["status"] == status and "Traceback" not in response.text
    if token:
        assert token not in response.text
    assert broker.service.ledger.grants() == []
    denied = broker.events("denied")
    assert len(denied) == 1 and denied[0].detail["code"] == code
    assert broker.events("issued") == []


def test_ttl_max_takes_the_cap_and_no_ttl_takes_the_default(broker, issuers):
    capped = broker.grant(issuers.worker(), boundary="payments", ttl="max").json()
    default = broker.grant(issuers.worker(), boundary="orders").json()
    assert capped["credential"]["token"] and _lifetime(capped) == 300  # policy cap 5m < boundary cap 10m
    assert _lifetime(default) == 300


def _lifetime(body: dict) -> int:
    claims = jwt.decode(body["credential"]["token"], options={"verify_signature": False})  # test reads its own token
    return claims["exp"] - claims["iat"]


def test_completion_makes_introspection_inactive_and_is_idempotent(broker, issuers):
    body = broker.grant(issuers.worker(), scopes=["read", "write"], ttl=120).json()
    token = body["credential"]["token"]
    resource_server = auth(issuers.worker("resource"))
    assert broker.post("/oauth/introspect", data={"token": token}, headers=resource_server).json()["active"] is True
    first = broker.post(f"/v1/grants/{body['grant_id']}/complete", headers=auth(issuers.worker()))
    again = broker.post(f"/v1/grants/{body['grant_id']}/complete", headers=auth(issuers.worker()))
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "completed"
    assert broker.post("/oauth/introspect", data={"token": token}, headers=resource_server).json() == {"active": False}
    assert len(broker.events("completed")) == 1


def test_completing_a_broker_jwt_is_one_transaction(broker, issuers, monkeypatch):
    """Nothing to call at a backend: the intent and the end commit together, never a pending row in between."""
    grant_id = broker.grant(issuers.worker(), ttl=120).json()["grant_id"]
    ledger = broker.service.ledger
    monkeypatch.setattr(ledger, "finish_revoke", lambda *a, **k: pytest.fail("a second transaction for a JWT"))
    done = broker.post(f"/v1/grants/{grant_id}/complete", headers=auth(issuers.worker()))
    assert done.status_code == 200 and done.json()["status"] == "completed"
    (event,) = [e for e in broker.events("completed") if e.grant_id == grant_id]
    assert event.actor == "system:serviceaccount:payments:worker" and event.detail["reason"] == "completed by owner"


def test_another_subject_cannot_read_or_complete(broker, issuers):
    body = broker.grant(issuers.worker(), ttl=120).json()
    thief = auth(issuers.worker("intruder"))
    assert broker.get(f"/v1/grants/{body['grant_id']}", headers=thief).status_code == 404
    assert broker.post(f"/v1/grants/{body['grant_id']}/complete", headers=thief).status_code == 404
    assert broker.post("/v1/tasks/t-1/complete", headers=thief).status_code == 404
    assert broker.get(f"/v1/grants/{body['grant_id']}", headers=auth(issuers.worker())).json()["status"] == "active"
    assert broker.get(f"/v1/grants/{body['grant_id']}", headers=auth(issuers.operator())).status_code == 200
    assert [e.detail["code"] for e in broker.events("denied")] == ["not_found", "task_not_found"]


def test_task_completion_ends_every_grant_of_the_task(broker, issuers):
    ids = [broker.grant(issuers.worker(), boundary=b, task="reindex").json()["grant_id"] for b in ("orders", "payments")]
    other = broker.grant(issuers.worker(), task="other").json()["grant_id"]
    response = broker.post("/v1/tasks/reindex/complete", headers=auth(issuers.worker()))
    assert response.status_code == 200 and response.json()["revoked"] == 2
    statuses = {g.id: g.status for g in broker.service.ledger.grants()}
    assert [statuses[i] for i in ids] == ["completed", "completed"] and statuses[other] == "active"


def test_oauth_token_exchange_issues_a_one_boundary_jwt(broker, issuers):
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": issuers.worker(),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": "orders",
        "scope": "read",
        "requested_ttl": "90",
    }
    response = broker.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt" and body["expires_in"] == 90
    assert verify_with_jwks(broker, body["access_token"], "orders")["scope"] == "read"
    two = broker.post("/oauth/token", data={**form, "audience": "payments"})
    assert two.status_code == 400 and two.json()["code"] == "multi_boundary" and two.json()["error"]


def test_oauth_revoke_by_owner_deactivates(broker, issuers):
    token = broker.grant(issuers.worker(), ttl=120).json()["credential"]["token"]
    assert broker.post("/oauth/revoke", data={"token": token}, headers=auth(issuers.worker("x"))).status_code == 200
    introspect = {"headers": auth(issuers.worker()), "data": {"token": token}}
    assert broker.post("/oauth/introspect", **introspect).json()["active"] is True
    assert broker.post("/oauth/revoke", data={"token": token}, headers=auth(issuers.worker())).status_code == 200
    assert broker.post("/oauth/introspect", **introspect).json()["active"] is False


def test_key_rotation_keeps_old_tokens_verifiable(broker, issuers):
    old = broker.grant(issuers.worker(), ttl=300).json()["credential"]["token"]
    broker.service.keys.rotate()
    new = broker.grant(issuers.worker(), ttl=300).json()["credential"]["token"]
    assert jwt.get_unverified_header(old)["kid"] != jwt.get_unverified_header(new)["kid"]
    assert len(broker.get("/.well-known/jwks.json").json()["keys"]) == 2
    for token in (old, new):
        assert verify_with_jwks(broker, token, "orders")["sub"] == "system:serviceaccount:payments:worker"


class StepClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_expired_grants_are_reaped(tmp_path, issuers):
    clock = StepClock(time.time())
    # the clock is the broker's from the start, and the background reaper stays idle (its first pass
    # is an hour away), so this test's own pass is the only one: it alone decides what expires
    settings = broker_settings(tmp_path, issuers, worker_interval=3600)
    with open_client(settings, clock=clock) as broker:
        body = broker.grant(issuers.worker(), ttl=60).json()
        clock.now += 59
        assert broker.service.outbox.expire_due() == 0
        clock.now += 1
        assert broker.service.outbox.expire_due() == 1
        assert broker.service.ledger.get_grant(body["grant_id"]).status == "expired"
        assert [e.grant_id for e in broker.events("expired")] == [body["grant_id"]]


def test_metadata_and_health(broker):
    meta = broker.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == "http://broker.test" and meta["jwks_uri"].endswith("/.well-known/jwks.json")
    assert broker.get("/healthz").json() == {"status": "ok"}
    ready = broker.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["ledger"] == "ok"


def test_a_jwt_that_fails_its_self_check_is_never_handed_out(broker, issuers):
    """The prepared signing key is checked against its own public key on every mint."""
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric import ec

    keys = broker.service.keys
    kid = keys.active.kid
    keys._loaded[kid] = dataclasses.replace(keys._loaded[kid], private=ec.generate_private_key(ec.SECP256R1()))
    response = broker.grant(issuers.worker(), task="t-selfcheck")
    assert response.status_code == 503 and response.json()["code"] == "backend_unavailable"
    assert "token" not in response.text
    assert broker.events("denied")[-1].detail["code"] == "backend_unavailable"
    assert not broker.events("issued")
