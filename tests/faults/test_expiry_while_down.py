"""1,000 grants whose TTL runs out while the broker is down: after restart every one is `expired`.

The first broker only issues (its components are built, no lifespan, so no reaper runs) and is
then shut down; the grants expire with nobody watching. The restarted broker's start-up pass and
reaper must end all of them as `expired`, one `expired` event each, and their OpenBao tokens dead.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from broker.app import build
from broker.grants import GrantRequest
from tests.support.broker import open_client
from tests.support.openbao import VaultBed, vault_bed  # noqa: F401 (fixture)
from tests.support.wait import wait_until

COUNT = 1000
TTL = 2
BOUNDARY = "kv-payments"


def _issue_all(settings, token: str) -> list[dict]:  # noqa: ANN001
    """Issue COUNT vault_token grants on a broker that never starts its workers, then shut it down."""
    service = build(settings).service
    identity = service.authenticate(token, action="test")

    def one(index: int) -> dict:
        request = GrantRequest(task=f"down-{index}", boundary=BOUNDARY, scopes=("read",), ttl=TTL)
        return service.issue(identity, request).credential

    with ThreadPoolExecutor(8) as pool:
        issued = list(pool.map(one, range(COUNT)))
    service.ledger.engine.dispose()
    return issued


def _all_expired(client) -> list:  # noqa: ANN001
    grants = client.service.ledger.grants(boundary=BOUNDARY)
    return grants if all(g.status == "expired" for g in grants) else []


def test_grants_expiring_while_down_are_expired_and_revoked_after_restart(tmp_path, issuers, vault_bed) -> None:
    quiet = vault_bed.settings(tmp_path, issuers, worker_interval=3600)
    credentials = _issue_all(quiet, issuers.worker())
    assert len(credentials) == COUNT
    time.sleep(TTL + 0.5)  # the broker is down: every TTL runs out unobserved
    with open_client(vault_bed.settings(tmp_path, issuers, worker_interval=0.2)) as client:
        grants = wait_until(lambda: _all_expired(client), 60, "every grant expired", interval=0.2)
        expired_events = {e.grant_id for e in client.events("expired")}
    assert len(grants) == COUNT and {g.status for g in grants} == {"expired"}
    assert {g.id for g in grants} <= expired_events
    assert {g.end_actor for g in grants} == {"broker:reaper"}
    assert all(vault_bed.openbao.token_lookup(c["token"]) == 403 for c in credentials[:: COUNT // 50])
