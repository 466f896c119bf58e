"""`broker dev` starts OpenBao itself: a workload gets a real Vault token and a real PostgreSQL login, then loses both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from broker.dev import dev_token
from broker.dev_openbao import free_port
from tests.support.openbao import orders_database, pg_unavailable
from tests.support.replicas import stop_process
from tests.support.wait import wait_serving

BROKER = str(Path(sys.executable).with_name("broker"))


@pytest.fixture
def dev_broker(tmp_path):
    with orders_database() as pg_url:
        if not pg_url:
            pg_unavailable("could not connect")
        url = f"http://127.0.0.1:{free_port()}"
        proc = subprocess.Popen([BROKER, "dev", "--port", url.rsplit(":", 1)[1], "--data-dir", str(tmp_path),
                                 "--postgres-url", pg_url], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_serving(url, proc)
            yield url, tmp_path
        finally:
            stop_process(proc)


def test_dev_mode_demo_kv_and_demo_db(dev_broker):
    url, data_dir = dev_broker
    auth = {"Authorization": f"Bearer {dev_token(data_dir, 'dev:demo-workload')}"}

    def grant(boundary: str) -> dict:
        body = {"task": "demo", "boundary": boundary, "scopes": ["read"], "ttl": 120}
        answer = httpx.post(f"{url}/v1/grants", json=body, headers=auth)
        assert answer.status_code == 201, answer.text
        return answer.json()["credential"]

    kv, db = grant("demo-kv"), grant("demo-db")
    secret = httpx.get(f"{kv['vault_addr']}/v1/secret/data/demo/hello", headers={"X-Vault-Token": kv["token"]})
    assert secret.json()["data"]["data"] == {"greeting": "hello from OpenBao"}
    login = {**db["connection"], "user": db["data"]["username"], "password": db["data"]["password"]}
    login["dbname"] = login.pop("database")
    with psycopg.connect(**login, connect_timeout=3) as conn:
        assert conn.execute("SELECT item FROM broker_demo_orders").fetchall() == [("demo",)]

    assert httpx.post(f"{url}/v1/tasks/demo/complete", headers=auth).json()["revoked"] == 2
    again = httpx.get(f"{kv['vault_addr']}/v1/secret/data/demo/hello", headers={"X-Vault-Token": kv["token"]})
    assert again.status_code == 403
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**login, connect_timeout=3)
