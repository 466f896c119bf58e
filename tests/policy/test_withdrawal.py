"""Issue 15 item 2: a reload that takes a rule away takes that rule's live grants with it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from broker.config import load_settings
from broker.errors import PolicyDenied
from broker.grants import GrantRequest
from broker.grants.withdrawal import still_allowed
from broker.ledger import Grant
from broker.policy import compile_policy
from tests.operators.fleet import auth
from tests.support.broker import BOUNDARIES, broker_settings, open_client
from tests.support.openbao import VaultBed, vault_bed  # noqa: F401 (fixture)
from tests.support.wait import wait_until

OPERATORS = {"name": "operators", "match": {"attestor": "oidc", "subject": "ops-*"}, "roles": ["operator"]}


def _rule(name: str, namespace: str, boundary: str, scopes=("read",), max_ttl="10m", **extra):  # noqa: ANN001, ANN003, ANN202
    match = {"attestor": "k8s", "subject": f"system:serviceaccount:{namespace}:*", **extra}
    return {"name": name, "match": match, "allow": [{"boundary": boundary, "scopes": list(scopes), "max_ttl": max_ttl}]}


def _write(path: Path, *rules: dict) -> None:
    path.write_text(yaml.safe_dump({"rules": [*rules, OPERATORS]}))


def test_reload_removing_a_rule_under_load_ends_its_grants_and_vault_tokens(tmp_path, issuers, vault_bed: VaultBed):
    policy = tmp_path / "policy.yaml"
    payments, billing = _rule("payments-kv", "payments", "kv-payments"), _rule("billing-kv", "billing", "kv-billing")
    _write(policy, payments, billing)
    settings = vault_bed.settings(tmp_path / "data", issuers, policy=None, policy_file=policy)
    with open_client(settings) as broker:
        mine = [broker.grant(issuers.worker(f"w{i}"), "kv-payments", ["read"], ttl=300).json() for i in range(6)]
        theirs = [broker.grant(issuers.k8s.k8s_token("billing", f"b{i}"), "kv-billing", ["read"], ttl=300).json()
                  for i in range(3)]  # fmt: skip
        load: list[tuple[int, float]] = []
        stop = threading.Event()

        def issue_billing() -> None:  # issuance goes on while the policy is swapped and the grants withdrawn
            while not stop.is_set():
                started = time.monotonic()
                status = broker.grant(issuers.k8s.k8s_token("billing", "load"), "kv-billing", ["read"], ttl=60).status_code
                load.append((status, time.monotonic() - started))

        thread = threading.Thread(target=issue_billing)
        thread.start()
        try:
            wait_until(lambda: len(load) >= 3, 10, "issuance under way", interval=0.02)
            _write(policy, billing)  # the payments rule is withdrawn in an incident
            ledger = broker.service.ledger
            started = time.monotonic()
            wait_until(lambda: all(ledger.get_grant(g["grant_id"]).status == "revoked" for g in mine), 5,
                       "the withdrawn grants revoked", interval=0.02)  # fmt: skip
            took = time.monotonic() - started
            issued_during = len(load)
            wait_until(lambda: len(load) >= issued_during + 3, 10, "issuance going on", interval=0.02)
        finally:
            stop.set()
            thread.join()

        assert took <= 2.0
        assert all(vault_bed.openbao.token_lookup(g["credential"]["token"]) == 403 for g in mine)
        rows = [ledger.get_grant(g["grant_id"]) for g in mine]
        assert {(r.end_reason, r.end_actor) for r in rows} == {("policy withdrawn: rule payments-kv", "broker:policy")}
        assert {ledger.get_grant(g["grant_id"]).status for g in theirs} == {"active"}
        assert all(vault_bed.openbao.token_lookup(g["credential"]["token"]) == 200 for g in theirs)
        assert {status for status, _ in load} == {201}  # issuance never paused or failed
        assert max(seconds for _, seconds in load) < 2.0
        assert broker.service.ledger.verify().ok


def test_report_mode_lists_instead_of_revoking(tmp_path, issuers, caplog):
    policy = tmp_path / "policy.yaml"
    _write(policy, _rule("payments-orders", "payments", "orders", scopes=("read", "write")))
    with open_client(broker_settings(tmp_path, issuers, policy=None, policy_file=policy, on_withdraw="report")) as broker:
        read = broker.grant(issuers.worker(), "orders", ["read"]).json()
        write = broker.grant(issuers.worker(), "orders", ["write"]).json()
        _write(policy, _rule("payments-orders", "payments", "orders", scopes=("read",)))  # write taken away
        assert broker.service.policy.reload()

        assert broker.service.ledger.get_grant(write["grant_id"]).status == "active"  # reported, not revoked
        ready = broker.get("/readyz").json()["policy"]
        assert ready["on_withdraw"] == "report"
        assert (ready["withdrawn_live"], ready["withdrawn_live_by_rule"]) == (1, {"payments-orders": 1})
        assert write["grant_id"] not in broker.get("/readyz").text  # /readyz names no grant or subject
        assert "broker_policy_withdrawn_grants 1.0" in broker.get("/metrics").text
        assert any(write["grant_id"] in r.getMessage() and read["grant_id"] not in r.getMessage()
                   for r in caplog.records)  # fmt: skip


def test_a_grant_decided_by_the_old_revision_and_committed_after_the_reload_is_withdrawn(tmp_path, issuers):
    policy = tmp_path / "policy.yaml"
    _write(policy, _rule("payments-orders", "payments", "orders"))
    with open_client(broker_settings(tmp_path, issuers, policy=None, policy_file=policy)) as broker:
        service = broker.service
        identity = service.authenticate(issuers.worker(), action="issue")
        prepared = service.prepare(identity, GrantRequest(task="race", boundary="orders", scopes=("read",)))
        _write(policy, _rule("other", "billing", "orders"))
        assert service.policy.reload()  # the scan runs before this grant is in the ledger
        with pytest.raises(PolicyDenied):
            service.conclude(prepared, service.commit(prepared))
        row = service.ledger.get_grant(prepared.grant.id)
        assert (row.status in ("revoked", "revoke_pending"), row.end_reason) == (True, "policy withdrawn: rule payments-orders")
        denied = [e.detail for e in broker.events("denied") if e.detail.get("code") == "policy_denied"]
        assert denied and denied[-1]["policy_revision"] == service.policy.current.digest


def test_revoke_by_policy_revision_and_by_rule(tmp_path, issuers):
    policy = tmp_path / "policy.yaml"
    _write(policy, _rule("payments-orders", "payments", "orders"), _rule("billing-orders", "billing", "orders"))
    with open_client(broker_settings(tmp_path, issuers, policy=None, policy_file=policy)) as broker:
        first = broker.service.policy.current.digest
        old = [broker.grant(issuers.worker(f"w{i}")).json()["grant_id"] for i in range(3)]
        _write(policy, _rule("payments-orders", "payments", "orders"), _rule("billing-orders", "billing", "orders"),
               _rule("cron-orders", "cron", "orders"))  # fmt: skip
        assert broker.service.policy.reload()
        new = [broker.grant(issuers.worker("late")).json()["grant_id"]]
        billing = [broker.grant(issuers.k8s.k8s_token("billing", "b")).json()["grant_id"]]
        ops = auth(issuers.operator())

        answer = broker.post("/v1/revocations", json={"policy_revision": first, "reason": "bad revision"}, headers=ops)
        assert (answer.status_code, answer.json()["matched"]) == (200, 3), answer.text
        assert {broker.service.ledger.get_grant(g).status for g in old} == {"revoked"}
        assert broker.service.ledger.get_grant(new[0]).status == "active"

        answer = broker.post("/v1/revocations", json={"rule": "billing-orders", "reason": "rule compromised"}, headers=ops)
        assert answer.json()["matched"] == 1 and answer.json()["selector"] == {"rule": "billing-orders", "freeze": False}
        assert broker.service.ledger.get_grant(billing[0]).status == "revoked"
        assert broker.service.ledger.get_grant(new[0]).status == "active"

        bad = broker.post("/v1/revocations", json={"policy_revision": "nope", "reason": "x"}, headers=ops)
        both = broker.post("/v1/revocations", json={"rule": "a", "boundary": "orders", "reason": "x"}, headers=ops)
        assert (bad.status_code, both.status_code) == (422, 400)
        assert bad.headers["content-type"].startswith("application/problem+json")


# --- what "still allowed" means, on compiled policies (pure logic) ----------------------------


def _policy(*rules: dict):  # noqa: ANN202
    boundaries = load_settings(None, env="test", boundaries=BOUNDARIES).boundaries
    return compile_policy({"rules": list(rules)}, source="t", boundaries=boundaries, attestors={"k8s"})


def _grant(scopes: str = "read", lifetime: float = 300, rule: str | None = "r") -> Grant:
    return Grant(id="g", subject="system:serviceaccount:payments:w", attestor="k8s", task="t", boundary="orders",
                 backend="jwt", scopes=scopes, handle="h", fingerprint="f", issued_at=0.0, expires_at=lifetime,
                 rule=rule)  # fmt: skip


CLAIM = {"claims": {"team": "pay"}}


@pytest.mark.parametrize(
    ("old", "new", "grant", "kept"),
    [
        (_rule("r", "payments", "orders"), _rule("r", "payments", "orders"), _grant(), True),
        (_rule("r", "payments", "orders"), _rule("other", "payments", "orders"), _grant(), False),  # renamed, no id
        (_rule("r", "payments", "orders"), {**_rule("x", "payments", "orders"), "id": "r"}, _grant(), True),
        (_rule("r", "payments", "orders", ("read", "write")), _rule("r", "payments", "orders"), _grant("write"), False),
        (_rule("r", "payments", "orders"), _rule("r", "payments", "orders", max_ttl="4m"), _grant(lifetime=300), False),
        (_rule("r", "payments", "orders"), _rule("r", "billing", "orders"), _grant(), False),  # subject no longer
        (_rule("r", "payments", "orders", **CLAIM), _rule("r", "payments", "orders", **CLAIM), _grant(), True),
        (_rule("r", "payments", "orders", **CLAIM), _rule("r", "payments", "orders", claims={"team": "x"}),
         _grant(), False),  # claims changed: cannot be re-checked, so withdrawn
        (_rule("r", "payments", "orders"), _rule("r", "payments", "orders", **CLAIM), _grant(), False),
        (_rule("r", "payments", "orders"), _rule("any", "payments", "orders"), _grant(rule=None), True),
    ],
    ids=["unchanged", "renamed", "explicit-id", "scope-removed", "ttl-cap-lowered", "subject-narrowed",
         "same-claims", "claims-changed", "claims-added", "unrecorded-rule"],
)
def test_still_allowed(old, new, grant, kept):
    assert still_allowed(grant, _policy(old), _policy(new)) is kept
