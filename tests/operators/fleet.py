"""A fleet of live grants for operator tests: several subjects, two boundaries, real tokens."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from tests.support.broker import BrokerClient, Issuers

SERVICE_ACCOUNTS = ("worker", "batch", "cron")
BOUNDARY_NAMES = ("orders", "payments")


def subject_of(sa: str) -> str:
    return f"system:serviceaccount:payments:{sa}"


@dataclass(frozen=True)
class Held:
    """One issued grant as the test knows it, with the credential it handed out."""

    grant_id: str
    subject: str
    boundary: str
    task: str
    token: str


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def issue_fleet(broker: BrokerClient, issuers: Issuers, count: int, accounts=SERVICE_ACCOUNTS) -> list[Held]:  # noqa: ANN001
    """`count` grants round-robin over subjects and boundaries, through `POST /v1/grants`."""
    tokens = {sa: issuers.worker(sa) for sa in accounts}
    shape = itertools.cycle(itertools.product(accounts, BOUNDARY_NAMES))
    held = []
    for index in range(count):
        sa, boundary = next(shape)
        task = f"job-{sa}-{index % 7}"
        response = broker.grant(tokens[sa], boundary, ["read"], task=task, ttl=300)
        assert response.status_code == 201, response.text
        body = response.json()
        held.append(Held(body["grant_id"], subject_of(sa), boundary, task, body["credential"]["token"]))
    return held


def statuses(broker: BrokerClient) -> dict[str, str]:
    return {g.id: g.status for g in broker.service.ledger.grants()}


def active(broker: BrokerClient, issuers: Issuers, token: str) -> bool:
    """What a resource server learns by introspection."""
    answer = broker.post("/oauth/introspect", data={"token": token}, headers=auth(issuers.worker("resource")))
    assert answer.status_code == 200
    return answer.json()["active"]


def by_subject(held: list[Held]) -> Counter:
    return Counter(h.subject for h in held)
