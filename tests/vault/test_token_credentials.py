"""vault_token: a real Vault token that reads its boundary's KV path, not another's, and dies on complete."""

from __future__ import annotations

import httpx

from tests.support.openbao import VaultBed


def _kv(bed: VaultBed, token: str, area: str) -> int:
    url = f"{bed.openbao.addr}/v1/secret/data/{area}/config"
    return httpx.get(url, headers={"X-Vault-Token": token}).status_code


def test_token_reads_own_kv_path_only_and_dies_on_complete(vault_broker, issuers, vault_bed: VaultBed):
    identity = issuers.worker()
    answer = vault_broker.grant(identity, "kv-payments", ["read"], ttl=120)
    assert answer.status_code == 201, answer.text
    cred = answer.json()["credential"]
    assert set(cred) == {"type", "token", "accessor", "vault_addr", "expires_at"}
    assert cred["type"] == "vault_token" and cred["vault_addr"] == vault_bed.openbao.addr
    assert (_kv(vault_bed, cred["token"], "payments"), _kv(vault_bed, cred["token"], "billing")) == (200, 403)

    done = vault_broker.post(f"/v1/grants/{answer.json()['grant_id']}/complete", headers={"Authorization": f"Bearer {identity}"})
    assert done.json()["status"] == "completed"
    assert vault_bed.openbao.token_lookup(cred["token"]) == 403
    assert _kv(vault_bed, cred["token"], "payments") == 403


def test_token_is_a_non_renewable_child_of_its_subjects_parent_with_grant_metadata(vault_broker, issuers, vault_bed: VaultBed):
    answer = vault_broker.grant(issuers.worker(), "kv-payments", ["read"], ttl=60, task="meta-task").json()
    root = vault_bed.openbao.root()
    data = root.write("auth/token/lookup-accessor", {"accessor": answer["credential"]["accessor"]})["data"]
    assert (data["orphan"], data["renewable"], data["explicit_max_ttl"]) == (False, False, 60)
    deployment = vault_broker.service.backends["vault_token"].deployment
    assert deployment.startswith("d-")
    assert data["meta"] == {"grant_id": answer["grant_id"], "task": "meta-task", "deployment": deployment,
                            "subject": "system:serviceaccount:payments:worker", "boundary": "kv-payments"}
    assert data["policies"] == ["kv-payments-read"]  # token_no_default_policy: no cubbyhole, no lookup-self
    row = vault_broker.service.ledger.get_grant(answer["grant_id"])
    assert row.handle == answer["credential"]["accessor"] and answer["credential"]["token"] not in repr(row.__dict__)

    # its parent: one orphan per (subject, boundary), outliving every child, able to make only the boundary's tokens
    parent = root.write("auth/token/lookup-accessor", {"accessor": row.parent_handle})["data"]
    assert parent["orphan"] is True and parent["renewable"] is False and parent["explicit_max_ttl"] == 2 * 900 + 60
    assert parent["meta"] == {"parent": "true", "boundary": "kv-payments", "deployment": deployment,
                              "subject": "system:serviceaccount:payments:worker"}
    assert parent["policies"] == ["credential-broker-parent-kv-payments"]
    again = vault_broker.grant(issuers.worker(), "kv-payments", ["read"], ttl=60, task="meta-task-2").json()
    assert vault_broker.service.ledger.get_grant(again["grant_id"]).parent_handle == row.parent_handle
    other = vault_broker.grant(issuers.worker("other"), "kv-payments", ["read"], ttl=60).json()
    assert vault_broker.service.ledger.get_grant(other["grant_id"]).parent_handle != row.parent_handle


def test_completing_twice_is_fine_when_vault_already_forgot_the_token(vault_broker, issuers, vault_bed: VaultBed):
    identity = issuers.worker()
    answer = vault_broker.grant(identity, "kv-payments", ["read"], ttl=60).json()
    vault_bed.openbao.root().write("auth/token/revoke-accessor", {"accessor": answer["credential"]["accessor"]})
    done = vault_broker.post(f"/v1/grants/{answer['grant_id']}/complete", headers={"Authorization": f"Bearer {identity}"})
    assert done.json()["status"] == "completed"
    assert vault_broker.events("revoke_failed") == []



def test_the_vault_connection_pool_covers_every_thread_that_may_call_vault(vault_broker, issuers):
    """A pool of 10 (requests' default) made every call beyond ten open a new connection and log
    "Connection pool is full, discarding connection" under load (the bench saw it)."""
    from broker.app import ISSUING_THREADS

    vault = vault_broker.service.backends["vault_token"].vault
    assert vault_broker.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).status_code == 201
    pool = vault._hvac.adapter.pool.connection_from_url(vault.addr)  # the pool the grant above used
    assert pool.pool.maxsize >= ISSUING_THREADS and pool.num_connections >= 1
