"""Inventory, audit, export, blast radius and metrics: what operators read, checked against the ledger."""

from __future__ import annotations

import json
import time

import pytest

from broker.ledger import verify_export
from tests.operators.fleet import auth, issue_fleet, subject_of

WORKER = subject_of("worker")


@pytest.fixture
def fleet(broker, issuers):  # noqa: ANN201
    held = issue_fleet(broker, issuers, 60)
    op = auth(issuers.operator())
    broker.post("/v1/revocations", json={"task": "job-worker-0", "reason": "drill"}, headers=op)
    broker.post(f"/v1/grants/{held[1].grant_id}/complete", headers=auth(issuers.worker("worker")))
    return held


def pages(broker, issuers, path: str, **params) -> list[list[dict]]:  # noqa: ANN001
    """Follow `next_cursor` to the end; each page's items."""
    found, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor is not None else {})}
        body = broker.get(path, params=query, headers=auth(issuers.operator())).json()
        found.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({}, lambda g: True),
        ({"status": "active"}, lambda g: g.status == "active"),
        ({"subject": WORKER}, lambda g: g.subject == WORKER),
        ({"subject_glob": "system:serviceaccount:payments:*", "boundary": "orders"}, lambda g: g.boundary == "orders"),
        ({"task": "job-cron-2"}, lambda g: g.task == "job-cron-2"),
        ({"status": "revoked", "boundary": "payments"}, lambda g: (g.status, g.boundary) == ("revoked", "payments")),
    ],
    ids=["all", "status", "subject", "glob-and-boundary", "task", "status-and-boundary"],
)
def test_inventory_pages_cover_the_ledger_once(broker, issuers, fleet, params, keep):
    found = pages(broker, issuers, "/v1/grants", limit=7, **params)
    ids = [item["grant_id"] for page in found for item in page]
    expected = [g.id for g in broker.service.ledger.grants() if keep(g)]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids)) > 0
    assert all(len(page) <= 7 for page in found)
    assert all("credential" not in item for page in found for item in page)


def test_inventory_time_range(broker, issuers, fleet):
    cut = time.time()
    time.sleep(0.01)
    late = issue_fleet(broker, issuers, 2)
    found = pages(broker, issuers, "/v1/grants", since=str(cut))
    assert sorted(i["grant_id"] for p in found for i in p) == sorted(h.grant_id for h in late)
    before = pages(broker, issuers, "/v1/grants", until=str(cut))
    assert sum(map(len, before)) == len(fleet)
    assert broker.get("/v1/grants?since=yesterday", headers=auth(issuers.operator())).status_code == 400
    assert broker.get("/v1/grants?cursor=%%%", headers=auth(issuers.operator())).status_code == 400


def test_audit_filters_and_pages(broker, issuers, fleet):
    found = pages(broker, issuers, "/v1/audit", kind="revoked", limit=3)
    events = [e for page in found for e in page]
    assert {e["kind"] for e in events} == {"revoked"}
    drill = sum(h.task == "job-worker-0" for h in fleet)
    assert len(events) == len(broker.events("revoked")) == drill > 1
    issued_worker = pages(broker, issuers, "/v1/audit", kind="issued", subject=WORKER, limit=4)
    assert sum(map(len, issued_worker)) == sum(h.subject == WORKER for h in fleet)


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"format": "jsonl"}, {}), ({}, {"Accept": "application/x-ndjson"})],
    ids=["query", "accept"],
)
def test_audit_jsonl_export_verifies_offline(broker, issuers, fleet, params, headers):
    answer = broker.get("/v1/audit", params=params, headers={**auth(issuers.operator()), **headers})
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in answer.text.splitlines()]
    result, gaps = verify_export(rows)
    online = broker.get("/v1/audit/verify", headers=auth(issuers.operator())).json()
    assert result.ok and gaps == 0 and online["ok"]
    assert rows[-1]["seq"] <= online["head_seq"]
    assert rows[0]["seq"] == 1

    tampered = [dict(r) for r in rows]
    tampered[5]["detail"] = {**tampered[5]["detail"], "scopes": ["admin"]}
    assert verify_export(tampered)[0].first_bad_seq == rows[5]["seq"]
    dropped = rows[:7] + rows[8:]
    assert verify_export(dropped) == (verify_export(dropped)[0], 1)  # a gap shows in a full export


def test_blast_radius_matches_the_ledger(broker, issuers, fleet):
    broker.grant(issuers.worker("worker"), "orders", ["admin"])  # denied by policy: counted
    report = broker.get(
        "/v1/reports/blast-radius", params={"subject": WORKER, "since": "1h"}, headers=auth(issuers.operator())
    ).json()
    mine = [g for g in broker.service.ledger.grants() if g.subject == WORKER]
    assert report["totals"]["grants"] == len(mine)
    assert report["totals"]["live"] == sum(g.status == "active" for g in mine)
    assert report["totals"]["revoked"] == sum(g.status == "revoked" for g in mine) > 0
    assert report["totals"]["completed"] == 1
    assert report["totals"]["denied"] == 1
    rows = {b["boundary"]: b for b in report["boundaries"]}
    for name, row in rows.items():
        in_boundary = [g for g in mine if g.boundary == name]
        assert row["grants"] == len(in_boundary)
        assert {g["grant_id"] for g in row["live_grants"]} == {g.id for g in in_boundary if g.status == "active"}
        assert {g["grant_id"] for g in row["revoked_grants"]} == {g.id for g in in_boundary if g.status == "revoked"}
        assert row["scopes"] == ["read"]
    assert set(rows) == {"orders", "payments"}
    revoked = next(g for r in rows.values() for g in r["revoked_grants"])
    assert revoked["reason"] == "drill" and revoked["revoked_at"]


def test_blast_radius_window_excludes_older_grants(broker, issuers, fleet):
    later = time.time() + 3600
    report = broker.get(
        "/v1/reports/blast-radius",
        params={"subject": WORKER, "since": str(later), "until": str(later + 60)},
        headers=auth(issuers.operator()),
    ).json()
    assert report["totals"]["grants"] == 0 and report["boundaries"] == []


def test_metrics_count_decisions_by_boundary(broker, issuers, fleet):
    text = broker.get("/metrics").text
    issued = {b: sum(h.boundary == b for h in fleet) for b in ("orders", "payments")}
    assert f'broker_grants_issued_total{{boundary="orders"}} {float(issued["orders"])}' in text
    assert f'broker_grants_issued_total{{boundary="payments"}} {float(issued["payments"])}' in text
    revoked = sum(h.task == "job-worker-0" and h.boundary == "orders" for h in fleet)
    assert f'broker_grants_revoked_total{{boundary="orders"}} {float(revoked)}' in text
    assert "broker_grants_completed_total" in text
    assert "broker_revocations_pending 0.0" in text
    assert "broker_revocation_seconds_count 1.0" in text
    assert f"broker_issuance_seconds_count {float(len(fleet))}" in text

def test_blast_radius_with_an_empty_since_takes_the_default_window(broker, issuers):
    """Found by the schema fuzzer: `since=` used to be a 500."""
    headers = {"Authorization": f"Bearer {issuers.operator()}"}
    answer = broker.get("/v1/reports/blast-radius", params={"subject": "nobody", "since": ""}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["totals"]["denied"] == 0
