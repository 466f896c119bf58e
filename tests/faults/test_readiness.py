"""Liveness never waits for the ledger; readiness says the ledger can write, and the log says why not."""

from __future__ import annotations

import logging
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import create_engine, text

from tests.sdk.live import LiveBroker
from tests.support.broker import Issuers, broker_settings, open_client
from tests.support.postgres import SERVER, fresh_database

POOL_THREADS = 40  # anyio's default thread limiter, which sync routes share


def test_healthz_and_readyz_answer_while_sqlite_is_locked_and_the_pool_is_full(tmp_path, issuers: Issuers) -> None:
    live = LiveBroker.start(tmp_path, issuers)
    lock = sqlite3.connect(tmp_path / "broker.db", timeout=1, isolation_level=None)
    try:
        token = issuers.worker()
        with httpx.Client(base_url=live.url, trust_env=False, timeout=60) as http:
            assert http.get("/readyz").status_code == 200
            lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            blocked = _fill_the_pool(http, token)
            try:
                assert live.components.readiness.wait_for(lambda r: not r.ready(), timeout=20)
                health = http.get("/healthz", timeout=5)
                ready = http.get("/readyz", timeout=5)
                # answered while every pool thread still waits on the lock (busy_timeout 30 s): not behind it
                waiting = sum(not f.done() for f in blocked)
            finally:
                lock.execute("ROLLBACK")
            assert health.status_code == 200 and waiting == len(blocked), waiting
            assert ready.status_code == 503 and ready.json()["checks"]["ledger"] in ("timeout", "ledger_unavailable")
            assert all(f.result().status_code == 404 for f in blocked)  # served once the lock went
            assert live.components.readiness.wait_for(lambda r: r.ready(), timeout=20)
    finally:
        lock.close()
        live.stop()


def _fill_the_pool(http: httpx.Client, token: str) -> list:
    """More requests than pool threads, each stuck recording its refusal behind the lock."""
    pool = ThreadPoolExecutor(POOL_THREADS + 10)
    futures = [pool.submit(http.post, f"/v1/grants/g_missing{i}/complete", headers={"Authorization": f"Bearer {token}"})
               for i in range(POOL_THREADS + 10)]  # fmt: skip
    pool.shutdown(wait=False)
    return futures


def test_a_read_only_ledger_is_not_ready_and_the_log_says_why(tmp_path, issuers: Issuers, caplog) -> None:
    with fresh_database("broker_readonly") as url:
        settings = broker_settings(tmp_path, issuers, database_url=url, key_encryption_key=secrets.token_hex(32))
        with open_client(settings) as client:
            assert client.get("/readyz").status_code == 200
            name = url.rsplit("/", 1)[1]
            admin = create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
            try:
                with caplog.at_level(logging.WARNING), admin.connect() as conn:
                    # reads still work (`SELECT 1` passes): only a write shows the database refuses them
                    conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
                    conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                                 {"n": name})  # fmt: skip
                    assert client.components.readiness.wait_for(lambda r: not r.ready(), timeout=20)
                    ready = client.get("/readyz")
                    refused = client.grant(issuers.worker(), task="read-only")
                    conn.execute(text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
                    conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                                 {"n": name})  # fmt: skip
            finally:
                admin.dispose()
            body = ready.json()
            assert ready.status_code == 503 and body["checks"]["ledger"] == "ledger_unavailable", body
            assert "read-only database" in body["reasons"]["ledger"]
            assert refused.status_code == 503 and refused.json()["code"] == "ledger_unavailable"
            logged = [r.getMessage() for r in caplog.records if "ledger_unavailable" in r.getMessage()]
            assert any("POST /v1/grants failed" in line and "read-only database" in line for line in logged), logged
            assert client.components.readiness.wait_for(lambda r: r.ready(), timeout=20)
            assert client.grant(issuers.worker(), task="writable-again").status_code == 201


def test_a_broken_policy_edit_shows_in_readyz_and_metrics(tmp_path, issuers: Issuers) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: []\n")
    with open_client(broker_settings(tmp_path, issuers, policy=None, policy_file=policy)) as client:
        assert client.get("/readyz").json()["policy"]["reload"] == "ok"
        policy.write_text("rules: [{name: broken, match: {attestor: nowhere}}]\n")
        assert client.service.policy.reload() is False
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
    assert ready.status_code == 200, ready.text  # the old policy still serves
    assert ready.json()["policy"] == {**ready.json()["policy"], "reload": "failed", "reload_failures": 1}
    assert "broker_policy_reload_failures_total 1.0" in metrics and "broker_policy_reload_ok 0.0" in metrics
