"""The logs of a full `broker serve` run: one JSON object a line, an access line per request, no secret.

The broker runs as a real process (JSON logs at debug, the strictest setting) through real grants:
broker JWTs, OpenBao tokens, PostgreSQL credentials, token exchange, introspection, and refusals.
Then every line is read back and searched for every secret the run handled.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from broker.dev_openbao import free_port
from tests.support.openbao import POLICY, VaultBed
from tests.support.replicas import stop_process
from tests.support.wait import wait_serving

JWT_BOUNDARY = {"name": "orders", "backend": "jwt", "scopes": ["read"], "max_ttl": "10m"}
RESOURCE_SERVER = "system:serviceaccount:payments:resource"


def _config(bed: VaultBed, issuers: Any, url: str) -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["rules"][0]["allow"].append({"boundary": "orders", "scopes": ["read"], "max_ttl": "10m"})
    policy["rules"].append({"name": "rs", "match": {"attestor": "k8s", "subject": RESOURCE_SERVER},
                            "roles": ["resource_server"]})  # fmt: skip
    return {"env": "test", "issuer": url, "sqlite_synchronous": "NORMAL", "attestors": issuers.attestors(),
            "boundaries": [*bed.boundaries, JWT_BOUNDARY], "policy": policy,
            "vault": bed.openbao.vault_config(2.0), "worker_interval": 0.2}  # fmt: skip


def _serve(directory: Path, config: dict[str, Any], port: int) -> tuple[subprocess.Popen, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path, log_path = directory / "broker.yaml", directory / "serve.log"
    # short: the ledger writer's socket lives in the data dir, at most 100 bytes of path (pytest-xdist's
    # tmp_path is 40 bytes longer than pytest's)
    path.write_text(yaml.safe_dump({"data_dir": str(directory / "d"), **config}))
    broker = Path(sys.executable).with_name("broker")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(broker), "serve", "--config", str(path), "--port", str(port), "--log-format", "json",
             "--log-level", "debug"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BROKER_CONFIG": str(path)},
        )  # fmt: skip
    return proc, log_path


def _run(http: httpx.Client, issuers: Any, pg: bool) -> list[str]:
    """Everything a day of traffic does; returns every secret that crossed the wire."""
    worker, resource = issuers.worker(), issuers.k8s.k8s_token("payments", "resource")
    auth = {"Authorization": f"Bearer {worker}"}
    secrets_seen = [worker, resource, issuers.operator()]
    grants = []
    for boundary in ["orders", "kv-payments", *(["orders-db"] if pg else [])]:
        answer = http.post("/v1/grants", headers={**auth, "X-Request-Id": f"req-{boundary}"},
                           json={"task": f"logs-{boundary}", "boundary": boundary, "scopes": ["read"]})  # fmt: skip
        assert answer.status_code == 201, answer.text
        credential = answer.json()["credential"]
        secrets_seen += [credential.get("token"), *(credential.get("data") or {}).values()]
        grants.append(answer.json()["grant_id"])
    broker_jwt = secrets_seen[3]
    exchanged = http.post("/oauth/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": worker,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "resource": "orders", "scope": "read"})  # fmt: skip
    assert exchanged.status_code == 200, exchanged.text
    secrets_seen.append(exchanged.json()["access_token"])
    introspected = http.post("/oauth/introspect", data={"token": broker_jwt},
                             headers={"Authorization": f"Bearer {resource}"})  # fmt: skip
    assert introspected.json()["active"] is True, introspected.text
    # refusals: a forged identity token, a bad subject_token, a policy denial, an unknown boundary
    forged = worker[:-8] + "AAAAAAAA"
    secrets_seen.append(forged)
    assert http.post("/v1/grants", headers={"Authorization": f"Bearer {forged}"},
                     json={"task": "x", "boundary": "orders", "scopes": ["read"]}).status_code == 401  # fmt: skip
    assert http.post("/oauth/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                                           "subject_token": forged, "resource": "orders"}).status_code == 400
    assert http.post("/v1/grants", headers=auth, json={"task": "x", "boundary": "kv-billing",
                                                       "scopes": ["read"]}).status_code == 403  # fmt: skip
    assert http.post("/v1/grants", headers=auth, json={"task": "x", "boundary": "nope",
                                                       "scopes": ["read"]}).status_code == 400  # fmt: skip
    for grant_id in grants:
        assert http.post(f"/v1/grants/{grant_id}/complete", headers=auth).status_code == 200
    return [s for s in secrets_seen if s]


def test_a_full_run_logs_json_lines_with_access_lines_and_no_secret(tmp_path, issuers, vault_bed: VaultBed) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = _config(vault_bed, issuers, url)
    proc, log_path = _serve(tmp_path / "b", config, port)
    try:
        wait_serving(url, proc)
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
            handled = _run(http, issuers, bool(vault_bed.pg_url))
            assert http.get("/healthz", headers={"X-Request-Id": "mine-1"}).headers["x-request-id"] == "mine-1"
    finally:
        stop_process(proc)
    lines = log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    text = log_path.read_text()
    leaked = [s[:12] + "…" for s in [*handled, config["vault"]["token"]] if s in text]
    assert leaked == [], leaked
    access = [r for r in records if r["logger"] == "broker.access"]
    grant_lines = [r for r in access if r["route"] == "/v1/grants" and r["status"] == 201]
    assert {r["request_id"] for r in grant_lines} >= {"req-orders", "req-kv-payments"}
    assert all(r["subject_fp"].startswith("sha256:") and r["duration_ms"] >= 0 for r in grant_lines)
    assert any(r["route"] == "/v1/grants/{grant_id}/complete" for r in access)  # templates, not paths
    messages = [r["message"] for r in records if r["level"] == "info"]
    assert any(m.startswith("policy loaded") for m in messages) and any(m.startswith("broker started") for m in messages)
