"""SDK overhead: a `task` block with one grant vs the same two raw HTTP calls, on the embedded default.

    python -m bench.sdk_overhead [--count 300] [--seconds 20]

The broker runs as `broker serve` would (uvicorn subprocess, one worker, SQLite ledger, jwt backend).
Each row does grant + complete-task for a fresh task: raw httpx with a persistent
connection (with and without a hand-made DPoP proof), then the SDK (with DPoP, the default, and without).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from broker_client import Client, DpopKey

from bench.harness import broker_server
from bench.scenarios import JWT_BOUNDARY, broker_config, identity_token, jwt_boundary
from tests.support.issuer import TestIssuer


def raw(url: str, token: str, key: DpopKey | None) -> Callable[[], None]:
    http = httpx.Client(timeout=10)

    def headers(method: str, target: str) -> dict[str, str]:
        found = {"Authorization": f"Bearer {token}"}
        if key is not None:
            found["DPoP"] = key.proof(method, target, token)
        return found

    def once() -> None:
        task = f"raw-{uuid.uuid4().hex[:12]}"
        grant_url, done_url = f"{url}/v1/grants", f"{url}/v1/tasks/{task}/complete"
        body = {"task": task, "boundary": JWT_BOUNDARY, "scopes": ["read"], "ttl": 300}
        http.post(grant_url, json=body, headers=headers("POST", grant_url)).raise_for_status()
        http.post(done_url, headers=headers("POST", done_url)).raise_for_status()

    return once


def sdk(url: str, token: str, dpop: bool) -> Callable[[], None]:
    client = Client(url, token, dpop=dpop)

    def once() -> None:
        with client.task("sdk") as task:
            task.grant(JWT_BOUNDARY, ["read"], ttl=300)

    return once


def measure(plans: list[tuple[str, Callable[[], None]]], count: int, seconds: float) -> list[tuple[str, list, list]]:
    """Round-robin over the plans (so drifting machine load hits each alike): wall and client-CPU ms."""
    for _, once in plans:
        for _ in range(10):  # warm connections and caches
            once()
    wall: list[list[float]] = [[] for _ in plans]
    cpu: list[list[float]] = [[] for _ in plans]
    deadline = time.monotonic() + seconds
    while len(wall[-1]) < count and time.monotonic() < deadline:
        for i, (_, once) in enumerate(plans):
            start, start_cpu = time.perf_counter(), time.process_time()
            once()
            wall[i].append((time.perf_counter() - start) * 1000)
            cpu[i].append((time.process_time() - start_cpu) * 1000)
    return [(name, wall[i], cpu[i]) for i, (name, _) in enumerate(plans)]


def proof_cost(count: int = 2000) -> float:
    key = DpopKey()
    start = time.perf_counter()
    for _ in range(count):
        key.proof("POST", "http://127.0.0.1/v1/grants", "token")
    return (time.perf_counter() - start) / count * 1e6


def table(rows: list[tuple[str, list, list]]) -> str:
    base_wall, base_cpu = statistics.median(rows[0][1]), statistics.mean(rows[0][2])
    lines = [f"{'scenario':<34} {'n':>5} {'p50 ms':>7} {'p99 ms':>7} {'Δp50':>7} {'client CPU ms':>14} {'ΔCPU':>6}"]
    for name, wall, cpu in rows:
        p99 = sorted(wall)[max(0, round(0.99 * len(wall)) - 1)]
        p50, mean_cpu = statistics.median(wall), statistics.mean(cpu)
        lines.append(f"{name:<34} {len(wall):>5} {p50:>7.2f} {p99:>7.2f} {p50 - base_wall:>+7.2f} "
                     f"{mean_cpu:>14.2f} {mean_cpu - base_cpu:>+6.2f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_overhead")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with TestIssuer() as issuer, tempfile.TemporaryDirectory() as tmp:
        token = identity_token(issuer)
        config = broker_config(issuer, boundaries=[jwt_boundary()])
        with broker_server(Path(tmp), config, workers=1) as server:
            plans = [
                ("raw httpx, bearer (2 calls)", raw(server.url, token, None)),
                ("raw httpx + DPoP proofs (2 calls)", raw(server.url, token, DpopKey())),
                ("SDK task block, DPoP (default)", sdk(server.url, token, True)),
                ("SDK task block, dpop=False", sdk(server.url, token, False)),
            ]
            rows = measure(plans, args.count, args.seconds)
    print(table(rows))
    print(f"DPoP proof generation alone: {proof_cost():.0f} µs per proof (ES256, P-256)")


if __name__ == "__main__":
    main()
