"""SIGKILL right after the ledger commit: the answer is lost, the client retries with its
Idempotency-Key, and exactly one live Vault credential remains (promise 9)."""

from __future__ import annotations

import httpx
import pytest

from broker.app import open_ledger
from broker.config import load_settings
from tests.support.openbao import pg_bed, vault_bed  # noqa: F401 (fixtures)
from tests.support.replicas import start_replica, stop_process
from tests.support.wait import wait_serving


def test_a_retry_after_a_lost_answer_leaves_one_live_token(tmp_path, issuers, vault_bed):
    task, folder = "crash-commit", tmp_path / "broker"
    body = {"task": task, "boundary": "kv-payments", "scopes": ["read"], "ttl": 300}
    headers = {"Authorization": f"Bearer {issuers.worker()}", "Idempotency-Key": "deploy-42"}
    crashing = start_replica(folder, vault_bed.serve_config(issuers, fault_injection=["crash_after_commit"]))
    wait_serving(crashing.url, crashing.proc)
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{crashing.url}/v1/grants", headers=headers, json=body, timeout=10)
    assert crashing.proc.wait(10) == -9

    restarted = start_replica(folder, vault_bed.serve_config(issuers))
    try:
        wait_serving(restarted.url, restarted.proc)
        retry = httpx.post(f"{restarted.url}/v1/grants", headers=headers, json=body, timeout=10)
        assert retry.status_code == 201, retry.text
        assert vault_bed.handles("kv-payments", task) == [retry.json()["credential"]["accessor"]]
    finally:
        stop_process(restarted.proc)
    grants = open_ledger(load_settings(folder / "broker.yaml")).grants(task=task)
    assert sorted(g.status for g in grants) == ["active", "superseded"]
