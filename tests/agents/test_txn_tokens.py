"""Transaction tokens (draft-ietf-oauth-transaction-tokens) through `POST /oauth/token`: one test (or more)
per MUST of the draft that falls on a TTS, each named after it; the token is checked with PyJWT against
the published JWKS, never with the broker's own verifier."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import jwt
import pytest
from broker_client.errors import InvalidToken
from broker_client.verify import Verifier

from tests.agents.delegation import (
    ACCESS_TYPE,
    ORCHESTRATOR,
    TRUST_DOMAIN,
    TXN_TYPE,
    boundaries,
    claims,
    delegation,
    policy,
    txn_request,
)
from tests.operators.fleet import auth
from tests.support.broker import BROKER_ISSUER, BrokerClient, broker_settings, open_client
from tests.support.wait import wait_until


@pytest.fixture
def tts(tmp_path, issuers) -> Iterator[BrokerClient]:
    settings = broker_settings(tmp_path, issuers, boundaries=boundaries(), policy=policy(),
                               txn_token_trust_domain=TRUST_DOMAIN)  # fmt: skip
    with open_client(settings) as client:
        yield client


def me(issuers) -> str:
    return issuers.k8s.k8s_token("agents", "orchestrator")


def access_token(tts, issuers, scopes=("read", "write"), ttl=None, task="order-77") -> dict:
    body = {"ttl": ttl} if ttl else {}
    answer = tts.grant(me(issuers), "orders", list(scopes), task=task, **body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def ask(tts, issuers, form: dict, caller: str | None = None):
    headers = auth(caller or me(issuers)) if caller != "" else {}
    return tts.post("/oauth/token", data=form, headers=headers)


def independent(tts, token: str, audience: str = TRUST_DOMAIN) -> dict:
    """PyJWT with the key from the published JWKS: the draft's validation, not the broker's code."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in tts.get("/.well-known/jwks.json").json()["keys"] if k["kid"] == kid]
    key = jwt.PyJWK(jwk)
    return jwt.decode(token, key.key, algorithms=[jwk["alg"]], audience=audience, options={"require": ["exp", "iat"]})


def issued(tts, issuers, **extra) -> tuple[dict, dict]:
    parent = access_token(tts, issuers)
    answer = ask(tts, issuers, txn_request(parent["credential"]["token"], **extra))
    assert answer.status_code == 200, answer.text
    return parent, answer.json()


# --- the token (Txn-Token Format) --------------------------------------------------------------------


def test_the_typ_header_must_be_txntoken_jwt_with_a_kid(tts, issuers):
    _, body = issued(tts, issuers)
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "txntoken+jwt" and header["kid"]


def test_required_claims_iat_aud_exp_txn_sub_scope_req_wl(tts, issuers):
    before = int(time.time())
    parent, body = issued(tts, issuers, scope="read")
    token = independent(tts, body["access_token"])
    assert {"iat", "aud", "exp", "txn", "sub", "scope", "req_wl"} <= set(token)
    assert token["aud"] == TRUST_DOMAIN  # MUST identify the trust domain
    assert before <= token["iat"] <= int(time.time())  # MUST be the time of issuance
    assert token["sub"] == claims(parent["credential"]["token"])["sub"] == ORCHESTRATOR  # the principal, unique here
    assert token["scope"] == "read" and token["req_wl"] == ORCHESTRATOR


def test_the_lifetime_must_be_short_five_minutes_at_most(tts, issuers):
    _, body = issued(tts, issuers, requested_ttl="max")
    token = claims(body["access_token"])
    assert token["exp"] - token["iat"] <= 300 and body["expires_in"] <= 300
    parent = access_token(tts, issuers)
    longer = ask(tts, issuers, txn_request(parent["credential"]["token"], requested_ttl="301"))
    assert longer.status_code == 400 and longer.json()["code"] == "ttl_exceeds_cap"


def test_txn_is_a_unique_id_per_transaction(tts, issuers):
    parent = access_token(tts, issuers)
    seen = {claims(ask(tts, issuers, txn_request(parent["credential"]["token"])).json()["access_token"])["txn"]
            for _ in range(3)}  # fmt: skip
    assert len(seen) == 3


def test_tctx_and_rctx_come_from_request_details_and_request_context(tts, issuers):
    details, context = {"action": "BUY", "ticker": "MSFT", "quantity": "100"}, {"req_ip": "69.151.72.123"}
    _, body = issued(tts, issuers, request_details=json.dumps(details), request_context=json.dumps(context))
    token = claims(body["access_token"])
    assert token["tctx"] == details and token["rctx"] == context
    parent = access_token(tts, issuers)
    bad = ask(tts, issuers, txn_request(parent["credential"]["token"], request_details="[1]"))
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"


def test_the_txn_token_must_not_contain_the_access_token_presented(tts, issuers):
    parent, body = issued(tts, issuers)
    presented = parent["credential"]["token"]
    payload = base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "==").decode()
    assert presented not in payload and presented.split(".")[2] not in payload


def test_it_is_not_accepted_outside_its_trust_domain_nor_as_an_access_token(tts, issuers):
    _, body = issued(tts, issuers)
    token = body["access_token"]
    with pytest.raises(jwt.InvalidAudienceError):
        independent(tts, token, audience="other.example")
    with pytest.raises(InvalidToken):  # the SDK's resource-server verifier wants `at+jwt`, whatever the audience
        Verifier(BROKER_ISSUER, TRUST_DOMAIN, jwks_url="unused")._claims(token)
    refused = tts.grant(token, "orders", ["read"])  # nor does it authenticate a workload
    assert refused.status_code == 401
    parent_of_delegation = ask(tts, issuers, delegation(token, issuers.k8s.k8s_token("agents", "summarizer")))
    assert parent_of_delegation.status_code == 400 and parent_of_delegation.json()["code"] == "invalid_subject_token"


# --- the request (Txn-Token Request) -----------------------------------------------------------------


def _without(form: dict, name: str) -> dict:
    return {k: v for k, v in form.items() if k != name}


BAD_REQUESTS = [
    (
        "grant-type-must-be-token-exchange",
        lambda f: {**f, "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"},
        "invalid_request",
    ),
    ("audience-must-be-the-trust-domain", lambda f: {**f, "audience": "other.example"}, "invalid_target"),
    ("audience-is-required", lambda f: _without(f, "audience"), "invalid_request"),
    ("scope-is-required", lambda f: _without(f, "scope"), "invalid_request"),
    ("subject-token-type-is-required", lambda f: _without(f, "subject_token_type"), "invalid_request"),
    (
        "never-a-refresh-token",
        lambda f: {**f, "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        "invalid_request",
    ),
    ("subject-token-is-required", lambda f: _without(f, "subject_token"), "invalid_request"),
    ("no-actor-token", lambda f: {**f, "actor_token": "x", "actor_token_type": ACCESS_TYPE}, "invalid_request"),
]


@pytest.mark.parametrize(("change", "error"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_malformed_txn_token_requests_are_refused_with_rfc6749_errors_and_recorded(tts, issuers, change, error):
    form = change(txn_request(access_token(tts, issuers)["credential"]["token"]))
    answer = ask(tts, issuers, form)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error and answer.headers["content-type"] == "application/problem+json"
    assert tts.events("denied")[-1].detail["action"] == "txn_token"
    assert [g.backend for g in tts.service.ledger.grants()] == ["jwt"]


def test_the_requesting_workload_must_authenticate(tts, issuers):
    form = txn_request(access_token(tts, issuers)["credential"]["token"])
    assert ask(tts, issuers, form, caller="").status_code in (400, 401)


def test_the_requesting_workload_must_be_authorized(tts, issuers):
    form = txn_request(access_token(tts, issuers)["credential"]["token"])
    stranger = ask(tts, issuers, form, caller=issuers.k8s.k8s_token("agents", "outsider"))
    assert stranger.status_code == 403 and stranger.json()["code"] == "forbidden"
    assert stranger.json()["error"] == "unauthorized_client"
    gateway = issuers.worker("resource")  # the resource_server role: a gateway that received the access token
    answer = ask(tts, issuers, form, caller=gateway)
    assert answer.status_code == 200, answer.text
    token = claims(answer.json()["access_token"])
    assert token["req_wl"] == "system:serviceaccount:payments:resource" and token["sub"] == ORCHESTRATOR


def test_the_subject_token_must_be_validated_including_its_signature(tts, issuers):
    token = access_token(tts, issuers)["credential"]["token"]
    head, payload, signature = token.split(".")
    tampered = ".".join((head, payload, signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")))
    answer = ask(tts, issuers, txn_request(tampered))
    assert answer.status_code == 400 and answer.json()["code"] == "scope_exceeds_subject"


UNKNOWN_SCOPE = [
    ("an-identity-token", lambda issuers: (issuers.k8s.k8s_token("agents", "orchestrator"), ACCESS_TYPE)),
    (
        "a-self-signed-jwt",
        lambda issuers: (issuers.oidc.token(sub="agent-7", aud="https://tts"), "urn:ietf:params:oauth:token-type:jwt"),
    ),
    ("unsigned-json", lambda issuers: (json.dumps({"sub": "x", "scope": "read"}), ACCESS_TYPE)),
]


@pytest.mark.parametrize("subject", [u[1] for u in UNKNOWN_SCOPE], ids=[u[0] for u in UNKNOWN_SCOPE])
def test_a_subject_token_of_unknown_scope_must_be_refused_never_taken_as_unconstrained(tts, issuers, subject):
    token, kind = subject(issuers)
    answer = ask(tts, issuers, txn_request(token, subject_type=kind))
    assert answer.status_code == 400, answer.text
    assert (answer.json()["code"], answer.json()["error"]) == ("scope_exceeds_subject", "invalid_scope")
    assert tts.service.ledger.grants() == []


@pytest.mark.parametrize("scope", ["read write admin", "admin"], ids=["wider", "other"])
def test_the_scope_must_not_exceed_the_subject_tokens(tts, issuers, scope):
    token = access_token(tts, issuers, scopes=("read", "write"))["credential"]["token"]
    answer = ask(tts, issuers, txn_request(token, scope=scope))
    assert answer.status_code == 400 and answer.json()["code"] == "scope_exceeds_subject"
    equal = ask(tts, issuers, txn_request(token, scope="read write"))
    assert equal.status_code == 200 and claims(equal.json()["access_token"])["scope"] == "read write"


def _wait_past(exp: int) -> None:
    """Until the clock is past `exp` (a condition, not a fixed sleep)."""
    wait_until(lambda: time.time() > exp + 1, timeout=10, what="the subject token's expiry")


def test_no_txn_token_when_the_subject_token_has_expired(tts, issuers):
    parent = access_token(tts, issuers, ttl=1)
    _wait_past(claims(parent["credential"]["token"])["exp"])
    answer = ask(tts, issuers, txn_request(parent["credential"]["token"]))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_no_txn_token_when_the_subject_tokens_grant_has_ended(tts, issuers):
    parent = access_token(tts, issuers)
    tts.post("/v1/tasks/order-77/complete", headers=auth(me(issuers)))
    answer = ask(tts, issuers, txn_request(parent["credential"]["token"]))
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_subject_token"


def test_txn_tokens_are_off_until_a_trust_domain_is_configured(tmp_path, issuers):
    with open_client(broker_settings(tmp_path, issuers, boundaries=boundaries(), policy=policy())) as plain:
        parent = access_token(plain, issuers)
        answer = ask(plain, issuers, txn_request(parent["credential"]["token"]))
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


# --- the response (Txn-Token Response) ---------------------------------------------------------------


def test_the_response_is_n_a_txn_token_type_and_never_a_refresh_token(tts, issuers):
    _, body = issued(tts, issuers)
    assert body["token_type"] == "N_A" and body["issued_token_type"] == TXN_TYPE
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "txntoken+jwt"  # access_token is the Txn-Token
    assert "refresh_token" not in body


# --- replacement --------------------------------------------------------------------------------------


def _replace(tts, issuers, token: str, caller: str | None = None, **extra):
    return ask(tts, issuers, txn_request(token, subject_type=TXN_TYPE, **extra), caller=caller)


def test_a_replacement_keeps_txn_sub_aud_and_tctx_and_the_call_chain(tts, issuers):
    _, body = issued(tts, issuers, request_details=json.dumps({"order": "77"}))
    first = claims(body["access_token"])
    gateway = issuers.worker("resource")
    answer = _replace(tts, issuers, body["access_token"], caller=gateway, scope="read")
    assert answer.status_code == 200, answer.text
    second = independent(tts, answer.json()["access_token"])
    assert {k: second[k] for k in ("txn", "sub", "aud", "tctx")} == {k: first[k] for k in ("txn", "sub", "aud", "tctx")}
    assert second["req_wl"] == "system:serviceaccount:payments:resource"
    assert second["rctx"]["req_chain"] == [ORCHESTRATOR]  # who requested the token it replaces
    replaced = tts.service.ledger.get_grant(first["jti"])
    assert tts.service.ledger.get_grant(second["jti"]).parent_grant_id == replaced.id


def test_a_replacement_must_not_expand_the_scope_nor_change_tctx(tts, issuers):
    _, body = issued(tts, issuers, scope="read", request_details=json.dumps({"order": "77"}))
    wider = _replace(tts, issuers, body["access_token"], scope="read write")
    assert wider.status_code == 400 and wider.json()["code"] == "scope_exceeds_subject"
    other = _replace(tts, issuers, body["access_token"], request_details=json.dumps({"order": "78"}))
    assert other.status_code == 400 and other.json()["error"] == "invalid_request"


def test_no_replacement_of_an_expired_txn_token(tts, issuers):
    _, body = issued(tts, issuers, requested_ttl="1")
    _wait_past(claims(body["access_token"])["exp"])
    answer = _replace(tts, issuers, body["access_token"])
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_a_replacement_keeps_aud_so_a_token_of_another_trust_domain_is_refused(tmp_path, issuers):
    """The same broker (same keys, same ledger) after its trust domain was renamed: the old tokens stay there."""

    def settings(domain: str):
        return broker_settings(
            tmp_path, issuers, boundaries=boundaries(), policy=policy(), txn_token_trust_domain=domain
        )

    with open_client(settings("old.example")) as before:
        parent = access_token(before, issuers)
        form = {**txn_request(parent["credential"]["token"]), "audience": "old.example"}
        old = ask(before, issuers, form).json()["access_token"]
    with open_client(settings(TRUST_DOMAIN)) as after:
        answer = _replace(after, issuers, old)
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_subject_token"


# --- the ledger ---------------------------------------------------------------------------------------


def test_a_txn_token_the_holder_asks_for_is_part_of_its_task(tts, issuers):
    parent, body = issued(tts, issuers)
    grant = tts.service.ledger.get_grant(body["grant_id"])
    assert (grant.backend, grant.parent_grant_id, grant.subject) == ("txn_token", parent["grant_id"], ORCHESTRATOR)
    assert grant.task == "order-77" and grant.status == "active"
    assert tts.post("/v1/tasks/order-77/complete", headers=auth(me(issuers))).json()["matched"] == 2


def test_a_txn_token_is_recorded_like_every_issuance_and_ends_with_its_subject_tokens_task(tts, issuers):
    parent = access_token(tts, issuers)
    gateway = issuers.worker("resource")
    body = ask(tts, issuers, txn_request(parent["credential"]["token"]), caller=gateway).json()
    token = body["access_token"]
    grant = tts.service.ledger.get_grant(body["grant_id"])
    assert (grant.backend, grant.parent_grant_id, grant.task) == ("txn_token", parent["grant_id"], "txn-token")
    [event] = [e for e in tts.events("issued") if e.grant_id == grant.id]
    assert event.detail["txn"] == claims(token)["txn"] and event.detail["parent_grant_id"] == parent["grant_id"]
    dumped = json.dumps([e.detail for e in tts.events()])
    assert token not in dumped and token.split(".")[2] not in dumped  # never logged verbatim
    seen = tts.post("/oauth/introspect", data={"token": token}, headers=auth(gateway)).json()
    assert seen["active"] is True and seen["txn"] == claims(token)["txn"]
    assert tts.post("/v1/tasks/order-77/complete", headers=auth(me(issuers))).status_code == 200
    assert tts.service.ledger.get_grant(grant.id).status == "revoked"
    assert tts.post("/oauth/introspect", data={"token": token}, headers=auth(gateway)).json() == {"active": False}


# --- through the SDK: `Task.transaction_token` / `Client.transaction_token` ----------------------------


@pytest.fixture
def live_tts(tmp_path, issuers) -> Iterator[str]:
    from tests.sdk.live import LiveBroker

    broker = LiveBroker.start(tmp_path, issuers, boundaries=boundaries(), policy=policy(),
                              txn_token_trust_domain=TRUST_DOMAIN)  # fmt: skip
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.mark.parametrize("dpop", [False, True], ids=["bearer", "dpop"])
def test_the_sdk_asks_for_a_txn_token_from_the_tasks_grant_and_its_replacement(live_tts, issuers, dpop):
    from broker_client import BrokerError, Client

    with Client(live_tts, me(issuers), dpop=dpop) as client:
        with client.task("order-77") as task:
            parent = task.grant("orders", ["read", "write"])
            txn = task.transaction_token(TRUST_DOMAIN, ["read"], details={"action": "BUY"}, context={"req_ip": "10.0.0.7"})
            assert txn.token not in repr(txn) and txn.grant.backend == "txn_token"
            header, seen = jwt.get_unverified_header(txn.token), _published(live_tts, txn.token)
            assert header["typ"] == "txntoken+jwt" and seen["aud"] == TRUST_DOMAIN and seen["sub"] == ORCHESTRATOR
            assert seen["scope"] == "read" and seen["tctx"] == {"action": "BUY"} and seen["rctx"]["req_ip"] == "10.0.0.7"
            assert seen["exp"] - seen["iat"] <= 300 and parent.token not in txn.token

            replaced = client.transaction_token(txn, TRUST_DOMAIN)  # a txn-token Credential: its replacement
            again = _published(live_tts, replaced.token)
            assert again["txn"] == seen["txn"] and again["tctx"] == seen["tctx"] and again["rctx"]["req_chain"]
        with pytest.raises(BrokerError):  # the task completed: its grant ended, and with it the transaction
            client.transaction_token(txn, TRUST_DOMAIN)


def _published(url: str, token: str) -> dict:
    """PyJWT against the broker's published JWKS, as a downstream service would check it."""
    import httpx

    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in httpx.get(f"{url}/.well-known/jwks.json").json()["keys"] if k["kid"] == kid]
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience=TRUST_DOMAIN)
