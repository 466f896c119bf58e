"""Abuse limits through HTTP: per-subject active-grant and issuance-rate limits (429 + Retry-After,
recorded, nothing minted), and refusals of junk identity tokens that neither grow the chain nor
store one byte of the sender's text.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings
from broker.fingerprint import fingerprint
from tests.support.broker import BOUNDARIES, POLICY, BrokerClient, Issuers, broker_settings, open_client
from tests.support.issuer import compact
from tests.support.postgres import fresh_database

WINDOW = Settings.model_fields["unverified_denial_window"].default
PER_WINDOW = Settings.model_fields["unverified_denials_per_window"].default


class Clock:
    """The service's clock, moved by hand: windows and expiries never depend on how fast the machine is.

    It starts 20 s into the refusal window `start`, a few minutes before the clock is made (not before
    the module was imported: a long run would push it far back): every time it shows stays in the past,
    so the broker's own JWTs (iat checked against real time when minted) verify.
    """

    def __init__(self) -> None:
        self.start = int(time.time()) // WINDOW * WINDOW - 3 * WINDOW
        self.now = self.start + 20.0

    def __call__(self) -> float:
        return self.now


def limited(**limits: Any) -> list[dict[str, Any]]:
    """The test boundaries, with `limits` on `orders` only (payments keeps the top-level ones)."""
    return [{**b, "limits": limits} if b["name"] == "orders" else b for b in BOUNDARIES]


def broker_with(tmp_path: Path, issuers: Issuers, **overrides: Any) -> BrokerClient:
    return open_client(broker_settings(tmp_path, issuers, **overrides))


def quiet_broker(tmp_path: Path, issuers: Issuers, clock: Clock, **overrides: Any) -> BrokerClient:
    """A broker whose lifespan is not started (no reaper, no workers) on a hand clock."""
    client = broker_with(tmp_path, issuers, **overrides)
    client.service.clock = clock
    return client


@pytest.fixture
def quiet(tmp_path: Path, issuers: Issuers) -> Iterator[tuple[BrokerClient, Clock]]:
    """A quiet broker with the production aggregation defaults and a rate limit of 3 on `orders`."""
    clock = Clock()
    client = quiet_broker(tmp_path, issuers, clock, boundaries=limited(issue_rate=3, max_active_grants=None),
                          unverified_denials_per_window=PER_WINDOW)
    yield client, clock
    client.close()


def denied(client: BrokerClient, code: str) -> list:
    return [e for e in client.events("denied") if e.detail.get("code") == code]


# --- issuance limits ----------------------------------------------------------------------------


def test_one_identity_token_firing_40_grants_gets_429_after_the_rate_limit(tmp_path, issuers) -> None:
    with broker_with(tmp_path, issuers, boundaries=limited(issue_rate=10, max_active_grants=None)) as broker:
        token = issuers.worker()
        answers = [broker.grant(token, task=f"burst-{n}") for n in range(40)]
        assert [a.status_code for a in answers] == [201] * 10 + [429] * 30
        for answer in answers[10:]:
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "rate_limited"
            assert 1 <= int(answer.headers["Retry-After"]) <= 60
            assert answer.json()["retry_after"] == int(answer.headers["Retry-After"])
        assert len(broker.service.ledger.grants()) == 10  # nothing minted for a refusal
        refusals = denied(broker, "rate_limited")
        assert len(refusals) == 30
        assert {(e.subject, e.boundary, e.detail["action"]) for e in refusals} == {
            ("system:serviceaccount:payments:worker", "orders", "issue")
        }
        # per subject and per boundary: another subject, and this one elsewhere, are not held back
        assert broker.grant(issuers.worker("batch")).status_code == 201
        assert broker.grant(token, "payments").status_code == 201


def test_a_concurrent_burst_gets_exactly_the_rate_limit(tmp_path, issuers) -> None:
    """Counted inside the issuing transaction: requests in flight together cannot pass the limit together."""
    threads, barrier = 8, threading.Barrier(8)
    with broker_with(tmp_path, issuers, boundaries=limited(issue_rate=10, max_active_grants=None)) as broker:
        token = issuers.worker()

        def ask(n: int) -> int:
            if n < threads:
                barrier.wait()
            return broker.grant(token, task=f"b-{n}").status_code

        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(ask, range(40)))
        assert codes.count(201) == 10 and codes.count(429) == 30
        assert len(broker.service.ledger.grants()) == 10  # a refused JWT existed only in its request: no row
        refusals = denied(broker, "rate_limited")
        assert len(refusals) == 30 and {e.grant_id for e in refusals} == {None}
        assert {tuple(sorted(e.detail)) for e in refusals} == {
            ("action", "code", "identity_fp", "policy_revision", "reason", "request_id", "rule", "scopes")
        }
        assert broker.service.ledger.verify().ok


def test_concurrent_bursts_on_two_replicas_get_exactly_the_limit_between_them(tmp_path, issuers) -> None:
    with fresh_database("broker_limits_race") as url:
        shared = {"database_url": url, "key_encryption_key": secrets.token_hex(32),
                  "boundaries": limited(max_active_grants=12, issue_rate=None)}  # fmt: skip
        one = broker_with(tmp_path / "a", issuers, **shared)
        two = broker_with(tmp_path / "b", issuers, **shared)
        token, barrier = issuers.worker(), threading.Barrier(8)

        def ask(n: int) -> int:
            if n < 8:
                barrier.wait()
            return (one, two)[n % 2].grant(token, task=f"race-{n}", ttl=120).status_code

        try:
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(ask, range(40)))
            assert codes.count(201) == 12 and codes.count(429) == 28
            assert len([g for g in one.service.ledger.grants() if g.status == "active"]) == 12
            assert one.service.ledger.verify().ok
        finally:
            for broker in (one, two):
                broker.close()
                broker.service.ledger.engine.dispose()


def test_the_rate_window_slides_with_the_clock(quiet, issuers) -> None:
    broker, clock = quiet
    token, t0 = issuers.worker(), clock.now
    for n in range(3):
        assert broker.grant(token, task=f"w-{n}").status_code == 201
        clock.now += 10
    refused = broker.grant(token, task="w-3")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"  # the first leaves at t0 + 60
    clock.now = t0 + 60.5
    assert broker.grant(token, task="w-4").status_code == 201
    assert broker.grant(token, task="w-5").status_code == 429


def test_active_grant_limit_answers_429_until_a_grant_ends(tmp_path, issuers) -> None:
    with broker_with(tmp_path, issuers, boundaries=limited(max_active_grants=3, issue_rate=None)) as broker:
        token = issuers.worker()
        held = [broker.grant(token, task=f"a-{n}", ttl=120).json()["grant_id"] for n in range(3)]
        refused = broker.grant(token, task="a-3", ttl=120)
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_active_grants"
        assert 1 <= int(refused.headers["Retry-After"]) <= 120  # when the first held grant expires
        assert len(denied(broker, "too_many_active_grants")) == 1
        done = broker.post(f"/v1/grants/{held[0]}/complete", headers={"Authorization": f"Bearer {token}"})
        assert done.status_code == 200, done.text
        assert broker.grant(token, task="a-4", ttl=120).status_code == 201


def test_limits_and_refusal_counts_hold_across_replicas(tmp_path, issuers) -> None:
    """Two brokers on one PostgreSQL count the same grants and refusals: the database's numbers, not a process's."""
    clock = Clock()
    with fresh_database("broker_limits") as url:
        shared = {"database_url": url, "key_encryption_key": secrets.token_hex(32),
                  "boundaries": limited(max_active_grants=3, issue_rate=None)}  # fmt: skip
        one, two = (quiet_broker(tmp_path / name, issuers, clock, **shared) for name in ("a", "b"))
        token = issuers.worker()
        assert [r.grant(token, task=f"r-{n}").status_code for n, r in enumerate([one, two, one])] == [201] * 3
        assert two.grant(token, task="r-3").status_code == 429
        assert one.grant(token, task="r-4").status_code == 429
        # one junk token refused by both in one window: one chained row between them, the count of all three
        bad = junk("replicas")
        assert [r.grant(bad).status_code for r in (one, two, one)] == [401] * 3
        assert len(chained_refusals(two)) == 1
        assert [w.count for w in one.service.ledger.limits.denial_windows()] == [3]
        for broker in (one, two):
            broker.close()
            broker.service.ledger.engine.dispose()


def test_a_boundary_overrides_only_the_limits_it_names(tmp_path, issuers) -> None:
    settings = broker_settings(tmp_path, issuers, limits={"max_active_grants": 7, "issue_rate": 9},
                               boundaries=limited(issue_rate=2))
    orders, payments = (settings.limits_for(settings.boundary(name)) for name in ("orders", "payments"))
    assert (orders.max_active_grants, orders.issue_rate) == (7, 2)
    assert (payments.max_active_grants, payments.issue_rate) == (7, 9)


def test_the_documented_defaults_are_on() -> None:
    limits = Settings().limits
    assert (limits.max_active_grants, limits.issue_rate, limits.issue_window) == (50, 60, 60)
    assert (WINDOW, PER_WINDOW) == (60, 20)


# --- refusals of unverified identity tokens -----------------------------------------------------


def junk(marker: str) -> str:
    """A well-formed token from an issuer nobody trusts, full of the sender's text."""
    header = {"alg": "RS256", "typ": "JWT", "kid": f"kid-{marker}"}
    payload = {"iss": f"https://{marker}.evil.example/\u202e{marker}", "sub": f"sub-{marker}", "aud": marker}
    return compact(header, payload, b"sig")


def chained_refusals(client: BrokerClient) -> list:
    return [e for e in client.events("denied") if e.detail.get("code") == "invalid_identity"]


def test_100_junk_tokens_write_few_rows(quiet) -> None:
    broker, _ = quiet
    tokens = [junk(f"m{n:03d}") for n in range(100)]
    for token in tokens:
        assert broker.grant(token).status_code == 401
    rows = chained_refusals(broker)
    assert len(rows) == PER_WINDOW + 1  # one per fingerprint up to the cap, then one shared overflow row
    assert [r.detail["identity_fp"] for r in rows[:PER_WINDOW]] == [fingerprint(t) for t in tokens[:PER_WINDOW]]
    assert rows[-1].detail["identity_fp"] == "overflow"
    counts = {w.token_fp: w.count for w in broker.service.ledger.limits.denial_windows()}
    assert sum(counts.values()) == 100 and counts["overflow"] == 100 - PER_WINDOW


def test_one_junk_token_repeated_is_one_row_a_window_with_its_count(quiet) -> None:
    broker, clock = quiet
    token = junk("again")
    for _ in range(50):
        answer = broker.post("/oauth/introspect", data={"token": "x"}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401
    clock.now += WINDOW
    assert broker.grant(token).status_code == 401
    rows = chained_refusals(broker)
    assert [(r.detail["identity_fp"], r.detail["window_start"]) for r in rows] == [
        (fingerprint(token), clock.start), (fingerprint(token), clock.start + WINDOW)
    ]
    assert rows[0].detail == {"code": "invalid_identity", "action": "POST /oauth/introspect",
                              "identity_fp": fingerprint(token), "window_start": clock.start, "window": WINDOW,
                              "policy_revision": broker.service.policy.current.digest, "rule": None}  # fmt: skip
    assert [w.count for w in broker.service.ledger.limits.denial_windows()] == [50, 1]


def test_no_text_of_an_unverified_token_is_stored(tmp_path, issuers) -> None:
    marker = "zq" + secrets.token_hex(8)
    tokens = [
        junk(marker),  # untrusted issuer: its URL is the sender's text
        compact({"alg": "RS256", "kid": f"k-{marker}"}, issuers.k8s.claims(sub=marker), b"forged"),  # unknown kid
        compact({"alg": "HS256", "typ": f"t-{marker}"}, issuers.k8s.claims(sub=marker), b"x"),  # typ, alg
        issuers.k8s.token(sub=f"system:serviceaccount:{marker}:x", aud=marker),  # signed, for another audience
    ]
    with broker_with(tmp_path, issuers) as broker:
        for token in tokens:
            assert broker.grant(token, task="t").status_code == 401
            assert broker.post("/oauth/token", data=_exchange(token)).status_code in (400, 401)
        assert len(chained_refusals(broker)) == len(tokens)  # the second refusal of each only counts
        broker.service.ledger.engine.dispose()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("broker.db*"))
    assert stored and marker.encode() not in stored  # every table, every row, the WAL too
    assert _dump(tmp_path / "broker.db").count(marker) == 0


def _exchange(token: str) -> dict[str, str]:
    return {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": "orders",
        "scope": "read",
    }


def _dump(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


def test_the_sdk_raises_rate_limited_with_retry_after(tmp_path, issuers) -> None:
    """Over HTTP on loopback: the SDK maps the 429 to its own exception and reads the wait from the problem."""
    from broker_client import Client
    from broker_client.errors import RateLimited, TooManyActiveGrants

    from tests.sdk.live import LiveBroker

    live = LiveBroker.start(tmp_path, issuers, boundaries=limited(max_active_grants=1, issue_rate=None), policy=POLICY)
    try:
        with Client(live.url, issuers.worker()) as client:
            client.grant("held", "orders", ["read"], ttl=120)
            with pytest.raises(TooManyActiveGrants) as caught:
                client.grant("one-more", "orders", ["read"], ttl=120)
        assert isinstance(caught.value, RateLimited) and caught.value.status == 429
        assert caught.value.code == "too_many_active_grants" and 1 <= caught.value.retry_after <= 120
    finally:
        live.stop()


def test_one_issuing_batch_counts_its_own_grants_and_the_ones_it_ends(tmp_path, issuers) -> None:
    """`apply_writes` (one transaction): a grant earlier in the batch counts against a later one, and a
    completion earlier in it frees its slot."""
    from broker.grants import GrantRequest
    from broker.ledger.issuing import Committed, Ended, EndGrant, Refused, Write

    with broker_with(tmp_path, issuers, boundaries=limited(max_active_grants=2, issue_rate=None)) as broker:
        service, token = broker.service, issuers.worker()
        held = broker.grant(token, task="held", ttl=120).json()["grant_id"]
        identity = service.authenticate(token, action="test")
        prepared = [service.prepare(identity, GrantRequest(task=f"p-{n}", boundary="orders", scopes=("read",), ttl=60))
                    for n in range(3)]  # fmt: skip
        limits = service.limits.at("orders")
        first, second, third = (Write([p.event], p.row, guard=True, limits=limits, only_here=True) for p in prepared)
        end = Write([], end=EndGrant(held, identity.subject, "k8s", frozenset(service.boundaries), frozenset({"jwt"})))
        applied = service.ledger.apply_writes([first, end, second, third])
        assert [type(a.outcome) for a in applied] == [Committed, Ended, Committed, Refused]
        refused = applied[3].outcome
        assert (refused.code, refused.kept) == ("too_many_active_grants", False) and 1 <= refused.retry_after <= 60
        assert [row["kind"] for row in applied[3].rows] == ["denied"] and applied[3].rows[0]["grant_id"] is None
        assert {g.task for g in service.ledger.grants() if g.status == "active"} == {"p-0", "p-1"}
        assert service.ledger.get_grant(prepared[2].grant.id) is None
        assert service.ledger.verify().ok


def test_completing_an_expired_grant_in_the_batch_frees_no_slot(tmp_path, issuers) -> None:
    """A grant past its expiry but not yet reaped was never counted: ending it must not make room."""
    from broker.grants import GrantRequest
    from broker.ledger.issuing import Committed, Ended, EndGrant, Refused, Write

    with broker_with(tmp_path, issuers, boundaries=limited(max_active_grants=1, issue_rate=None)) as broker:
        service, token = broker.service, issuers.worker()
        identity = service.authenticate(token, action="test")
        ask = lambda task: service.prepare(identity, GrantRequest(task=task, boundary="orders", scopes=("read",), ttl=60))  # noqa: E731
        stale = ask("stale")
        now = time.time()
        row = {**stale.row, "issued_at": now - 120, "expires_at": now - 60}  # active in its row, expired in fact
        assert isinstance(service.ledger.apply_writes([Write([stale.event], row)])[0].outcome, Committed)
        assert broker.grant(token, task="held", ttl=120).status_code == 201  # the one slot
        new = ask("new")
        end = Write([], end=EndGrant(stale.grant.id, identity.subject, "k8s", frozenset(service.boundaries),
                                     frozenset({"jwt"})))  # fmt: skip
        applied = service.ledger.apply_writes([end, Write([new.event], new.row, guard=True,
                                                          limits=service.limits.at("orders"), only_here=True)])
        assert [type(a.outcome) for a in applied] == [Ended, Refused]
        assert applied[1].outcome.code == "too_many_active_grants"
