"""Vault issuance through the broker next to OpenBao's own endpoints, and complete → credential unusable.

    .venv/bin/python -m bench.vault_issue [--seconds 10] [--concurrency 8]

Real processes on loopback: an OpenBao dev server, `broker serve` (uvicorn, 1 worker, SQLite
ledger), PostgreSQL at 127.0.0.1:5432 (a fresh database, dropped at the end). One httpx client
drives every phase with the same concurrency; each phase is bounded in time and count.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import yaml

from broker.dev import DEMO_TABLE, create_demo_table, demo_db_boundary, demo_kv_boundary, dev_config, dev_token
from broker.dev_openbao import OpenBaoServer, free_port

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
MAX_PER_PHASE = 20_000


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vault_issue", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase (10-20 s)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20, help="complete → unusable samples per backend")
    return parser.parse_args()


@contextmanager
def bench_database() -> Iterator[str]:
    name = "broker_bench_" + secrets.token_hex(4)
    with psycopg.connect(f"{PG_SERVER}/test", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def broker_process(workdir: Path, server: OpenBaoServer, pg_url: str) -> Iterator[str]:
    """`broker serve` on a free port with the dev config's demo-kv and demo-db boundaries."""
    port = free_port()
    config = dev_config(workdir, port, vault=server.vault_config(),
                        extra_boundaries=[demo_kv_boundary(), demo_db_boundary(pg_url)])
    config["sqlite_synchronous"] = "NORMAL"
    config["limits"] = {"max_active_grants": None, "issue_rate": None}  # one subject at full speed
    (workdir / "broker.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([str(Path(sys.executable).with_name("broker")), "serve", "--config",
                             str(workdir / "broker.yaml"), "--port", str(port), "--workers", "1",
                             "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def _wait(ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("timed out waiting for a process to become ready")


def prepare_vault(server: OpenBaoServer, pg_url: str, workdir: Path) -> None:
    from broker.backends.plan import apply_plan, make_plan
    from broker.backends.vault import VaultClient
    from broker.config import VaultConfig, load_settings
    from broker.dev_openbao import configure_database_engine

    create_demo_table(pg_url)
    vault = VaultClient(VaultConfig(**server.vault_config()))
    configure_database_engine(vault, "demo-db", pg_url)
    settings = load_settings(workdir / "broker.yaml")
    apply_plan(make_plan(settings), vault)


def load(call: Callable[[], httpx.Response], seconds: float, concurrency: int) -> dict[str, float]:
    """Run `call` from `concurrency` threads for `seconds` (at most MAX_PER_PHASE calls); rate and latency."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline and len(latencies) < MAX_PER_PHASE:
            start = time.perf_counter()
            ok = call().status_code in (200, 201)
            took = time.perf_counter() - start
            with lock:
                latencies.append(took) if ok else errors.__setitem__(0, errors[0] + 1)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    return _summary(latencies, errors[0], elapsed)


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies) or [float("nan")]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"n": len(latencies), "rate": len(latencies) / elapsed, "p50": statistics.median(ordered) * 1000,
            "p99": p99 * 1000, "errors": errors}


def issuance_phases(client: httpx.Client, broker: str, server: OpenBaoServer, token: str) -> dict[str, Callable]:
    auth = {"Authorization": f"Bearer {token}"}
    root = {"X-Vault-Token": server.root_token}
    create = {"ttl": "300s", "explicit_max_ttl": "300s", "renewable": False,
              "meta": {"grant_id": "bench", "task": "bench", "subject": "bench", "boundary": "bench"}}

    def grant(boundary: str) -> Callable[[], httpx.Response]:
        body = {"task": "bench-" + boundary, "boundary": boundary, "scopes": ["read"], "ttl": 300}
        return lambda: client.post(f"{broker}/v1/grants", json=body, headers=auth)

    return {
        "broker jwt baseline (POST /v1/grants demo)": grant("demo"),
        "broker vault_token (POST /v1/grants demo-kv)": grant("demo-kv"),
        "openbao auth/token/create/demo-kv-read": lambda: client.post(
            f"{server.addr}/v1/auth/token/create/demo-kv-read", json=create, headers=root),
        "broker vault_secret (POST /v1/grants demo-db)": grant("demo-db"),
        "openbao database/creds/demo-db-read": lambda: client.get(
            f"{server.addr}/v1/database/creds/demo-db-read", headers=root),
    }


def token_unusable(client: httpx.Client, server: OpenBaoServer, credential: dict) -> bool:
    """A root lookup of the token fails (minted tokens have no `default` policy, so no `lookup-self`)."""
    url = f"{server.addr}/v1/auth/token/lookup"
    answer = client.post(url, json={"token": credential["token"]}, headers={"X-Vault-Token": server.root_token})
    return answer.status_code == 403


def db_unusable(pg_url: str, credential: dict) -> bool:
    user, password = credential["data"]["username"], credential["data"]["password"]
    try:
        psycopg.connect(pg_url.replace("postgres@", f"{user}:{password}@"), connect_timeout=2).close()
        return False
    except psycopg.OperationalError:
        return True


def completion_times(client: httpx.Client, broker: str, token: str, boundary: str,
                     unusable: Callable[[dict], bool], samples: int) -> dict[str, float]:
    """Seconds from sending `complete` to the first failed use of the credential."""
    auth = {"Authorization": f"Bearer {token}"}
    times = []
    for i in range(samples):
        body = {"task": f"done-{boundary}-{i}", "boundary": boundary, "scopes": ["read"], "ttl": 300}
        grant = client.post(f"{broker}/v1/grants", json=body, headers=auth).json()
        assert not unusable(grant["credential"]), "fresh credential must work"
        start = time.perf_counter()
        client.post(f"{broker}/v1/grants/{grant['grant_id']}/complete", headers=auth)
        while not unusable(grant["credential"]):
            time.sleep(0.001)
        times.append(time.perf_counter() - start)
    return {**_summary(times, 0, 1.0), "rate": float("nan")}


def cleanup(client: httpx.Client, server: OpenBaoServer) -> None:
    """Revoke every lease before OpenBao stops, so PostgreSQL keeps no bench roles."""
    client.put(f"{server.addr}/v1/sys/leases/revoke-prefix/database/creds", headers={"X-Vault-Token": server.root_token},
               timeout=300)


def main() -> None:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp, bench_database() as pg_url:
        workdir = Path(tmp)
        server = OpenBaoServer(log_path=workdir / "openbao.log").start()
        try:
            with broker_process(workdir, server, pg_url) as broker, httpx.Client(
                timeout=30, limits=httpx.Limits(max_connections=args.concurrency * 2)
            ) as client:
                prepare_vault(server, pg_url, workdir)
                try:
                    _run(args, client, broker, server, pg_url, dev_token(workdir, "dev:demo-workload", 3600))
                finally:
                    cleanup(client, server)
        finally:
            server.stop()


def _run(args: argparse.Namespace, client: httpx.Client, broker: str, server: OpenBaoServer, pg_url: str,
         token: str) -> None:
    rows = []
    for name, call in issuance_phases(client, broker, server, token).items():
        rows.append((name, load(call, args.seconds, args.concurrency)))
    rows.append(("complete → vault_token unusable", completion_times(
        client, broker, token, "demo-kv", lambda c: token_unusable(client, server, c), args.samples)))
    rows.append(("complete → vault_secret unusable (psql login)", completion_times(
        client, broker, token, "demo-db", lambda c: db_unusable(pg_url, c), args.samples)))
    print(f"\nconcurrency {args.concurrency}, {args.seconds:.0f} s per phase, 1 uvicorn worker, table {DEMO_TABLE}")
    print(f"{'phase':<48} {'n':>6} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, r in rows:
        print(f"{name:<48} {r['n']:>6.0f} {r['rate']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6.0f}")


if __name__ == "__main__":
    main()
