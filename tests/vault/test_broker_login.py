"""The broker's own Vault identity: AppRole login with only the planned policy, and renewal of its token."""

from __future__ import annotations

import pytest

from broker.backends.plan import BROKER_POLICY
from broker.backends.vault import VaultClient
from broker.config import VaultConfig
from tests.support.broker import open_client
from tests.support.openbao import VaultBed


@pytest.fixture(scope="module")
def approle(vault_bed: VaultBed, tmp_path_factory) -> dict:
    """An AppRole whose tokens hold `credential-broker` only (the plan's least privilege), secret id in a file."""
    root = vault_bed.openbao.root()
    if "approle/" not in (root.read("sys/auth").get("data") or {}):
        root.write("sys/auth/approle", {"type": "approle"})
    root.write("auth/approle/role/broker", {"token_policies": [BROKER_POLICY], "token_ttl": "60s", "token_max_ttl": "10m"})
    role_id = root.read("auth/approle/role/broker/role-id")["data"]["role_id"]
    secret_file = tmp_path_factory.mktemp("approle") / "secret-id"
    secret_file.write_text(root.write("auth/approle/role/broker/secret-id", {})["data"]["secret_id"])
    return {**vault_bed.openbao.vault_config(), "auth_method": "approle", "token": None,
            "role_id": role_id, "secret_id_file": str(secret_file)}


@pytest.mark.parametrize("boundary", ["kv-payments", "orders-db"])
def test_approle_broker_with_the_planned_policy_mints_revokes_and_reconciles(tmp_path, issuers, vault_bed, approle,
                                                                             request, boundary):
    if boundary == "orders-db":
        request.getfixturevalue("pg_bed")
    identity = issuers.worker()
    with open_client(vault_bed.settings(tmp_path, issuers, vault=approle)) as broker:
        assert broker.get("/readyz").status_code == 200
        assert broker.components.worker._jobs["reconcile"].__self__.passes  # listing needs its sudo paths
        answer = broker.grant(identity, boundary, ["read"], ttl=60)
        assert answer.status_code == 201, answer.text
        done = broker.post(f"/v1/grants/{answer.json()['grant_id']}/complete", headers={"Authorization": f"Bearer {identity}"})
        assert done.json()["status"] == "completed"


def test_the_broker_renews_its_own_token_two_thirds_through_its_ttl(vault_bed: VaultBed):
    root = vault_bed.openbao.root()
    own = root.write("auth/token/create", {"ttl": "60s", "renewable": True, "policies": [BROKER_POLICY]})["auth"]
    now = [0.0]
    client = VaultClient(VaultConfig(addr=vault_bed.openbao.addr, token=own["client_token"]), clock=lambda: now[0])
    client.ensure_session()

    def renewed() -> bool:
        return "last_renewal_time" in root.write("auth/token/lookup-accessor", {"accessor": own["accessor"]})["data"]

    now[0] = 30.0
    client.ensure_session()
    assert not renewed()
    now[0] = 41.0
    client.ensure_session()
    assert renewed()
