"""Two broker deployments (two ledgers) on one OpenBao with the same boundaries: each reconciles only its own.

The deployment id is stamped in every minted token's metadata; a derived id is stored in the
ledger, so a restart (or another replica on the same database) keeps it. Leases carry no
metadata: with `reconcile_unknown_leases: false` reconcile revokes only leases its ledger knows.
"""

from __future__ import annotations

import time
from functools import partial

import pytest

import broker.app
from broker.backends import MintRequest
from broker.backends.vault_token import VaultTokenBackend
from tests.support.broker import open_client
from tests.support.openbao import VaultBed


@pytest.fixture(autouse=True)
def reconcile_ahead(monkeypatch) -> None:
    """Reconcile's clock runs 5 s ahead, so what was just minted is past its 1 s grace (Vault stamps whole seconds)."""
    monkeypatch.setattr(broker.app, "Reconciler", partial(broker.app.Reconciler, clock=lambda: time.time() + 5))


def _orphan(bed: VaultBed, client, deployment: str) -> str:  # noqa: ANN001
    """A token of `deployment` minted but never recorded (a crash between the mint and the ledger)."""
    now = time.time()
    boundary = client.service.boundaries["kv-payments"]
    request = MintRequest(grant_id="g_lost", subject="system:serviceaccount:payments:worker", task="lost",
                          boundary=boundary, scopes=("read",), ttl=120, issued_at=now, expires_at=now + 120)  # fmt: skip
    return VaultTokenBackend(bed.openbao.root(), deployment).mint(request).credential["token"]


def test_the_second_deployment_reconciles_nothing_of_the_first(tmp_path, issuers, vault_bed: VaultBed):
    boundaries = ["kv-payments"] + (["orders-db"] if vault_bed.pg_url else [])
    shared = {"reconcile_grace": 1, "vault": {**vault_bed.openbao.vault_config(2.0), "reconcile_unknown_leases": False}}
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    with open_client(vault_bed.settings(first_dir, issuers, **shared)) as first:
        held = [first.grant(issuers.worker(), name, ["read"], ttl=300).json()["credential"] for name in boundaries]
        mine = _orphan(vault_bed, first, "second")

        with open_client(vault_bed.settings(second_dir, issuers, deployment_id="second", **shared)) as second:
            assert second.components.worker._jobs["reconcile"].__self__.passes == 1  # ran before serving
            assert vault_bed.openbao.token_lookup(mine) == 403  # its own orphan: revoked
            for credential in held:  # the first deployment's live credentials: untouched
                if credential["type"] == "vault_token":
                    assert vault_bed.openbao.token_lookup(credential["token"]) == 200
                else:
                    assert vault_bed.openbao.lease_exists(credential["lease_id"])
            assert all(e.detail["reason"] == "no live grant row" for e in second.events("reconciled"))
            assert len(second.events("reconciled")) == 1


def test_a_derived_deployment_id_is_stored_and_survives_a_restart(tmp_path, issuers, vault_bed: VaultBed):
    settings = vault_bed.settings(tmp_path, issuers)
    with open_client(settings) as broker:
        first = broker.service.backends["vault_token"].deployment
        token = broker.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).json()["credential"]
    with open_client(settings) as broker:
        assert broker.service.backends["vault_token"].deployment == first
    meta = vault_bed.openbao.root().write("auth/token/lookup-accessor", {"accessor": token["accessor"]})["data"]["meta"]
    assert meta["deployment"] == first and first.startswith("d-")


def test_a_lease_this_ledger_ended_is_reconciled_even_when_unknown_leases_are_left(tmp_path, issuers, pg_bed: VaultBed):
    """A lease whose grant the ledger ended while Vault kept it (a lost revocation) is this deployment's."""
    shared = {"reconcile_grace": 1, "vault": {**pg_bed.openbao.vault_config(2.0), "reconcile_unknown_leases": False}}
    settings = pg_bed.settings(tmp_path, issuers, **shared)
    with open_client(settings) as broker:
        body = broker.grant(issuers.worker(), "orders-db", ["read"], ttl=300).json()
        moved = broker.service.ledger.begin_revoke([body["grant_id"]], end_status="completed", actor="test", reason="t")
        broker.service.ledger.finish_revoke(moved[0].id)  # ledger says ended; Vault never heard of it
    assert pg_bed.openbao.lease_exists(body["credential"]["lease_id"])
    with open_client(settings):
        assert not pg_bed.openbao.lease_exists(body["credential"]["lease_id"])
