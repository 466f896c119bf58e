"""Promise 3: the Vault token or lease lives exactly as long as the grant (± 1 s)."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.support.openbao import VaultBed
from tests.support.wait import wait_until


def _vault_expiry(bed: VaultBed, credential: dict) -> float:
    root = bed.openbao.root()
    if credential["type"] == "vault_token":
        data = root.write("auth/token/lookup-accessor", {"accessor": credential["accessor"]})["data"]
    else:
        data = root.write("sys/leases/lookup", {"lease_id": credential["lease_id"]})["data"]
    return datetime.fromisoformat(data["expire_time"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("ttl", [45, 300], ids=["short", "five-minutes"])
@pytest.mark.parametrize("boundary", ["kv-payments", "orders-db"])
def test_vault_ttl_equals_grant_ttl(vault_broker, issuers, vault_bed: VaultBed, request, boundary, ttl):
    if boundary == "orders-db":
        request.getfixturevalue("pg_bed")
    answer = vault_broker.grant(issuers.worker(), boundary, ["read"], ttl=ttl)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    granted = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
    assert abs(_vault_expiry(vault_bed, body["credential"]) - granted) <= 1.0


def test_reaper_revokes_the_lease_of_an_expired_grant(vault_broker, issuers, pg_bed: VaultBed):
    body = vault_broker.grant(issuers.worker(), "orders-db", ["read"], ttl=2).json()
    wait_until(lambda: vault_broker.service.ledger.grant_status(body["grant_id"]) == "expired", 10, "the reaper",
               interval=0.2)  # fmt: skip
    assert not pg_bed.openbao.lease_exists(body["credential"]["lease_id"])
