"""Promise 3: the Vault token or lease lives exactly as long as the grant (± 1 s)."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.support.broker import open_client
from tests.support.openbao import VaultBed, recorded
from tests.support.wait import wait_until


def _epoch(instant: str) -> float:
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()


def _vault_expiry(bed: VaultBed, credential: dict) -> float:
    root = bed.openbao.root()
    if credential["type"] == "vault_token":
        data = root.write("auth/token/lookup-accessor", {"accessor": credential["accessor"]})["data"]
    else:
        data = root.write("sys/leases/lookup", {"lease_id": credential["lease_id"]})["data"]
    return _epoch(data["expire_time"])


# 300 s: the boundary's default, the engine role's `default_ttl` in the plan; 600 s: a lease lengthened
@pytest.mark.parametrize("ttl", [45, 300, 600], ids=["short", "five-minutes", "ten-minutes"])
@pytest.mark.parametrize("boundary", ["kv-payments", "orders-db"])
def test_vault_ttl_equals_grant_ttl(vault_broker, issuers, vault_bed: VaultBed, request, boundary, ttl):
    if boundary == "orders-db":
        request.getfixturevalue("pg_bed")
    answer = vault_broker.grant(issuers.worker(), boundary, ["read"], ttl=ttl)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    granted = _epoch(body["expires_at"])
    assert abs(_vault_expiry(vault_bed, body["credential"]) - granted) <= 1.0


def test_reaper_revokes_the_lease_of_an_expired_grant(vault_broker, issuers, pg_bed: VaultBed):
    body = vault_broker.grant(issuers.worker(), "orders-db", ["read"], ttl=2).json()
    wait_until(lambda: vault_broker.service.ledger.grant_status(body["grant_id"]) == "expired", 10, "the reaper",
               interval=0.2)  # fmt: skip
    assert not pg_bed.openbao.lease_exists(body["credential"]["lease_id"])


@pytest.mark.parametrize(("ttl", "renewed"), [(None, False), (300, False), (45, True), (600, True)],
                         ids=["no-ttl", "default", "shorter", "longer"])
def test_a_lease_of_the_default_ttl_costs_one_vault_call_another_one_renew(tmp_path, issuers, pg_bed: VaultBed,
                                                                           ttl, renewed):
    """The plan's engine role hands out leases of the boundary's default grant TTL: such a grant is one
    read of `database/creds/…`; any other TTL adds one `sys/leases/renew` of that lease to the grant's."""
    with recorded(pg_bed.openbao) as (addr, exchanges):
        vault = {**pg_bed.openbao.vault_config(5.0), "addr": addr}
        with open_client(pg_bed.settings(tmp_path, issuers, vault=vault)) as broker:
            answer = broker.grant(issuers.worker(), "orders-db", ["read"], task=f"one-call-{ttl}",
                                  **({"ttl": ttl} if ttl else {}))  # fmt: skip
            assert answer.status_code == 201, answer.text
            body = answer.json()
            granted = _epoch(body["expires_at"])
            assert abs(_vault_expiry(pg_bed, body["credential"]) - granted) <= 1.0
    lease = body["credential"]["lease_id"]
    minting = [(e.path, e.sent) for e in exchanges if e.path.startswith(("database/creds/", "sys/leases/renew/"))]
    assert minting[0][0] == "database/creds/orders-db-read"
    assert minting[1:] == ([(f"sys/leases/renew/{lease}", {"increment": ttl})] if renewed else [])
