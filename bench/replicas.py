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
import time
from dataclasses import dataclass
from pathlib import Path

from bench import scenarios as sc
from bench.harness import Result, Send, load
from tests.support.issuer import TestIssuer
from tests.support.postgres import fresh_database
from tests.support.replicas import Replica, serve_replicas

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One replica count: the load result and CPU-seconds spent per 1,000 grants by each party."""

    replicas: int
    result: Result
    cpu: dict[str, float]


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


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def round_robin(replicas: list[Replica], token: str) -> Send:
    sends = [sc.grant_request(r.url, token, sc.JWT_BOUNDARY) for r in replicas]

    async def send(client, index: int):  # noqa: ANN001, ANN202
        return await sends[index % len(sends)](client, index)

    return send


def measure(tmp: Path, issuer: TestIssuer, token: str, count: int, seconds: float, concurrency: int) -> Row:
    with fresh_database("broker_bench") as url:
        config = {
            **sc.broker_config(issuer, boundaries=[sc.jwt_boundary()]),
            "database_url": url, "issuer": "http://broker.bench", "db_pool_size": 16, "db_max_overflow": 16,
        }  # fmt: skip
        with serve_replicas(tmp / f"r{count}", config, count=count) as replicas:
            parties = {"replicas": lambda: [r.proc.pid for r in replicas], "postgres": postgres_pids,
                       "client": lambda: [os.getpid()]}  # fmt: skip
            before = {name: cpu_seconds(pids()) for name, pids in parties.items()}
            result = load(f"{count} replica(s)", round_robin(replicas, token), concurrency,
                          count=10**7, time_cap=seconds, warmup=20 * count)  # fmt: skip
            spent = {name: cpu_seconds(pids()) - before[name] for name, pids in parties.items()}
    done = max(1, result.requests - result.errors)
    return Row(count, result, {name: 1000 * value / done for name, value in spent.items()})


def table(rows: list[Row]) -> str:
    base = rows[0].result.rate or 1.0
    lines = [
        "replicas  grants/s  speed-up  p50 ms  p99 ms  errors  CPU-s per 1k grants: replicas  postgres  client",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"{row.replicas:>8}  {r.rate:>8.0f}  {r.rate / base:>7.2f}x  {r.percentile(0.5):>6.1f}  "
            f"{r.percentile(0.99):>6.1f}  {r.errors:>6}  {row.cpu['replicas']:>28.2f}  {row.cpu['postgres']:>8.2f}  "
            f"{row.cpu['client']:>6.2f}"
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
