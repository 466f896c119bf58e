"""SIGKILL right after the ledger commit: the answer is lost, the client retries with its
Idempotency-Key, and exactly one live Vault credential remains (promise 9)."""

from __future__ import annotations

import httpx
import pytest

from broker.app import open_ledger
from broker.config import load_settings
from tests.faults.test_vault_faults import _config, _orphans
from tests.support.openbao import pg_bed, vault_bed  # noqa: F401 (fixtures)
from tests.support.replicas import _start, _stop, _wait_ready


def test_a_retry_after_a_lost_answer_leaves_one_live_token(tmp_path, issuers, vault_bed):
    task, folder = "crash-commit", tmp_path / "broker"
    body = {"task": task, "boundary": "kv-payments", "scopes": ["read"], "ttl": 300}
    headers = {"Authorization": f"Bearer {issuers.worker()}", "Idempotency-Key": "deploy-42"}
    crashing = _start(folder, _config(vault_bed, issuers, fault_injection=["crash_after_commit"]))
    _wait_ready(crashing.url, crashing.proc)
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{crashing.url}/v1/grants", headers=headers, json=body, timeout=10)
    assert crashing.proc.wait(10) == -9

    restarted = _start(folder, _config(vault_bed, issuers))
    try:
        _wait_ready(restarted.url, restarted.proc)
        retry = httpx.post(f"{restarted.url}/v1/grants", headers=headers, json=body, timeout=10)
        assert retry.status_code == 201, retry.text
        assert _orphans(vault_bed, "kv-payments", task) == [retry.json()["credential"]["accessor"]]
    finally:
        _stop(restarted.proc)
    grants = open_ledger(load_settings(folder / "broker.yaml")).grants(task=task)
    assert sorted(g.status for g in grants) == ["active", "superseded"]
