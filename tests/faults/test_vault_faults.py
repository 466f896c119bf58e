"""Vault or the broker failing mid-way: nothing handed out, no revocation lost, no orphan left.

OpenBao outages are SIGSTOP pauses (see tests/support/openbao.py for why not a restart).
The crash test runs `broker serve` as a real process that SIGKILLs itself right after the mint.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from broker.app import open_ledger
from broker.config import load_settings
from broker.fingerprint import fingerprint
from tests.support.broker import BrokerClient, open_client
from tests.support.openbao import Exchange, VaultBed, pg_bed, recorded, vault_bed  # noqa: F401 (fixtures)
from tests.support.replicas import start_replica, stop_process
from tests.support.wait import wait_serving, wait_until

BOUNDARIES = [pytest.param("kv-payments", id="vault_token"), pytest.param("orders-db", id="vault_secret")]


@pytest.fixture(params=BOUNDARIES)
def boundary(request) -> str:
    if request.param == "orders-db":
        request.getfixturevalue("pg_bed")
    return request.param


@pytest.fixture
def broker_1s(tmp_path, issuers, vault_bed: VaultBed) -> Iterator[BrokerClient]:
    """A broker whose Vault calls time out after 1 s and whose retries wait at most 1 s."""
    settings = vault_bed.settings(tmp_path, issuers, timeout=1.0, revoke_retry_max_delay=1)
    with open_client(settings) as client:
        yield client


def _credential_alive(bed: VaultBed, credential: dict) -> bool:
    if credential["type"] == "vault_token":
        return bed.openbao.token_lookup(credential["token"]) == 200
    return bed.openbao.lease_exists(credential["lease_id"])


def test_vault_down_at_issue_answers_503_records_denied_and_grants_nothing(broker_1s, issuers, vault_bed, boundary):
    with vault_bed.openbao.outage():
        answer = broker_1s.grant(issuers.worker(), boundary, ["read"], ttl=60)
    assert answer.status_code == 503 and answer.json()["code"] == "backend_unavailable"
    assert answer.headers["content-type"].startswith("application/problem+json")
    denied = broker_1s.events("denied")[-1]
    assert (denied.boundary, denied.detail["code"]) == (boundary, "backend_unavailable")
    assert broker_1s.service.ledger.grants(boundary=boundary) == []


def test_vault_down_at_completion_stays_pending_then_the_worker_revokes(broker_1s, issuers, vault_bed, boundary):
    identity = {"Authorization": f"Bearer {issuers.worker()}"}
    body = broker_1s.grant(issuers.worker(), boundary, ["read"], ttl=120).json()
    assert _credential_alive(vault_bed, body["credential"]), "minted and live in OpenBao"
    with vault_bed.openbao.outage():
        done = broker_1s.post(f"/v1/grants/{body['grant_id']}/complete", headers=identity)
        assert done.json()["status"] == "revoke_pending"
        ledger = broker_1s.service.ledger
        wait_until(lambda: ledger.get_grant(body["grant_id"]).revoke_attempts >= 2, 15, "a retry into the outage")
        assert broker_1s.get(f"/v1/grants/{body['grant_id']}", headers=identity).json()["status"] == "revoke_pending"
    wait_until(lambda: ledger.grant_status(body["grant_id"]) == "completed", 15, "the worker's revocation")
    assert broker_1s.get(f"/v1/grants/{body['grant_id']}", headers=identity).json()["status"] == "completed"
    trail = [e.kind for e in broker_1s.events() if e.grant_id == body["grant_id"]]
    assert trail[0] == "issued" and trail[-1] == "completed" and set(trail[1:-1]) == {"revoke_failed"}
    assert not _credential_alive(vault_bed, body["credential"])


# --- the broker dies between the mint and the ledger commit --------------------------------


def test_sigkill_after_mint_leaves_an_orphan_that_restart_revokes(tmp_path, issuers, vault_bed, boundary):
    task, folder = f"crash-{boundary}", tmp_path / "broker"
    crashing = start_replica(folder, vault_bed.serve_config(issuers, fault_injection=["crash_after_mint"]))
    wait_serving(crashing.url, crashing.proc)
    before = set(vault_bed.handles(boundary, task))
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{crashing.url}/v1/grants", headers={"Authorization": f"Bearer {issuers.worker()}"},
                   json={"task": task, "boundary": boundary, "scopes": ["read"], "ttl": 300}, timeout=10)
    assert crashing.proc.wait(10) == -9
    orphans = set(vault_bed.handles(boundary, task)) - before
    assert len(orphans) == 1, "the mint reached Vault before the crash"
    time.sleep(1.1)  # Vault stamps creation in whole seconds; the restart must start after it

    restarted = start_replica(folder, vault_bed.serve_config(issuers))  # same data dir, no fault injection
    try:
        wait_serving(restarted.url, restarted.proc)  # reconcile runs before the broker serves
        assert not set(vault_bed.handles(boundary, task)) & orphans
    finally:
        stop_process(restarted.proc)
    ledger = open_ledger(load_settings(folder / "broker.yaml"))
    reconciled = [e for e in ledger.events(limit=10_000) if e.kind == "reconciled"]
    assert fingerprint(orphans.pop())[:23] in {e.detail["handle_fp"] for e in reconciled}
    assert ledger.grants(boundary=boundary) == []


def test_ledger_failing_after_mint_revokes_the_vault_credential(tmp_path, issuers, vault_bed, boundary):
    task = f"ledger-down-{boundary}"
    with recorded(vault_bed.openbao) as (addr, exchanges):
        vault = {**vault_bed.openbao.vault_config(2.0), "addr": addr}
        settings = vault_bed.settings(tmp_path, issuers, fault_injection={"fail_ledger_after_mint"}, vault=vault)
        with open_client(settings) as broker:
            answer = broker.grant(issuers.worker(), boundary, ["read"], ttl=60, task=task)
    assert answer.status_code == 503 and answer.json()["code"] == "ledger_unavailable"
    mints = [e for e in exchanges if e.status == 200 and _minted(e, task)]
    assert len(mints) == 1, "the credential was minted in OpenBao before the ledger failed"
    handle = _minted(mints[0], task)
    revokes = [e for e in exchanges[exchanges.index(mints[0]):] if _revokes(e, handle)]
    assert [e.status for e in revokes] == [204], "then revoked, once"
    exists = vault_bed.openbao.lease_exists if boundary == "orders-db" else vault_bed.openbao.accessor_exists
    assert not exists(handle)
    assert broker.service.ledger.grants(boundary=boundary) == []


def _minted(exchange: Exchange, task: str) -> str | None:
    """The handle (token accessor, lease id) a mint of this task got from OpenBao, or None."""
    if exchange.path.startswith("auth/token/create/") and exchange.sent.get("meta", {}).get("task") == task:
        return exchange.answer["auth"]["accessor"]
    if exchange.path.startswith("database/creds/"):
        return exchange.answer["lease_id"]
    return None


def _revokes(exchange: Exchange, handle: str) -> bool:
    return exchange.path == f"sys/leases/revoke/{handle}" or (
        exchange.path == "auth/token/revoke-accessor" and exchange.sent.get("accessor") == handle
    )
