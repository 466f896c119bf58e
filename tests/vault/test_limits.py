"""Abuse limits with real Vault tokens: a Vault boundary is checked before minting, and a token that
passes that check together with concurrent ones but loses in the issuing transaction is revoked."""

from __future__ import annotations

from tests.support.broker import open_client
from tests.support.openbao import VaultBed

WORKER = "system:serviceaccount:payments:worker"


def test_a_vault_token_over_the_limit_at_commit_is_kept_for_the_outbox_and_revoked(tmp_path, issuers, vault_bed: VaultBed):
    boundaries = [{**b, "limits": {"max_active_grants": 2, "issue_rate": None}} if b["name"] == "kv-payments" else b
                  for b in vault_bed.boundaries]  # fmt: skip
    with open_client(vault_bed.settings(tmp_path, issuers, boundaries=boundaries)) as broker:
        # every request passes the check before minting, as requests in flight together can
        broker.service.limits.check = lambda *args, **kwargs: None
        token = issuers.worker()
        answers = [broker.grant(token, "kv-payments", ["read"], ttl=120, task=f"lim-{n}") for n in range(4)]
        assert [a.status_code for a in answers] == [201, 201, 429, 429]
        assert {a.json()["code"] for a in answers[2:]} == {"too_many_active_grants"}
        assert all(1 <= int(a.headers["Retry-After"]) <= 120 for a in answers[2:])
        for n in (0, 1):
            assert vault_bed.openbao.token_lookup(answers[n].json()["credential"]["token"]) == 200
        for n in (2, 3):  # minted in Vault, refused at commit: its row kept, then revoked by the outbox
            assert vault_bed.handles("kv-payments", f"lim-{n}") == []
        by_task = {g.task: g for g in broker.service.ledger.grants(subject=WORKER)}
        assert [by_task[f"lim-{n}"].status for n in range(4)] == ["active", "active", "revoked", "revoked"]
        assert by_task["lim-2"].end_reason == "refused at commit: too_many_active_grants"
        denied = [e for e in broker.events("denied") if e.detail.get("code") == "too_many_active_grants"]
        assert sorted(e.task for e in denied) == ["lim-2", "lim-3"]
