"""Issue 15 item 1: every decision names the policy revision and the rule; operators filter and group by them."""

from __future__ import annotations

from tests.operators.fleet import auth
from tests.support.broker import POLICY, broker_settings, open_client


def _ops(issuers):  # noqa: ANN001, ANN202
    return auth(issuers.operator())


def test_issued_and_denied_events_name_the_revision_and_the_rule(broker, issuers):
    digest = broker.service.policy.current.digest
    assert broker.grant(issuers.worker(), "orders", ["read"]).status_code == 201
    assert broker.grant(issuers.worker(), "orders", ["admin"]).status_code == 403  # no rule allows admin
    assert broker.grant(issuers.worker(), "orders", ["read"], ttl=3600).status_code == 400  # over the rule's cap
    assert broker.grant("not-a-token", "orders", ["read"]).status_code == 401

    issued = broker.events("issued")[0].detail
    assert (issued["policy_revision"], issued["rule"]) == (digest, "payments-workers")
    denied = {e.detail["code"]: e.detail for e in broker.events("denied")}
    assert (denied["policy_denied"]["policy_revision"], denied["policy_denied"]["rule"]) == (digest, None)
    # refused after a rule allowed it: that rule decided
    assert denied["ttl_exceeds_cap"]["rule"] == "payments-workers"
    assert denied["invalid_identity"]["policy_revision"] == digest
    grant = broker.get("/v1/grants", params={"status": "active"}, headers=_ops(issuers)).json()["items"][0]
    assert (grant["policy_revision"], grant["rule"]) == (digest, "payments-workers")


def test_inventory_audit_and_blast_radius_by_rule_and_revision(broker, issuers):
    broker.grant(issuers.worker(), "orders", ["read"])
    broker.grant(issuers.gha.github_token("acme/api"), "orders", ["read"])
    digest = broker.service.policy.current.digest
    ops = _ops(issuers)

    by_rule = broker.get("/v1/grants", params={"rule": "api-ci"}, headers=ops).json()["items"]
    assert [g["subject"] for g in by_rule] == ["repo:acme/api:ref:refs/heads/main"]
    by_revision = broker.get("/v1/grants", params={"policy_revision": digest}, headers=ops).json()["items"]
    assert len(by_revision) == 2
    assert broker.get("/v1/grants", params={"policy_revision": "0" * 64}, headers=ops).json()["items"] == []

    events = broker.get("/v1/audit", params={"rule": "payments-workers"}, headers=ops).json()["items"]
    assert [e["kind"] for e in events] == ["issued"]
    events = broker.get("/v1/audit", params={"policy_revision": digest, "kind": "issued"}, headers=ops).json()
    assert len(events["items"]) == 2

    report = broker.get("/v1/reports/blast-radius", params={"subject_glob": "system:serviceaccount:payments:*"},
                        headers=ops).json()  # fmt: skip
    assert [(r["rule"], r["grants"], r["live"], r["boundaries"]) for r in report["rules"]] == [
        ("payments-workers", 1, 1, ["orders"])
    ]


def test_an_explicit_rule_id_survives_a_rename(tmp_path, issuers):
    rules = [{**POLICY["rules"][0], "name": "renamed-workers", "id": "pay-w"}, *POLICY["rules"][1:]]
    with open_client(broker_settings(tmp_path, issuers, policy={"rules": rules})) as client:
        assert client.grant(issuers.worker(), "orders", ["read"]).status_code == 201
        assert client.events("issued")[0].detail["rule"] == "pay-w"
