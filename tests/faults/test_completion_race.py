"""A workload's completion racing an operator's revocation of the same grant.

Both callers get a success, the grant ends in exactly one final state with exactly one final event,
and the operator's request is in the ledger whoever won. The two calls start together on a barrier,
over HTTP (`POST /v1/grants/{id}/complete` and `POST /v1/revocations`), many times.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.support.broker import BrokerClient, Issuers

ROUNDS = 12
FINAL = {"completed", "revoked"}


def _race(broker: BrokerClient, grant_id: str, worker: str, operator: str) -> tuple[int, int]:
    barrier = threading.Barrier(2)

    def complete() -> int:
        barrier.wait()
        return broker.post(f"/v1/grants/{grant_id}/complete", headers={"Authorization": f"Bearer {worker}"}).status_code

    def revoke() -> int:
        barrier.wait()
        body = {"grant_id": grant_id, "reason": "incident 42"}
        return broker.post("/v1/revocations", json=body, headers={"Authorization": f"Bearer {operator}"}).status_code

    with ThreadPoolExecutor(2) as pool:
        done, revoked = pool.submit(complete), pool.submit(revoke)
        return done.result(30), revoked.result(30)


def test_completion_racing_revocation_ends_once_and_errors_nobody(broker: BrokerClient, issuers: Issuers) -> None:
    worker, operator = issuers.worker(), issuers.operator()
    grant_ids = [broker.grant(worker, task=f"race-{i}").json()["grant_id"] for i in range(ROUNDS)]
    answers = [_race(broker, grant_id, worker, operator) for grant_id in grant_ids]
    assert all(status == (200, 200) for status in answers), answers
    events = broker.events()
    for grant_id in grant_ids:
        grant = broker.service.ledger.get_grant(grant_id)
        finals = [e for e in events if e.grant_id == grant_id and e.kind in FINAL]
        assert grant.status in FINAL and [e.kind for e in finals] == [grant.status]
    requested = [e for e in events if e.kind == "revocation_requested"]
    assert len(requested) == ROUNDS  # the operator's action is on record even when the owner won
