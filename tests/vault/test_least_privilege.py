"""`broker vault plan` grants the broker only its own boundaries: tested with the broker's real AppRole token.

The broker's token (the planned `credential-broker` policy only) is refused on leases it did not
create, minted tokens carry no `default` policy, and every boundary still mints, completes and is
mass-revoked (a frozen boundary by prefix, a subject lease by lease) with that token.
"""

from __future__ import annotations

import httpx
import psycopg
import pytest

from tests.support.broker import open_client
from tests.support.openbao import VaultBed
from tests.vault.approle import approle


@pytest.fixture
def planned_broker(tmp_path, issuers, vault_bed: VaultBed):  # noqa: ANN201
    config, _ = approle(vault_bed, tmp_path)
    with open_client(vault_bed.settings(tmp_path, issuers, vault=config)) as client:
        yield client


def _as_broker(client, bed: VaultBed, method: str, path: str, body: dict | None = None) -> int:  # noqa: ANN001
    token = client.service.backends["vault_token"].vault._hvac.token
    return httpx.request(method, f"{bed.openbao.addr}/v1/{path}", json=body, headers={"X-Vault-Token": token}).status_code


def test_the_broker_token_is_refused_on_a_lease_it_did_not_create(planned_broker, issuers, vault_bed: VaultBed):
    assert planned_broker.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).status_code == 201  # logged in
    root = vault_bed.openbao.root()
    root.write("auth/token/roles/someone-elses-app", {"orphan": True})
    foreign = root.write("auth/token/create/someone-elses-app", {"ttl": "10m"})["auth"]["client_token"]
    lease = "auth/token/create/someone-elses-app/" + root.list("sys/leases/lookup/auth/token/create/someone-elses-app/")[0]

    assert _as_broker(planned_broker, vault_bed, "PUT", f"sys/leases/revoke/{lease}") == 403
    assert _as_broker(planned_broker, vault_bed, "PUT", "sys/leases/revoke", {"lease_id": lease}) == 403
    assert _as_broker(planned_broker, vault_bed, "PUT", f"sys/leases/renew/{lease}") == 403
    assert _as_broker(planned_broker, vault_bed, "PUT", "sys/leases/revoke-prefix/auth/token/create/someone-elses-app") == 403
    assert _as_broker(planned_broker, vault_bed, "POST", "auth/token/revoke", {"token": foreign}) == 403
    assert _as_broker(planned_broker, vault_bed, "LIST", "sys/leases/lookup/auth/token/create/someone-elses-app/") == 403
    assert vault_bed.openbao.token_lookup(foreign) == 200


def test_minted_tokens_carry_no_default_policy(planned_broker, issuers, vault_bed: VaultBed):
    token = planned_broker.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).json()["credential"]["token"]
    headers = {"X-Vault-Token": token}
    assert httpx.get(f"{vault_bed.openbao.addr}/v1/secret/data/payments/config", headers=headers).status_code == 200
    assert httpx.post(f"{vault_bed.openbao.addr}/v1/cubbyhole/stash", json={"x": "1"}, headers=headers).status_code == 403
    assert httpx.get(f"{vault_bed.openbao.addr}/v1/auth/token/lookup-self", headers=headers).status_code == 403


def _alive(bed: VaultBed, credential: dict) -> bool:
    if credential["type"] == "vault_token":
        return bed.openbao.token_lookup(credential["token"]) == 200
    return bed.openbao.lease_exists(credential["lease_id"])


@pytest.mark.parametrize("selector", ["boundary", "subject"], ids=["frozen-boundary", "subject"])
@pytest.mark.parametrize("boundary", ["kv-payments", "orders-db"])
def test_the_planned_policy_mass_revokes_every_boundary(planned_broker, issuers, vault_bed, request, boundary, selector):
    if boundary == "orders-db":
        request.getfixturevalue("pg_bed")
    sa = f"mass-{boundary}-{selector}"
    held = [planned_broker.grant(issuers.worker(sa), boundary, ["read"], ttl=120).json() for _ in range(3)]
    assert all(_alive(vault_bed, h["credential"]) for h in held)
    body = {"boundary": boundary, "freeze": True} if selector == "boundary" else {
        "subject": f"system:serviceaccount:payments:{sa}"}
    answer = planned_broker.post("/v1/revocations", json={"reason": "drill", **body},
                                 headers={"Authorization": f"Bearer {issuers.operator()}"})
    assert answer.status_code in (200, 202), answer.text
    assert answer.json()["pending"] == 0 and answer.json()["revoked"] >= 3
    assert not any(_alive(vault_bed, h["credential"]) for h in held)
    assert planned_broker.events("revoke_failed") == []


def test_db_lease_revoked_by_its_url_lease_id_drops_the_role(planned_broker, issuers, pg_bed: VaultBed):
    identity = issuers.worker()
    body = planned_broker.grant(identity, "orders-db", ["read"], ttl=60).json()
    done = planned_broker.post(f"/v1/grants/{body['grant_id']}/complete", headers={"Authorization": f"Bearer {identity}"})
    assert done.json()["status"] == "completed"
    with pytest.raises(psycopg.OperationalError):
        pg_bed.pg(body["credential"]["data"]["username"], body["credential"]["data"]["password"]).close()
