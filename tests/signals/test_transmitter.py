"""The transmitter through HTTP: metadata, streams owned by their receiver, SETs per RFC 8417 / CAEP."""

from __future__ import annotations

import json

import jwt
import pytest
from typer.testing import CliRunner

from broker.cli import app
from tests.signals.conftest import auth

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
POLL = "urn:ietf:rfc:8936"


def _poll_stream(broker, token: str, boundaries=("orders",), **extra) -> dict:  # noqa: ANN001
    body = {"delivery": {"method": POLL}, "boundaries": list(boundaries), **extra}
    answer = broker.post("/ssf/streams", json=body, headers=auth(token))
    assert answer.status_code == 201, answer.text
    return answer.json()


def _poll(broker, token: str, stream: dict, ack=()) -> dict:  # noqa: ANN001
    body = {"ack": list(ack), "returnImmediately": True}
    answer = broker.post(f"/ssf/poll/{stream['stream_id']}", json=body, headers=auth(token))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_metadata_names_the_endpoints(broker) -> None:
    meta = broker.get("/.well-known/ssf-configuration").json()
    assert meta["spec_version"] == "1_0" and meta["issuer"] == "http://broker.test"
    assert set(meta["delivery_methods_supported"]) == {"urn:ietf:rfc:8935", POLL}
    assert meta["configuration_endpoint"] == "http://broker.test/ssf/streams"


def test_a_completed_jwt_grant_becomes_one_session_revoked_set(broker, issuers) -> None:
    receiver = issuers.oidc.token(sub="receiver-a")
    stream = _poll_stream(broker, receiver, aud="https://rs.example/orders")
    grant = broker.grant(issuers.worker(), task="t-signals").json()
    assert broker.post(f"/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker())).status_code == 200
    sets = _poll(broker, receiver, stream)["sets"]
    assert len(sets) == 1
    (jti, token), = sets.items()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "secevent+jwt" and header["kid"]
    jwks = jwt.PyJWKSet.from_dict(broker.get("/.well-known/jwks.json").json())
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    # an independent check of RFC 8417 §2.2: iss, iat, jti, aud, events (one), no exp; SSF: sub_id, txn
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="https://rs.example/orders",
                        issuer="http://broker.test", options={"require": ["iss", "iat", "jti", "aud", "txn"]})
    assert "exp" not in claims and claims["jti"] == jti
    assert list(claims["events"]) == [SESSION_REVOKED]
    event = claims["events"][SESSION_REVOKED]
    assert event["initiating_entity"] == "user" and event["credential_exp"] == int(grant_exp(broker, grant))
    assert claims["sub_id"]["format"] == "complex"
    assert claims["sub_id"]["session"] == {"format": "jwt_id", "iss": "http://broker.test", "jti": grant["grant_id"]}
    assert claims["sub_id"]["group"] == {"format": "opaque", "id": "t-signals"}
    completed = broker.events("completed")[-1]
    assert claims["txn"] == completed.id
    assert _poll(broker, receiver, stream)["sets"].keys() == {jti}  # not acknowledged: again
    assert _poll(broker, receiver, stream, ack=[jti])["sets"] == {}


def grant_exp(broker, grant: dict) -> float:  # noqa: ANN001
    return broker.service.ledger.get_grant(grant["grant_id"]).expires_at


def test_only_the_streams_boundaries(broker, issuers) -> None:
    receiver = issuers.oidc.token(sub="receiver-a")
    stream = _poll_stream(broker, receiver, boundaries=["payments"])
    grant = broker.grant(issuers.worker(), boundary="orders").json()
    broker.post(f"/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker()))
    assert _poll(broker, receiver, stream)["sets"] == {}


def test_a_receiver_cannot_read_another_receivers_stream(broker, issuers) -> None:
    mine, other = issuers.oidc.token(sub="receiver-a"), issuers.oidc.token(sub="receiver-b")
    stream = _poll_stream(broker, mine)
    for answer in (
        broker.get("/ssf/streams", params={"stream_id": stream["stream_id"]}, headers=auth(other)),
        broker.post(f"/ssf/poll/{stream['stream_id']}", json={}, headers=auth(other)),
        broker.get("/ssf/status", params={"stream_id": stream["stream_id"]}, headers=auth(other)),
        broker.delete("/ssf/streams", params={"stream_id": stream["stream_id"]}, headers=auth(other)),
    ):
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    assert broker.get("/ssf/streams", headers=auth(other)).json() == []
    assert broker.get("/ssf/streams", headers=auth(mine)).json()[0]["stream_id"] == stream["stream_id"]


@pytest.mark.parametrize("who", ["worker", "operator"])
def test_streams_need_the_signal_receiver_role(broker, issuers, who) -> None:
    token = issuers.worker() if who == "worker" else issuers.operator()
    answer = broker.post("/ssf/streams", json={"delivery": {"method": POLL}, "boundaries": ["orders"]}, headers=auth(token))
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"
    assert broker.events("denied")[-1].detail["code"] == "forbidden"


@pytest.mark.parametrize("body", [
    {"delivery": {"method": POLL}, "boundaries": ["nope"]},
    {"delivery": {"method": POLL}, "boundaries": []},
    {"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "ftp://x/"}, "boundaries": ["orders"]},
    {"delivery": {"method": "urn:ietf:rfc:8935"}, "boundaries": ["orders"]},
    {"delivery": {"method": POLL}, "boundaries": ["orders"], "stream_id": "0" * 32},
])
def test_bad_streams_are_refused_with_a_problem(broker, issuers, body) -> None:
    answer = broker.post("/ssf/streams", json=body, headers=auth(issuers.oidc.token(sub="receiver-a")))
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"


def test_an_aud_belongs_to_one_stream(broker, issuers) -> None:
    _poll_stream(broker, issuers.oidc.token(sub="receiver-a"), aud="https://rs.example/")
    answer = broker.post("/ssf/streams", json={"delivery": {"method": POLL}, "boundaries": ["orders"],
                                               "aud": "https://rs.example/"}, headers=auth(issuers.oidc.token(sub="receiver-b")))
    assert answer.status_code == 400


def test_verification_round_trip_and_status(broker, issuers) -> None:
    receiver = issuers.oidc.token(sub="receiver-a")
    stream = _poll_stream(broker, receiver)
    assert broker.post("/ssf/verify", json={"stream_id": stream["stream_id"], "state": "abc123"},
                       headers=auth(receiver)).status_code == 204
    (token,) = _poll(broker, receiver, stream)["sets"].values()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["events"] == {VERIFICATION: {"state": "abc123"}} and claims["aud"] == stream["aud"]
    paused = broker.post("/ssf/status", json={"stream_id": stream["stream_id"], "status": "paused"}, headers=auth(receiver))
    assert paused.json()["status"] == "paused"
    assert broker.get("/ssf/status", params={"stream_id": stream["stream_id"]}, headers=auth(receiver)).json()["status"] == "paused"


def test_metrics_show_each_streams_lag(broker, issuers) -> None:
    receiver = issuers.oidc.token(sub="receiver-a")
    stream = _poll_stream(broker, receiver)
    grant = broker.grant(issuers.worker()).json()
    broker.post(f"/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker()))
    text = broker.get("/metrics").text
    assert f'broker_signal_stream_pending{{stream="{stream["stream_id"]}"}} 1.0' in text


def test_dev_mode_gives_dev_receiver_the_signal_receiver_role() -> None:
    from broker.config import BoundaryConfig
    from broker.dev import demo_policy
    from broker.policy.model import compile_policy

    demo = BoundaryConfig(name="demo", backend="jwt", scopes=["read", "write"], max_ttl=900)
    policy = compile_policy(demo_policy(["demo"]), source="dev", boundaries=[demo], attestors={"dev"})
    assert policy.roles(attestor="dev", subject="dev:receiver", claims={}) == frozenset({"signal_receiver"})
    assert "signal_receiver" not in policy.roles(attestor="dev", subject="dev:demo-workload", claims={})


def test_a_freeze_alone_is_one_session_revoked_set_naming_the_subject_or_boundary(broker, issuers) -> None:
    """No grant ends (none is held): the freeze is still told, to the streams it concerns."""
    orders = _poll_stream(broker, issuers.oidc.token(sub="receiver-a"), aud="https://rs.example/orders")
    payments = _poll_stream(broker, issuers.oidc.token(sub="receiver-b"), boundaries=["payments"])
    operator = auth(issuers.operator())
    worker = "system:serviceaccount:payments:worker"
    assert broker.post("/v1/freezes", json={"subject": worker, "reason": "incident"}, headers=operator).status_code == 201
    assert broker.post("/v1/freezes", json={"boundary": "orders", "reason": "incident"}, headers=operator).status_code == 201
    assert not broker.events("revoked") and not broker.events("completed")
    frozen = broker.events("frozen")
    jwks = jwt.PyJWKSet.from_dict(broker.get("/.well-known/jwks.json").json())

    def decoded(stream: dict, token: str) -> dict:
        key = next(k for k in jwks.keys if k.key_id == jwt.get_unverified_header(token)["kid"])
        assert jwt.get_unverified_header(token)["typ"] == "secevent+jwt"
        return jwt.decode(token, key.key, algorithms=["ES256"], audience=stream["aud"], issuer="http://broker.test",
                          options={"require": ["iss", "iat", "jti", "aud", "txn"]})  # fmt: skip

    seen = [decoded(orders, t) for t in _poll(broker, issuers.oidc.token(sub="receiver-a"), orders)["sets"].values()]
    by_txn = {c["txn"]: c for c in seen}
    assert set(by_txn) == {e.id for e in frozen}  # both freezes reach the orders stream
    subject_set, boundary_set = by_txn[frozen[0].id], by_txn[frozen[1].id]
    assert list(subject_set["events"]) == [SESSION_REVOKED] and "exp" not in subject_set
    assert subject_set["sub_id"] == {"format": "complex", "user": {"format": "opaque", "id": worker}}
    event = subject_set["events"][SESSION_REVOKED]
    assert event["initiating_entity"] == "admin" and event["event_timestamp"] == int(frozen[0].ts)
    assert "incident" not in str(subject_set)  # the operator's reason stays in the ledger
    assert boundary_set["sub_id"] == {"format": "complex", "application": {"format": "opaque", "id": "orders"}}
    assert boundary_set["events"][SESSION_REVOKED]["audience"] == "orders"  # the aud of its broker JWTs
    (only,) = _poll(broker, issuers.oidc.token(sub="receiver-b"), payments)["sets"].values()
    assert decoded(payments, only)["sub_id"]["user"]["id"] == worker  # not the orders freeze


def test_broker_signals_lists_each_stream_offline(broker, issuers, tmp_path) -> None:
    stream = _poll_stream(broker, issuers.oidc.token(sub="receiver-a"))
    grant = broker.grant(issuers.worker(), task="t-cli").json()
    assert broker.post(f"/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker())).status_code == 200
    run = CliRunner().invoke(app, ["signals", "--data-dir", str(tmp_path), "--json"])
    assert run.exit_code == 0, run.output
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["stream_id"], r["owner"], r["method"], r["pending"]) for r in rows] == [
        (stream["stream_id"], "receiver-a", POLL, 1)  # the completion's SET waits to be polled
    ]
