"""Grants/s with 1, 2 and 3 broker replicas on one PostgreSQL database (jwt boundary, 32 clients).

    python -m bench.replicas [--seconds 10] [--concurrency 32]

Each run gets a fresh database and fresh `broker serve` processes (one uvicorn worker each); the
client sends round-robin over the replicas, as a load balancer would. Beside throughput it reports
where the CPU went (replicas, PostgreSQL, the load client), which names the first bottleneck.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from bench import scenarios as sc
from bench.harness import Result, Send, load
from tests.support.issuer import TestIssuer
from tests.support.postgres import fresh_database
from tests.support.replicas import Replica, serve_replicas

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One replica count: the load result, CPU-seconds per 1,000 grants by party, backends waiting on locks."""

    replicas: int
    result: Result
    cpu: dict[str, float]
    lock_waits: float = 0.0
    busy: float = 0.0


class LockSampler(threading.Thread):
    """Samples pg_stat_activity of the run's database: how many backends wait on a lock, how many work."""

    QUERY = text(
        "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), count(*) FILTER (WHERE state = 'active') "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._engine, self._done, self.samples = create_engine(url), threading.Event(), []

    def run(self) -> None:
        with self._engine.connect() as conn:
            while not self._done.wait(0.1):
                self.samples.append(tuple(conn.execute(self.QUERY).one()))
                conn.rollback()

    def finish(self) -> tuple[float, float]:
        self._done.set()
        self.join(5)
        self._engine.dispose()
        count = max(1, len(self.samples))
        return sum(s[0] for s in self.samples) / count, sum(s[1] for s in self.samples) / count


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def postgres_pids(url: str) -> list[int]:
    """The PostgreSQL backends serving this run's database (not the rest of the server)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            return list(conn.scalars(text(query)))
    finally:
        engine.dispose()


def round_robin(replicas: list[Replica], token: str) -> Send:
    shapes = [sc.grant_request(r.url, token, sc.JWT_BOUNDARY) for r in replicas]

    async def send(client, index: int):  # noqa: ANN001, ANN202
        shape = shapes[index % len(shapes)]
        body = shape.body.replace("{n}", str(index))
        return await client.request(shape.method, shape.url, headers=shape.headers, content=body)

    return send


def measure(tmp: Path, issuer: TestIssuer, token: str, count: int, seconds: float, concurrency: int) -> Row:
    with fresh_database("broker_bench") as url:
        config = {
            **sc.broker_config(issuer, boundaries=[sc.jwt_boundary()]),
            "database_url": url, "issuer": "http://broker.bench", "db_pool_size": 16, "db_max_overflow": 16,
        }  # fmt: skip
        with serve_replicas(tmp / f"r{count}", config, count=count) as replicas:
            send = round_robin(replicas, token)
            load("warm-up", send, concurrency, count=50 * count, time_cap=seconds, warmup=0)  # fills the pools
            pids = {"replicas": [r.proc.pid for r in replicas], "postgres": postgres_pids(url), "client": [os.getpid()]}
            before, sampler = {name: cpu_seconds(group) for name, group in pids.items()}, LockSampler(url)
            sampler.start()
            result = load(f"{count} replica(s)", send, concurrency, count=10**7, time_cap=seconds, warmup=0)
            spent = {name: cpu_seconds(group) - before[name] for name, group in pids.items()}
            lock_waits, busy = sampler.finish()
    done = max(1, result.requests - result.errors)
    return Row(count, result, {name: 1000 * value / done for name, value in spent.items()}, lock_waits, busy)


def table(rows: list[Row]) -> str:
    base = rows[0].result.rate or 1.0
    lines = [
        "replicas  grants/s  speed-up  p50 ms  p99 ms  errors  CPU-s/1k grants: replicas postgres client"
        "  PG backends: active lock-wait",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"{row.replicas:>8}  {r.rate:>8.0f}  {r.rate / base:>7.2f}x  {r.percentile(0.5):>6.1f}  "
            f"{r.percentile(0.99):>6.1f}  {r.errors:>6}  {row.cpu['replicas']:>24.2f} {row.cpu['postgres']:>8.2f} "
            f"{row.cpu['client']:>6.2f}  {row.busy:>19.1f} {row.lock_waits:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap per replica count")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    with TestIssuer() as issuer, tempfile.TemporaryDirectory() as tmp:
        token = sc.identity_token(issuer)
        started = time.time()
        rows = [measure(Path(tmp), issuer, token, n, args.seconds, args.concurrency) for n in args.replicas]
    print(f"\njwt grants on PostgreSQL, {args.concurrency} clients, {os.cpu_count()} cores, "
          f"{time.time() - started:.0f} s in all\n")  # fmt: skip
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
