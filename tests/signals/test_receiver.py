"""A FastAPI resource server under uvicorn verifying broker JWTs offline, with the SDK's signal receiver."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import jwt
import pytest
from broker_client import InvalidSet, SignalReceiver, Verifier

from broker.app import build, create_app
from broker.dev_openbao import free_port
from tests.signals.conftest import auth, signals_settings
from tests.signals.serve import resource_server, serving


class Seen:
    """The app's view of delivered events, with a condition to wait on (no sleeps)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.cond = threading.Condition()

    def __call__(self, claims: dict) -> None:
        with self.cond:
            self.events.append(claims)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.events) >= count, timeout)


class Broker:
    """A broker served on loopback; `restart()` builds a new process-worth of components on the same data dir."""

    def __init__(self, tmp_path: Path, issuers, port: int) -> None:  # noqa: ANN001
        self.settings = signals_settings(tmp_path, issuers, issuer=f"http://127.0.0.1:{port}")
        self.port, self._ctx = port, None

    def start(self) -> str:
        self.components = build(self.settings)
        self._ctx = serving(create_app(self.settings, self.components), self.port)
        return self._ctx.__enter__()

    def stop(self) -> None:
        self._ctx.__exit__(None, None, None)
        self.components.service.ledger.close()


@pytest.fixture
def broker(tmp_path, issuers):  # noqa: ANN001, ANN201
    served = Broker(tmp_path, issuers, free_port())
    served.url = served.start()
    yield served
    served.stop()


def _grant(url: str, token: str, task: str = "t-1") -> dict:
    answer = httpx.post(f"{url}/v1/grants", json={"task": task, "boundary": "orders", "scopes": ["read"]}, headers=auth(token))
    assert answer.status_code == 201, answer.text
    return answer.json()


def _receiver(broker, issuers, rs_port: int, seen: Seen, **kw) -> SignalReceiver:  # noqa: ANN001
    return SignalReceiver(broker.url, identity=lambda: issuers.oidc.token(sub="receiver-a"), boundaries=["orders"],
                          endpoint_url=f"http://127.0.0.1:{rs_port}/ssf/events", on_event=seen, **kw)


def _refused_within(url: str, token: str, seconds: float) -> float:
    """How soon the resource server refuses `token`, asked every 10 ms: the broker, its SET delivery and
    the resource server share this process's GIL with the asking loop, which must not take it all."""
    started = time.monotonic()
    with httpx.Client() as http:
        while time.monotonic() - started < seconds:
            if http.get(f"{url}/orders", headers=auth(token)).status_code == 401:
                return time.monotonic() - started
            time.sleep(0.01)
    raise AssertionError(f"token still accepted after {seconds} s")


@pytest.mark.parametrize("how", ["complete", "revoke_subject", "freeze_boundary"])
def test_an_ended_grant_is_refused_within_a_second(broker, issuers, how) -> None:
    seen, rs_port = Seen(), free_port()
    receiver = _receiver(broker, issuers, rs_port, seen)
    receiver.register()
    verifier = Verifier(broker.url, "orders", jwks_url=f"{broker.url}/.well-known/jwks.json")
    with serving(resource_server(receiver, verifier), rs_port) as rs:
        grant = _grant(broker.url, issuers.worker())
        token = grant["credential"]["token"]
        assert httpx.get(f"{rs}/orders", headers=auth(token)).status_code == 200
        if how == "complete":
            done = httpx.post(f"{broker.url}/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker()))
        elif how == "revoke_subject":
            done = httpx.post(f"{broker.url}/v1/revocations", headers=auth(issuers.operator()),
                              json={"subject": "system:serviceaccount:payments:worker", "reason": "incident"})
        else:
            done = httpx.post(f"{broker.url}/v1/revocations", headers=auth(issuers.operator()),
                              json={"boundary": "orders", "reason": "incident", "freeze": True})
        assert done.status_code in (200, 201, 202), done.text
        assert _refused_within(rs, token, 1.0) < 1.0
        assert receiver.is_revoked(grant["grant_id"])


def test_a_receiver_down_gets_everything_in_order_once_across_a_broker_restart(broker, issuers) -> None:
    seen, rs_port = Seen(), free_port()
    receiver = _receiver(broker, issuers, rs_port, seen)
    receiver.register()
    grants = [_grant(broker.url, issuers.worker(), task=f"t-{i}") for i in range(100)]
    for index, grant in enumerate(grants):  # the receiver is down the whole time
        if index == 50:
            broker.stop()
            broker.start()  # a restart in the middle: the outbox is in the database
        answer = httpx.post(f"{broker.url}/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker()))
        assert answer.status_code == 200
    lag = broker.components.signals.outbox.lag()[0]
    assert lag["pending"] == 100 and lag["failed"] >= 1 and lag["last_error"].startswith("unreachable")
    with serving(resource_server(receiver, Verifier(broker.url, "orders")), rs_port):
        broker.components.signals.delivery.wake()
        assert seen.wait_for(100, timeout=30), len(seen.events)
    jtis = [e["sub_id"]["session"]["jti"] for e in seen.events]
    assert jtis == [g["grant_id"] for g in grants]  # in order, none lost, none twice
    kinds = [e.kind for e in broker.components.service.ledger.events(limit=100_000)]
    assert kinds.count("signal_failed") <= 2  # once when it started failing (per process), not per retry
    assert "signal_sent" in kinds


def test_bad_signature_and_other_audience_are_refused(broker, issuers) -> None:
    seen = Seen()
    receiver = _receiver(broker, issuers, free_port(), seen)
    stream = receiver.register()
    claims = {"iss": broker.url, "jti": "x" * 32, "iat": int(time.time()), "aud": stream["aud"], "txn": "t",
              "sub_id": {"format": "opaque", "id": "s"}, "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}}
    keys = broker.components.service.keys
    forged = jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"typ": "secevent+jwt", "kid": keys.active.kid})
    other_aud = keys.sign({**claims, "aud": "https://someone-else"}, typ="secevent+jwt")
    not_a_set = keys.sign(claims)  # an at+jwt: a credential is never taken for an event
    for token, err in ((forged, "invalid_request"), (other_aud, "invalid_audience"), (not_a_set, "invalid_request")):
        with pytest.raises(InvalidSet) as refused:
            receiver.receive(token)
        assert refused.value.err == err
    status, body = receiver.push_response(other_aud.encode(), "application/secevent+jwt")
    assert status == 400 and b"invalid_audience" in body
    assert receiver.receive(keys.sign(claims, typ="secevent+jwt")) and seen.events


def test_poll_mode_behind_a_firewall_gets_the_same_events(broker, issuers) -> None:
    seen = Seen()
    receiver = SignalReceiver(broker.url, identity=lambda: issuers.oidc.token(sub="receiver-b"), boundaries=["orders"],
                              on_event=seen)
    receiver.register()
    receiver.start_polling()
    try:
        grants = [_grant(broker.url, issuers.worker(), task=f"p-{i}") for i in range(5)]
        for grant in grants:
            httpx.post(f"{broker.url}/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker()))
        assert seen.wait_for(5, timeout=10)
        assert [e["sub_id"]["session"]["jti"] for e in seen.events] == [g["grant_id"] for g in grants]
        assert receiver.is_revoked(grants[0]["grant_id"])
        receiver.request_verification("round-trip-1")
        assert seen.wait_for(6, timeout=10) and "round-trip-1" in receiver.verified_states
    finally:
        receiver.stop()


@pytest.mark.parametrize("target", ["subject", "boundary"])
def test_a_freeze_alone_refuses_the_frozen_tokens_at_the_receiver_within_a_second(broker, issuers, target) -> None:
    seen, rs_port = Seen(), free_port()
    receiver = _receiver(broker, issuers, rs_port, seen)
    receiver.register()
    verifier = Verifier(broker.url, "orders", jwks_url=f"{broker.url}/.well-known/jwks.json")
    with serving(resource_server(receiver, verifier), rs_port) as rs:
        grant = _grant(broker.url, issuers.worker())
        token = grant["credential"]["token"]
        assert httpx.get(f"{rs}/orders", headers=auth(token)).status_code == 200
        value = "system:serviceaccount:payments:worker" if target == "subject" else "orders"
        done = httpx.post(f"{broker.url}/v1/freezes", json={target: value, "reason": "incident"},
                          headers=auth(issuers.operator()))  # fmt: skip
        assert done.status_code == 201, done.text
        assert _refused_within(rs, token, 1.0) < 1.0
    assert broker.components.service.ledger.get_grant(grant["grant_id"]).status == "active"  # no grant ended
    claims = jwt.decode(token, options={"verify_signature": False})
    (event,) = seen.events
    frozen_at = next(iter(event["events"].values()))["event_timestamp"]
    assert receiver.is_frozen(claims) and not receiver.is_revoked(grant["grant_id"])
    assert not receiver.is_frozen({**claims, "iat": frozen_at + 1})  # a token issued once the freeze is lifted
    other = {**claims, "sub": "system:serviceaccount:payments:other"} if target == "subject" else {**claims, "aud": "payments"}
    assert not receiver.is_frozen(other)
