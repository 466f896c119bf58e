"""Idempotency-Key and freezes with real Vault tokens: one key never holds two live tokens, a freeze
racing issuance leaves none alive."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.operators.fleet import auth
from tests.operators.test_incident import freeze_during_issuance, settle
from tests.support.openbao import VaultBed

BODY = {"task": "deploy-vault", "boundary": "kv-payments", "scopes": ["read"], "ttl": 120}
WORKER = "system:serviceaccount:payments:worker"


def _post(broker, token: str, key: str):  # noqa: ANN001, ANN202
    return broker.post("/v1/grants", json=BODY, headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})


def test_a_retry_supersedes_the_earlier_vault_token(vault_broker, issuers, vault_bed: VaultBed):
    token = issuers.worker()
    first, again = _post(vault_broker, token, "v-1").json(), _post(vault_broker, token, "v-1").json()
    assert first["grant_id"] != again["grant_id"]
    assert vault_bed.openbao.token_lookup(first["credential"]["token"]) == 403
    assert vault_bed.openbao.token_lookup(again["credential"]["token"]) == 200
    ledger = vault_broker.service.ledger
    assert (ledger.get_grant(first["grant_id"]).status, ledger.get_grant(again["grant_id"]).status) == (
        "superseded", "active")
    assert "superseded" in [e.kind for e in vault_broker.events() if e.grant_id == first["grant_id"]]


def test_twelve_concurrent_requests_leave_one_live_token(vault_broker, issuers, vault_bed: VaultBed):
    token, barrier = issuers.worker(), threading.Barrier(12)

    def ask(_: int):  # noqa: ANN202
        barrier.wait()
        return _post(vault_broker, token, "v-concurrent")

    with ThreadPoolExecutor(12) as pool:
        answers = [a.json() for a in pool.map(ask, range(12))]
    alive = [a for a in answers if vault_bed.openbao.token_lookup(a["credential"]["token"]) == 200]
    assert len(alive) == 1
    live = [g for g in vault_broker.service.ledger.grants(task="deploy-vault") if g.status == "active"]
    assert [g.id for g in live] == [alive[0]["grant_id"]]


def test_a_freeze_racing_vault_issuance_leaves_no_live_token(vault_broker, issuers, vault_bed: VaultBed):
    token, operator = issuers.worker(), issuers.operator()
    ask = lambda: vault_broker.grant(token, "kv-payments", ["read"], ttl=120, task="busy")  # noqa: E731
    for _ in range(20):
        handed = freeze_during_issuance(vault_broker, ask, operator, WORKER)
        settle(vault_broker, WORKER)
        assert all(vault_bed.openbao.token_lookup(c["credential"]["token"]) == 403 for c in handed)
        lift = {"subject": WORKER, "reason": "next round"}
        assert vault_broker.post("/v1/freezes/lift", json=lift, headers=auth(operator)).status_code == 200
    grants = vault_broker.service.ledger.grants(subject=WORKER)
    assert grants and {g.status for g in grants} == {"revoked"}
