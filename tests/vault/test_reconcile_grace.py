"""Periodic reconcile: an orphan older than the grace is revoked; a fresh mint (in flight elsewhere) is not."""

from __future__ import annotations

import time

from broker.backends import MintRequest
from broker.grants.reconcile import Reconciler
from tests.support.openbao import VaultBed


def _orphan(broker, boundary_name: str) -> str:
    """A Vault token minted with our metadata but never recorded: a mint whose answer was lost."""
    boundary = broker.service.boundaries[boundary_name]
    now = time.time()
    request = MintRequest(grant_id="g_lost", subject="system:serviceaccount:payments:worker", task="lost",
                          boundary=boundary, scopes=("read",), ttl=120, issued_at=now, expires_at=now + 120)  # fmt: skip
    minted = broker.service.backends[boundary.backend].mint(request)
    return minted.credential["token"]


def test_orphans_are_revoked_only_once_older_than_the_grace(vault_broker, vault_bed: VaultBed):
    token = _orphan(vault_broker, "kv-payments")
    clock = [time.time()]
    service = vault_broker.service
    reconciler = Reconciler(service.backends, list(service.boundaries.values()), service.ledger,
                            grace=30, interval=60, clock=lambda: clock[0])  # fmt: skip
    # the session's OpenBao is shared: other tests' leftovers may be reconciled too, so watch our token
    reconciler.run()
    assert vault_bed.openbao.token_lookup(token) == 200  # younger than the grace (in flight): left alone
    clock[0] += 31
    assert reconciler.run() == 0, "not due before the interval"
    assert vault_bed.openbao.token_lookup(token) == 200
    clock[0] += 30
    assert reconciler.run() >= 1 and vault_bed.openbao.token_lookup(token) == 403
    assert "reconciled" in {e.kind for e in service.ledger.events(limit=10_000)}
