"""Ways to revoke one subject's 10,000 Vault tokens, measured against a real OpenBao (issue 17, goal 4: <= 5 s).

    python -m bench.vault_revoke [--count 10000] [--threads 16] [--only accessor-default,accessor-pool,prefix,parent]

OpenBao alone, no broker: these are the API patterns `vault_token` revocation could use, each on its
own fresh set of `count` tokens (minted untimed, 16 threads, keep-alive):
  accessor-default  `auth/token/revoke-accessor` per token on `threads` threads over ONE hvac client
                    with requests' default pool (10 connections per host; the broker's client today)
  accessor-pool     the same with a keep-alive session whose pool is sized to the threads
  prefix            one `sys/leases/revoke-prefix/auth/token/create/<role>` call (every token of the role;
                    per subject only if the subject has its own token role)
  parent            one parent token per (subject, boundary), each grant a child of it made through the
                    token role; revoking the subject is one `auth/token/revoke` of the parent (its tree)
The timed part ends when the call(s) return; then a sample of the tokens must all answer 403 to
`lookup-self` (and how long after the call that held is printed too).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import hvac
import requests
from requests.adapters import HTTPAdapter

from bench.harness import cpu_seconds
from broker.dev_openbao import OpenBaoServer

ROLE_TTL = "1h"
READ_POLICY = 'path "secret/data/bench/*" { capabilities = ["read"] }'
OPTIONS = ("accessor-default", "accessor-pool", "prefix", "parent")


@dataclass
class Measured:
    option: str
    tokens: int
    calls: int
    seconds: float
    unusable_after: float  # seconds from the start until every sampled token was refused
    usable_in_sample: int
    sample: int
    bao_cpu: float  # OpenBao's user + sys CPU seconds during the revocation: less dependent on a busy machine


class Bao:
    """Plain keep-alive HTTP to OpenBao for setup, seeding and checks (one httpx client per thread)."""

    def __init__(self, server: OpenBaoServer) -> None:
        self.addr, self.root = server.addr, server.root_token
        self.pid = server._process.pid  # noqa: SLF001 (its CPU time is measured)
        self._local = threading.local()

    def client(self) -> httpx.Client:
        if getattr(self._local, "client", None) is None:
            self._local.client = httpx.Client(base_url=self.addr, timeout=60.0, trust_env=False)
        return self._local.client

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> httpx.Response:
        response = self.client().request(method, f"/v1/{path}", json=body, headers={"X-Vault-Token": token or self.root})
        if response.status_code >= 400 and response.status_code != 403:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    def role(self, name: str) -> None:
        self.call("POST", f"sys/policies/acl/{name}-read", {"policy": READ_POLICY})
        self.call("POST", f"auth/token/roles/{name}", {"allowed_policies": [f"{name}-read"], "orphan": False,
                                                       "token_explicit_max_ttl": ROLE_TTL, "renewable": False})

    def parent(self, role: str) -> str:
        """A token that may only create children through `role` (one per subject and boundary)."""
        self.call("POST", f"sys/policies/acl/{role}-parent",
                  {"policy": f'path "auth/token/create/{role}" {{ capabilities = ["create", "update"] }}'})
        body = {"policies": [f"{role}-parent"], "ttl": ROLE_TTL, "renewable": False, "display_name": "bench-parent"}
        return self.call("POST", "auth/token/create", body).json()["auth"]["client_token"]

    def seed(self, role: str, count: int, parent: str | None = None) -> list[tuple[str, str]]:
        """`count` tokens through `role` (by root, or as children of `parent`): (token, accessor) pairs."""
        body = {"ttl": "10m", "explicit_max_ttl": "10m", "renewable": False, "policies": [f"{role}-read"],
                "meta": {"subject": "bench:victim"}}  # fmt: skip

        def one(_: int) -> tuple[str, str]:
            auth = self.call("POST", f"auth/token/create/{role}", body, token=parent).json()["auth"]
            return auth["client_token"], auth["accessor"]

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, range(count)))

    def usable(self, token: str) -> bool:
        return self.client().get("/v1/auth/token/lookup-self", headers={"X-Vault-Token": token}).status_code == 200


def hvac_client(server: OpenBaoServer, pool: int | None) -> hvac.Client:
    """hvac as the broker builds it; `pool` mounts a keep-alive adapter with that many connections."""
    session = requests.Session()
    if pool:
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=pool))
    return hvac.Client(url=server.addr, token=server.root_token, timeout=30, session=session)


def by_accessor(client: hvac.Client, threads: int) -> Callable[[list[tuple[str, str]]], int]:
    def revoke(pairs: list[tuple[str, str]]) -> int:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda pair: client.auth.token.revoke_accessor(pair[1]), pairs))
        return len(pairs)

    return revoke


def measure(bao: Bao, option: str, tokens: list[tuple[str, str]], revoke: Callable[[list], int],
            sample: int) -> Measured:  # fmt: skip
    cpu_before, started = cpu_seconds([bao.pid]), time.perf_counter()
    calls = revoke(tokens)
    seconds = time.perf_counter() - started
    bao_cpu = cpu_seconds([bao.pid]) - cpu_before
    checked = random.sample(tokens, min(sample, len(tokens)))
    with ThreadPoolExecutor(16) as pool:
        usable = sum(pool.map(lambda pair: bao.usable(pair[0]), checked))
    done = time.perf_counter() - started
    print(f"{option}: {len(tokens)} tokens, {calls} call(s), {seconds:.2f} s; {usable}/{len(checked)} sampled usable",
          flush=True)  # fmt: skip
    return Measured(option, len(tokens), calls, seconds, done, usable, len(checked), bao_cpu)


def run(server: OpenBaoServer, args: argparse.Namespace) -> list[Measured]:
    bao, results = Bao(server), []
    for option in args.only.split(","):
        role = f"rv-{option}"
        bao.role(role)
        parent = bao.parent(role) if option == "parent" else None
        started = time.perf_counter()
        tokens = bao.seed(role, args.count, parent)
        print(f"{option}: minted {len(tokens)} in {time.perf_counter() - started:.1f} s (untimed)", flush=True)
        if option == "accessor-default":
            revoke = by_accessor(hvac_client(server, None), args.threads)
        elif option == "accessor-pool":
            revoke = by_accessor(hvac_client(server, args.threads), args.threads)
        elif option == "prefix":
            revoke = lambda _: bao.call("PUT", f"sys/leases/revoke-prefix/auth/token/create/{role}", {"sync": True}) and 1  # noqa: E731
        else:
            revoke = lambda _: bao.call("POST", "auth/token/revoke", {"token": parent}) and 1  # noqa: E731
        results.append(measure(bao, option, tokens, revoke, args.sample))
    return results


def table(results: list[Measured], threads: int) -> str:
    lines = [f"{'option':<18} {'tokens':>7} {'calls':>6} {'revoke s':>9} {'tokens/s':>9} {'all dead s':>10} "
             f"{'usable (sample)':>16} {'bao CPU-ms/token':>17}   (threads {threads})"]  # fmt: skip
    for r in results:
        lines.append(f"{r.option:<18} {r.tokens:>7} {r.calls:>6} {r.seconds:>9.2f} {r.tokens / r.seconds:>9,.0f} "
                     f"{r.unusable_after:>10.2f} {f'{r.usable_in_sample}/{r.sample}':>16} {1000 * r.bao_cpu / r.tokens:>17.3f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vault_revoke", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="tokens per option")
    parser.add_argument("--threads", type=int, default=16, help="revocation threads (accessor options)")
    parser.add_argument("--sample", type=int, default=500, help="tokens checked with lookup-self afterwards")
    parser.add_argument("--only", default=",".join(OPTIONS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-vault-revoke-") as tmp:
        server = OpenBaoServer(log_path=Path(tmp) / "openbao.log").start()
        try:
            results = run(server, args)
        finally:
            server.stop()
    print(table(results, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
