"""The added cost of an mTLS (x509_svid) grant against a JWT grant, on one HTTPS broker.

    python -m bench.mtls [--seconds 5] [--quick]

One broker under `broker serve` (a subprocess, its default workers, SQLite ledger) serving HTTPS with
client certificates asked for. Both rows send the same `POST /v1/grants` over the same kind of
keep-alive HTTPS connections (httpx, asyncio: wrk cannot present a client certificate): the JWT
row with a Kubernetes-style RS256 identity token (Bearer, no client certificate), the mTLS row with
an X.509-SVID (leaf + intermediate) and no token. The difference is the attestation: path
validation against the trust domain's bundle and the SVID rules, versus the JWT's verification
(and its identity-token cache). A third row opens a new connection per grant, so each mTLS grant
also pays its TLS handshake with a client certificate. Last, the JWT row again from `wrk` (no client
certificate needed), the C client of every plain-HTTP row: the httpx rows measure mostly their client.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import yaml

from bench.harness import BROKER, Result, _stop, free_port, wrk_run
from bench.scenarios import JWT_BOUNDARY, broker_config, grant_request, identity_token, jwt_boundary
from broker.app import open_keys, open_ledger
from broker.config import load_settings
from tests.support import pki
from tests.support.issuer import TestIssuer

TD = "bench.internal"
JWT_ROW = "jwt grant over HTTPS (bearer identity token)"
WRK_ROW = "jwt grant over HTTPS, wrk"  # the C client of the plain-HTTP rows: the httpx rows are bound by their client
SPIFFE_ID = f"spiffe://{TD}/ns/bench/sa/worker"


class Pki:
    """A trust domain (root, intermediate), the broker's server certificate and one workload SVID."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.root = pki.ca(TD)
        inter = pki.ca(TD, self.root)
        server = pki.server(self.root)
        self.bundle, self.server, self.server_key = folder / "bundle.pem", folder / "server.pem", folder / "server-key.pem"
        self.bundle.write_bytes(self.root.pem)
        self.server.write_bytes(server.pem)
        self.server_key.write_bytes(server.key_pem)
        self.cert, self.key = pki.write_identity(folder / "svid", pki.svid(inter, SPIFFE_ID), inter)

    def context(self, *, svid: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.root.pem.decode())
        if svid:
            context.load_cert_chain(self.cert, self.key)
        return context


def config(issuer: TestIssuer, certs: Pki) -> dict:
    made = broker_config(issuer, boundaries=[jwt_boundary()], env="development")
    made["policy"]["rules"].append({"name": "bench-svid", "match": {"attestor": "spire", "subject": SPIFFE_ID},
                                    "allow": [{"boundary": JWT_BOUNDARY, "scopes": ["read"], "max_ttl": "15m"}]})
    return made | {
        "tls": {"cert_file": str(certs.server), "key_file": str(certs.server_key)},
        "x509_attestors": [{"name": "spire", "trust_domains": {TD: str(certs.bundle)}}],
    }  # fmt: skip


@contextmanager
def https_broker(directory: Path, made: dict, certs: Pki) -> Iterator[str]:
    """`broker serve` over HTTPS (bench.harness.broker_server waits on plain HTTP, so not that one)."""
    port = free_port()
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump({"issuer": f"https://127.0.0.1:{port}", "data_dir": str(directory / "data"), **made}))
    settings = load_settings(path)
    open_keys(settings)
    open_ledger(settings).engine.dispose()
    command = [BROKER, "serve", "--config", str(path), "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the HTTPS broker did not start")
            try:
                if httpx.get(f"{url}/readyz", verify=certs.context(svid=False), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        _stop(proc)


async def _drive(url: str, context: ssl.SSLContext, headers: dict, result: Result, count: int, cap: float,
                 fresh: bool) -> Result:  # fmt: skip
    """`count` grants (or until `cap` s) from `result.concurrency` keep-alive clients; latency per grant."""
    limits = httpx.Limits(max_connections=result.concurrency, max_keepalive_connections=0 if fresh else result.concurrency)
    kind = "svid" if not headers else "jwt"  # a task id of its own per row and grant
    async with httpx.AsyncClient(verify=context, limits=limits, timeout=30, trust_env=False) as client:
        async def one(index: int) -> bool:
            task = f"bench-{kind}-c{result.concurrency}{'n' if fresh else ''}-{index}"
            body = {"task": task, "boundary": JWT_BOUNDARY, "scopes": ["read"], "ttl": 300}
            try:
                return (await client.post(f"{url}/v1/grants", json=body, headers=headers)).status_code == 201
            except httpx.HTTPError:
                return False

        for i in range(10):  # warm: connections, caches, the JIT-less interpreter's first calls
            await one(-1 - i)
        started, deadline = time.perf_counter(), time.perf_counter() + cap

        async def worker() -> None:
            while result.requests < count and time.perf_counter() < deadline:
                index = result.requests
                result.requests += 1
                began = time.perf_counter()
                good = await one(index)
                result.latencies.append(time.perf_counter() - began)
                result.errors += 0 if good else 1

        await asyncio.gather(*(worker() for _ in range(result.concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


def measure(url: str, certs: Pki, token: str, count: int, seconds: float) -> list[Result]:
    bearer = {"Authorization": f"Bearer {token}"}
    plans = [  # (scenario, client context, headers, a new connection per grant, concurrency levels)
        (JWT_ROW, certs.context(svid=False), bearer, False, (1, 16)),
        ("x509_svid grant over mTLS", certs.context(svid=True), {}, False, (1, 16)),
        ("x509_svid grant over mTLS, new connection each", certs.context(svid=True), {}, True, (1,)),
    ]
    found = [asyncio.run(_drive(url, context, headers, Result(scenario, level), count, seconds, fresh))
             for level in (1, 16) for scenario, context, headers, fresh, levels in plans if level in levels]  # fmt: skip
    jwt_rows = {r.concurrency: r for r in found if r.scenario == JWT_ROW}
    for row in found:
        base = jwt_rows[row.concurrency]
        if row is not base and base.rate:
            row.ratio = row.rate / base.rate
            added = (row.percentile(0.5) or 0) - (base.percentile(0.5) or 0)
            row.note = f"p50 {added:+.1f} ms vs the jwt grant; ratio = its rate / the jwt grant's"
    return found


def rows(seconds: float, quick: bool) -> list[Result]:
    """Each row `count` grants or `seconds`, whichever first: 100 in quick mode, else 2,000."""
    count = 100 if quick else 2000
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="broker-bench-mtls-")))
        issuer = stack.enter_context(TestIssuer())
        certs = Pki(tmp / "pki")
        url = stack.enter_context(https_broker(tmp, config(issuer, certs), certs))
        token = identity_token(issuer)
        found = measure(url, certs, token, count, max(seconds, 1.0))
        return found + [wrk_run(WRK_ROW, grant_request(url, token, JWT_BOUNDARY), level, max(seconds, 1.0))
                        for level in (16, 32)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mtls", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time cap of each row")
    parser.add_argument("--quick", action="store_true", help="100 grants per row")
    args = parser.parse_args(argv)
    for row in rows(args.seconds, args.quick):
        ratio = f"  ratio {row.ratio:.2f}" if row.ratio is not None else ""
        print(f"{row.scenario} (conn {row.concurrency}): {row.requests} ({row.errors} err)  {row.rate:,.0f} grants/s  "
              f"p50 {row.percentile(0.5):.1f} ms  p99 {row.percentile(0.99):.1f} ms{ratio}  {row.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
