"""Issue 15 items 3-4: `broker policy test|diff|explain` on the shipped example policies, as CI runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from broker.ledger import Grant
from tests.support.broker import broker_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
CONFIG = str(EXAMPLES / "broker.yaml")


def broker(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("broker")
    return subprocess.run([str(exe), "policy", *args], capture_output=True, text=True, timeout=60)


def test_policy_test_passes_on_the_shipped_policy_and_fails_naming_the_rules(tmp_path):
    ok = broker("test", "-c", CONFIG, str(EXAMPLES / "policy.yaml"), str(EXAMPLES / "cases.yaml"), "--output", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert (report["passed"], report["failed"]) == (7, 0)
    assert {r["rule"] for r in report["results"] if r["decision"] == "allow"} == {"payments-workers", "api-deploys",
                                                                                  "reporting"}  # fmt: skip

    failing = broker("test", "-c", CONFIG, str(EXAMPLES / "policy-v2.yaml"), str(EXAMPLES / "cases.yaml"))
    assert failing.returncode == 1
    assert "payments worker writes orders: FAIL  expected allow, got deny(policy_denied)" in failing.stdout
    assert "payments-workers: matches, lacks scopes write" in failing.stdout  # why it fell as it did
    assert "5 passed, 2 failed" in failing.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cases": [{"subject": "x", "expect": "maybe"}]}))
    assert broker("test", "-c", CONFIG, str(EXAMPLES / "policy.yaml"), str(bad)).returncode == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - name: x\n    allow: [{boundary: nowhere, scopes: [read]}]\n")
    done = broker("test", "-c", CONFIG, str(broken), str(EXAMPLES / "cases.yaml"))
    assert done.returncode == 2 and "unknown boundary 'nowhere'" in done.stderr


def test_policy_diff_lists_rule_and_decision_changes():
    same = broker("diff", "-c", CONFIG, str(EXAMPLES / "policy.yaml"), str(EXAMPLES / "policy.yaml"))
    assert (same.returncode, same.stdout.splitlines()[-1]) == (0, "no changes")

    done = broker("diff", "-c", CONFIG, str(EXAMPLES / "policy.yaml"), str(EXAMPLES / "policy-v2.yaml"),
                  "--cases", str(EXAMPLES / "cases.yaml"), "--output", "json")  # fmt: skip
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["rules"] == [
        {"rule": "payments-workers", "change": "changed", "details": ["orders: removes scopes write"]},
        {"rule": "api-deploys", "change": "changed", "details": ["name api-deploys -> api-prod-deploys"]},
        {"rule": "reporting", "change": "removed"},
    ]
    assert [(d["case"], d["new"]["decision"]) for d in report["decisions"]] == [
        ("payments worker writes orders", "deny"), ("reporting reads orders", "deny")
    ]


def test_policy_diff_against_the_ledger_lists_the_grants_that_would_be_withdrawn(tmp_path, issuers):
    from broker.app import open_ledger

    settings = broker_settings(tmp_path, issuers)  # only its data_dir: a ledger to seed
    ledger = open_ledger(settings)
    rows = {"g-write": ("payments", "read write"), "g-read": ("payments", "read"), "g-report": ("reporting", "read")}
    for grant_id, (namespace, scopes) in rows.items():
        rule = "reporting" if namespace == "reporting" else "payments-workers"
        ledger.record_issued(Grant(
            id=grant_id, subject=f"system:serviceaccount:{namespace}:w", attestor="k8s", task="t", boundary="orders",
            backend="jwt", scopes=scopes, handle=grant_id, fingerprint="f", issued_at=1.0, expires_at=301.0,
            policy_revision="0" * 64, rule=rule,
        ), _issued(grant_id))  # fmt: skip
    done = broker("diff", "-c", CONFIG, str(EXAMPLES / "policy.yaml"), str(EXAMPLES / "policy-v2.yaml"),
                  "--against-ledger", "--data-dir", str(tmp_path), "--output", "json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert sorted((g["grant_id"], g["rule"]) for g in json.loads(done.stdout)["withdrawn"]) == [
        ("g-report", "reporting"), ("g-write", "payments-workers")
    ]


def test_policy_explain_prints_every_rule_in_order_and_the_decision():
    base = ["explain", "-c", CONFIG, "--policy", str(EXAMPLES / "policy.yaml"), "--attestor", "gha",
            "--subject", "repo:acme/api:environment:prod", "--boundary", "orders", "--scopes", "read"]  # fmt: skip
    allowed = broker(*base, "--claim", "repository_owner=acme")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.splitlines() == [
        "1. payments-workers: does not match the subject",
        "2. api-deploys: matches and allows (max_ttl 300s)",
        "3. reporting: does not match the subject",
        "4. on-call: does not match the subject",
        "decision: allow by rule api-deploys (max_ttl 300s)",
    ]
    denied = broker(*base, "--claim", "repository_owner=evil", "--output", "json")
    assert denied.returncode == 1
    body = json.loads(denied.stdout)
    assert (body["decision"], body["code"], body["rules"][1]["verdict"]) == (
        "deny", "policy_denied", "does not match the subject")


def _issued(grant_id: str):  # noqa: ANN202
    from broker.ledger import Event

    return Event(kind="issued", grant_id=grant_id, detail={"policy_revision": "0" * 64, "rule": "x"})
