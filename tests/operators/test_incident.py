"""Incident response cannot be evaded: exact subjects are literal, and a freeze wins every race.

Through HTTP, as an operator would act: `POST /v1/revocations` with `subject` (always literal) or
`subject_glob` (a pattern, by name), `freeze: true`, while workloads keep asking for grants.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.operators.fleet import auth
from tests.support.broker import POLICY, BrokerClient, broker_settings, open_client

TEAM_RULE = {"name": "teams", "match": {"attestor": "oidc", "subject": "dev:team-*"},
             "allow": [{"boundary": "payments", "scopes": ["read"], "max_ttl": "5m"}]}  # fmt: skip
BYSTANDER = "dev:team-x"


@pytest.fixture
def teams(tmp_path, issuers):
    policy = {"rules": [*POLICY["rules"], TEAM_RULE]}
    with open_client(broker_settings(tmp_path, issuers, policy=policy)) as client:
        yield client


def _grant(broker: BrokerClient, token: str, task: str = "t"):
    return broker.grant(token, boundary="payments", scopes=["read"], task=task)


def _active(broker: BrokerClient, subject: str) -> list:
    return [g for g in broker.service.ledger.grants(subject=subject) if g.status in ("active", "revoke_pending")]


@pytest.mark.parametrize("attacker", ["dev:team-[x]", "dev:team-*", "dev:team-?", "dev:team-[!x]"],
                         ids=["brackets", "star", "question", "negated-class"])  # fmt: skip
def test_an_exact_subject_is_literal_in_revocation_freeze_and_inventory(teams, issuers, attacker):
    bad, good, operator = issuers.oidc.token(sub=attacker), issuers.oidc.token(sub=BYSTANDER), issuers.operator()
    held_bad, held_good = _grant(teams, bad).json(), _grant(teams, good).json()

    listed = teams.get("/v1/grants", params={"subject": attacker}, headers=auth(operator)).json()["items"]
    assert [g["grant_id"] for g in listed] == [held_bad["grant_id"]]
    body = {"subject": attacker, "reason": "INC-1", "freeze": True}
    answer = teams.post("/v1/revocations", json=body, headers=auth(operator))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["matched"], answer.json()["revoked"]) == (1, 1)

    assert teams.service.ledger.get_grant(held_bad["grant_id"]).status == "revoked"
    assert teams.service.ledger.get_grant(held_good["grant_id"]).status == "active"
    assert _grant(teams, bad, task="again").json()["code"] == "subject_frozen"
    assert _grant(teams, good, task="again").status_code == 201


def test_a_subject_glob_is_a_pattern_by_name(teams, issuers):
    for sub in ("dev:team-a", "dev:team-b", "dev:other"):
        assert _grant(teams, issuers.oidc.token(sub=sub)).status_code in (201, 403)
    body = {"subject_glob": "dev:team-*", "reason": "INC-2"}
    answer = teams.post("/v1/revocations", json=body, headers=auth(issuers.operator())).json()
    assert answer["matched"] == 2 and answer["selector"] == {"subject_glob": "dev:team-*", "freeze": False}
    report = teams.get("/v1/reports/blast-radius", params={"subject_glob": "dev:team-*", "since": "1h"},
                       headers=auth(issuers.operator())).json()  # fmt: skip
    assert report["totals"]["grants"] == 2 and report["totals"]["revoked"] == 2


def _issue_until_frozen(ask: Callable[[], Any], started: threading.Semaphore, stop: threading.Event) -> list[dict]:
    """Ask for grants until the broker says frozen; returns the credentials it was handed."""
    handed, refused = [], 0
    while not stop.is_set():
        answer = ask()
        if answer.status_code == 201:
            handed.append(answer.json())
            started.release()
        elif answer.json().get("code") == "subject_frozen":
            refused += 1
            if refused >= 3:
                return handed
        else:
            raise AssertionError(answer.text)
    return handed


def freeze_during_issuance(broker: BrokerClient, ask: Callable[[], Any], operator: str, subject: str) -> list[dict]:
    """16 threads issue for `subject` while the operator revokes and freezes it; the credentials handed out."""
    started, stop = threading.Semaphore(0), threading.Event()
    with ThreadPoolExecutor(16) as pool:
        workers = [pool.submit(_issue_until_frozen, ask, started, stop) for _ in range(16)]
        for _ in range(8):  # the freeze lands while all 16 threads are issuing
            assert started.acquire(timeout=60)
        body = {"subject": subject, "reason": "INC-3", "freeze": True}
        answer = broker.post("/v1/revocations", json=body, headers=auth(operator))
        assert answer.status_code in (200, 202), answer.text
        try:
            handed = [c for w in workers for c in w.result(timeout=120)]
        finally:
            stop.set()
    assert answer.json()["matched"] >= 1
    return handed


def settle(broker: BrokerClient, subject: str) -> None:
    """The outbox finishes what the issuing transactions refused (their credentials were minted)."""
    for _ in range(200):
        if not _active(broker, subject):
            return
        broker.service.outbox.retry_pending()
        threading.Event().wait(0.05)
    raise AssertionError(f"grants of {subject} still live: {_active(broker, subject)}")


def test_a_freeze_wins_every_race_with_jwt_issuance(teams, issuers):
    subject, operator = "dev:team-racer", issuers.operator()
    token = issuers.oidc.token(sub=subject)
    for _ in range(20):
        handed = freeze_during_issuance(teams, lambda: _grant(teams, token, task="busy"), operator, subject)
        settle(teams, subject)
        for credential in handed:
            form = {"token": credential["credential"]["token"]}
            inactive = teams.post("/oauth/introspect", data=form, headers=auth(token)).json()
            assert inactive == {"active": False}
        lift = {"subject": subject, "reason": "next round"}
        assert teams.post("/v1/freezes/lift", json=lift, headers=auth(operator)).status_code == 200
    refused = [e for e in teams.events("denied") if e.detail.get("code") == "subject_frozen" and e.grant_id]
    assert all(teams.service.ledger.get_grant(e.grant_id).status == "revoked" for e in refused)
    assert teams.service.ledger.verify().ok
