"""Readiness while OpenBao hangs: the broker stays in the load balancer, only the Vault boundaries degrade."""

from __future__ import annotations

import copy
import re
import time

from tests.support.broker import open_client
from tests.support.openbao import POLICY, VaultBed

JWT_BOUNDARY = {"name": "orders", "backend": "jwt", "scopes": ["read"], "max_ttl": "10m"}


def _policy() -> dict:
    policy = copy.deepcopy(POLICY)
    policy["rules"][0]["allow"].append({"boundary": "orders", "scopes": ["read"], "max_ttl": "10m"})
    return policy


def _timed(client, path: str):  # noqa: ANN001, ANN202
    started = time.perf_counter()
    answer = client.get(path)
    return answer, time.perf_counter() - started


def test_paused_openbao_degrades_only_its_boundaries(tmp_path, issuers, vault_bed: VaultBed) -> None:
    settings = vault_bed.settings(tmp_path, issuers, boundaries=[*vault_bed.boundaries, JWT_BOUNDARY], policy=_policy())
    vault_names = sorted(b["name"] for b in vault_bed.boundaries)
    with open_client(settings) as client:
        ready, _ = _timed(client, "/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"] == [], ready.text
        readiness = client.components.readiness
        with vault_bed.openbao.outage():
            assert readiness.wait_for(lambda r: r.degraded() == vault_names, timeout=20)
            ready, took = _timed(client, "/readyz")
            jwt_grant = client.grant(issuers.worker(), "orders", ["read"], task="while-down")
            vault_grant = client.grant(issuers.worker(), "kv-payments", ["read"], task="while-down")
            metrics = client.get("/metrics").text
        assert took < 1.0, took
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "ready", body
        assert body["checks"] == {"ledger": "ok", "keys": "ok"} and body["degraded"] == vault_names
        assert set(body["backends"].values()) <= {"backend_unavailable", "timeout"}
        assert jwt_grant.status_code == 201, jwt_grant.text
        assert vault_grant.status_code == 503 and vault_grant.json()["code"] == "backend_unavailable"
        assert re.search(r'^broker_boundary_degraded\{boundary="kv-payments"\} 1\.0$', metrics, re.M)
        assert re.search(r'^broker_boundary_degraded\{boundary="orders"\} 0\.0$', metrics, re.M)
        assert re.search(r"^broker_ready 1\.0$", metrics, re.M)
        # resumed: the next checks clear the degradation
        assert readiness.wait_for(lambda r: r.degraded() == [], timeout=20)
        assert client.get("/readyz").json()["degraded"] == []
