"""Operators revoke by selector, freeze, and read progress, through the HTTP API."""

from __future__ import annotations

import pytest

from tests.operators.fleet import active, auth, issue_fleet, statuses, subject_of
from tests.support.wait import wait_until

WORKER = subject_of("worker")


def revoke(broker, issuers, **body):  # noqa: ANN001, ANN201
    return broker.post("/v1/revocations", json={"reason": "incident 42", **body}, headers=auth(issuers.operator()))


def test_revoke_by_subject_cuts_off_only_that_subject_among_500(broker, issuers):
    held = issue_fleet(broker, issuers, 500)
    mine = [h for h in held if h.subject == WORKER]
    others = [h for h in held if h.subject != WORKER]

    answer = revoke(broker, issuers, subject=WORKER)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["matched"], body["revoked"], body["pending"], body["status"]) == (len(mine), len(mine), 0, "done")
    after = statuses(broker)
    assert {after[h.grant_id] for h in mine} == {"revoked"}
    assert {after[h.grant_id] for h in others} == {"active"}
    assert not any(active(broker, issuers, h.token) for h in mine)
    assert all(active(broker, issuers, h.token) for h in others[:20])
    revoked_events = [e for e in broker.events("revoked") if e.detail.get("revocation_id") == body["revocation_id"]]
    assert len(revoked_events) == len(mine)
    assert broker.service.ledger.verify().ok


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"subject_glob": "system:serviceaccount:payments:c*"}, lambda h: h.subject == subject_of("cron")),
        ({"boundary": "payments"}, lambda h: h.boundary == "payments"),
        ({"task": "job-batch-1"}, lambda h: h.task == "job-batch-1"),
        ({"all": True}, lambda h: True),
    ],
    ids=["subject-glob", "boundary", "task", "all"],
)
def test_selectors_revoke_exactly_what_they_match(broker, issuers, selector, expected):
    held = issue_fleet(broker, issuers, 42)
    body = revoke(broker, issuers, **selector).json()
    after = statuses(broker)
    hit = [h for h in held if expected(h)]
    assert body["matched"] == body["revoked"] == len(hit) > 0
    assert all(after[h.grant_id] == ("revoked" if expected(h) else "active") for h in held)


def test_revoke_one_grant_by_id_and_again_is_a_no_op(broker, issuers):
    held = issue_fleet(broker, issuers, 3)
    first = revoke(broker, issuers, grant_id=held[0].grant_id).json()
    second = revoke(broker, issuers, grant_id=held[0].grant_id).json()
    assert (first["matched"], second["matched"]) == (1, 0)
    assert statuses(broker)[held[1].grant_id] == "active"


@pytest.mark.parametrize(
    "body",
    [
        {"subject": WORKER, "reason": ""},
        {"subject": WORKER},
        {"subject": WORKER, "boundary": "orders", "reason": "x"},
        {"reason": "nothing selected"},
        {"boundary": "nope", "reason": "x"},
        {"subject_glob": "system:*", "reason": "x", "freeze": True},
        {"subject": WORKER, "subject_glob": "system:*", "reason": "x"},
        {"subject_glob": "repo:***", "reason": "x"},
    ],
    ids=["empty-reason", "no-reason", "two-selectors", "no-selector", "unknown-boundary", "freeze-a-glob",
         "subject-and-glob", "bad-glob"],
)
def test_bad_revocation_requests_change_nothing(broker, issuers, body):
    issue_fleet(broker, issuers, 6)
    before = statuses(broker)
    answer = broker.post("/v1/revocations", json=body, headers=auth(issuers.operator()))
    assert answer.status_code in (400, 422), answer.text
    assert statuses(broker) == before
    assert broker.service.ledger.records.freezes() == []


def test_progress_is_polled_until_done(broker, issuers):
    issue_fleet(broker, issuers, 30)
    answer = revoke(broker, issuers, all=True, wait=False)
    assert answer.status_code in (200, 202)
    revocation_id = answer.json()["revocation_id"]

    def done() -> dict | None:
        status = broker.get(f"/v1/revocations/{revocation_id}", headers=auth(issuers.operator())).json()
        return status if status["status"] == "done" else None

    status = wait_until(done, 10, "the revocation done", interval=0.05)
    assert status["revoked"] == 30 and status["pending"] == 0
    assert broker.get("/v1/revocations/rv_missing", headers=auth(issuers.operator())).status_code == 404


def test_dry_run_counts_without_revoking(broker, issuers):
    issue_fleet(broker, issuers, 9)
    answer = revoke(broker, issuers, subject=WORKER, dry_run=True)
    assert answer.json() == {"matched": 4, "dry_run": True}
    assert set(statuses(broker).values()) == {"active"}


@pytest.mark.parametrize(
    ("target", "code"),
    [({"subject": WORKER}, "subject_frozen"), ({"boundary": "orders"}, "boundary_frozen")],
    ids=["subject", "boundary"],
)
def test_freeze_refuses_new_grants_until_lifted(broker, issuers, target, code):
    op = auth(issuers.operator())
    frozen = broker.post("/v1/freezes", json={**target, "reason": "suspected leak"}, headers=op)
    assert frozen.status_code == 201 and frozen.json()["changed"] is True

    refused = broker.grant(issuers.worker("worker"), "orders", ["read"])
    assert (refused.status_code, refused.json()["code"]) == (403, code)
    other = broker.grant(issuers.worker("cron"), "payments", ["read"])
    assert other.status_code == 201  # another subject at another boundary is not touched
    listed = broker.get("/v1/freezes", headers=op).json()["items"]
    assert [(f["kind"], f["value"]) for f in listed] == list(target.items())

    lifted = broker.post("/v1/freezes/lift", json={**target, "reason": "rotated"}, headers=op)
    assert lifted.json()["changed"] is True
    assert broker.grant(issuers.worker("worker"), "orders", ["read"]).status_code == 201
    assert [e.kind for e in broker.events() if e.kind in ("frozen", "unfrozen")] == ["frozen", "unfrozen"]
    denied = [e for e in broker.events("denied") if e.detail.get("code") == code]
    assert len(denied) == 1


def test_revocation_with_freeze_revokes_and_refuses(broker, issuers):
    held = issue_fleet(broker, issuers, 12)
    body = revoke(broker, issuers, subject=WORKER, freeze=True).json()
    assert body["revoked"] == 4
    refused = broker.grant(issuers.worker("worker"), "payments", ["read"])
    assert refused.json()["code"] == "subject_frozen"
    freeze = broker.service.ledger.records.freezes()[0]
    assert (freeze.value, freeze.revocation_id) == (WORKER, body["revocation_id"])
    assert sum(statuses(broker)[h.grant_id] == "active" for h in held) == 8


OPERATOR_CALLS = [
    ("post", "/v1/revocations", {"json": {"all": True, "reason": "x"}}),
    ("post", "/v1/revocations", {"json": {"subject": WORKER, "reason": "x", "freeze": True}}),
    ("get", "/v1/revocations/rv_x", {}),
    ("get", "/v1/freezes", {}),
    ("post", "/v1/freezes", {"json": {"subject": WORKER, "reason": "x"}}),
    ("post", "/v1/freezes/lift", {"json": {"subject": WORKER, "reason": "x"}}),
    ("get", "/v1/grants", {}),
    ("get", "/v1/audit", {}),
    ("get", "/v1/audit?format=jsonl", {}),
    ("get", "/v1/audit/verify", {}),
    ("get", f"/v1/reports/blast-radius?subject={WORKER}", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), OPERATOR_CALLS, ids=[f"{m} {p}" for m, p, _ in OPERATOR_CALLS])
def test_non_operator_gets_403_and_nothing_changes(broker, issuers, method, path, kwargs):
    issue_fleet(broker, issuers, 6)
    before = statuses(broker)
    events_before = len(broker.events())
    answer = getattr(broker, method)(path, headers=auth(issuers.worker("worker")), **kwargs)
    assert (answer.status_code, answer.json()["code"]) == (403, "forbidden")
    assert statuses(broker) == before
    assert broker.service.ledger.records.freezes() == []
    new = broker.events()[events_before:]
    assert [(e.kind, e.detail["code"]) for e in new] == [("denied", "forbidden")]


def test_auditor_reads_but_may_not_revoke(tmp_path, issuers):
    from tests.support.broker import POLICY, broker_settings, open_client

    rules = [*POLICY["rules"], {"name": "audit", "match": {"attestor": "oidc", "subject": "audit-*"}, "roles": ["auditor"]}]
    with open_client(broker_settings(tmp_path, issuers, policy={"rules": rules})) as broker:
        token = auth(issuers.oidc.token(sub="audit-bob"))
        assert broker.get("/v1/grants", headers=token).status_code == 200
        assert broker.get("/v1/audit/verify", headers=token).json()["ok"] is True
        refused = broker.post("/v1/revocations", json={"all": True, "reason": "x"}, headers=token)
        assert refused.status_code == 403


def test_a_background_revocation_after_the_app_restarted_its_lifespan(broker, issuers):
    """The lifespan's shutdown closes the revocation pool; a second start (same app) must not 500."""
    held = issue_fleet(broker, issuers, 2)
    broker.components.operations.close()  # what the lifespan's shutdown does
    body = {"grant_id": held[0].grant_id, "reason": "incident", "wait": False}
    answer = broker.post("/v1/revocations", json=body, headers=auth(issuers.operator()))
    assert answer.status_code in (200, 202), answer.text
