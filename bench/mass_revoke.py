"""Mass revocation: time to revoke 10,000 active grants until every one is unusable (target < 10 s).

    python -m bench.mass_revoke [--count 10000] [--workers 16] [--only jwt,subject,prefix] [--skip-vault]

Scenarios, each on its own fresh set of active grants in a SQLite (or PostgreSQL) ledger:
  jwt            revoke a jwt boundary; then every token is checked by introspection
  vault subject  freeze and revoke one subject's vault_token grants: each of its parent tokens once
                 (one per process that minted; Vault ends the children with it)
  vault prefix   revoke a frozen vault_token boundary: one `sys/leases/revoke-prefix` call
The timed part is `Operations.revoke` (the code behind `POST /v1/revocations`): intent committed
in batches, backend revocation, outcome chained in batches. The check afterwards (introspection,
or a root `auth/token/lookup` of every Vault token) is timed apart and must find 0 usable credentials.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from broker.app import Components, build
from broker.backends import MintRequest
from broker.backends.plan import apply_plan, make_plan
from broker.backends.vault import VaultClient
from broker.config import Settings, VaultConfig, load_settings
from broker.dev_openbao import OpenBaoServer
from broker.grants import introspection
from broker.grants.service import GrantService
from broker.identity import Identity
from broker.ledger import Event, Grant, Selector

TARGET_SECONDS = 10.0
SEED_TIME_CAP = 240.0  # seconds: seeding stops early (and says so) rather than run unbounded
KV_RULES = 'path "secret/data/bench/*" { capabilities = ["read"] }\n'


@dataclass
class Outcome:
    """One scenario's figures."""

    name: str
    grants: int
    revoke_seconds: float
    revoked: int
    pending: int
    check_seconds: float
    usable_after: int

    @property
    def rate(self) -> float:
        return self.revoked / self.revoke_seconds if self.revoke_seconds else 0.0


def settings(data_dir: Path, database_url: str | None, vault: OpenBaoServer | None) -> Settings:
    boundaries: list[dict[str, Any]] = [{"name": "bench-jwt", "backend": "jwt", "scopes": ["read"], "max_ttl": "1h"}]
    if vault:
        for name in ("bench-kv-a", "bench-kv-b"):
            scope = {"token_role": f"{name}-read", "policies": [f"{name}-read"], "rules": {f"{name}-read": KV_RULES}}
            boundaries.append({"name": name, "backend": "vault_token", "scopes": {"read": scope}, "max_ttl": "1h"})
    values: dict[str, Any] = {
        "env": "test", "issuer": "http://bench.invalid", "data_dir": data_dir, "sqlite_synchronous": "NORMAL",
        "boundaries": boundaries, "policy": {"rules": []}, "worker_interval": 3600.0,
        "vault": vault.vault_config(timeout=10.0) if vault else None, "database_url": database_url,
    }
    return load_settings(None, **values)


def seed(service: GrantService, boundary: str, subject: str, count: int, workers: int) -> list[str]:
    """`count` active grants with real backend credentials; returns the credentials' secrets."""
    config = service.boundaries[boundary]
    backend = service.backends[config.backend]
    deadline = time.monotonic() + SEED_TIME_CAP

    def one(index: int) -> str | None:
        if time.monotonic() > deadline:
            return None
        now = time.time()
        request = MintRequest(f"g_{secrets.token_urlsafe(18)}", subject, f"task-{index % 50}", config, ("read",),
                              3600, now, now + 3600)
        minted = backend.mint(request)
        grant = Grant(id=request.grant_id, subject=subject, attestor="bench", task=request.task, boundary=boundary,
                      backend=config.backend, scopes="read", handle=minted.handle, fingerprint=minted.fingerprint,
                      issued_at=now, expires_at=now + 3600, parent_handle=minted.parent_handle)
        event = Event(kind="issued", subject=subject, boundary=boundary, task=request.task, grant_id=grant.id,
                      actor=subject, detail={"scopes": ["read"], "fingerprint": minted.fingerprint})
        service.ledger.record_issued(grant, event)
        return minted.credential["token"]

    with ThreadPoolExecutor(workers) as pool:
        return [token for token in pool.map(one, range(count)) if token is not None]


def operator() -> Identity:
    return Identity(subject="bench:operator", attestor="bench", claims={}, token_fingerprint="-", expires_at=0)


def run(parts: Components, name: str, selector: Selector, tokens: list[str], check: Callable[[str], bool],
        freeze: bool = False) -> Outcome:  # fmt: skip
    started = time.perf_counter()
    status = parts.operations.revoke(operator(), selector, f"bench {name}", freeze=freeze)
    revoke_seconds = time.perf_counter() - started
    print(f"{name}: {status.revoked}/{len(tokens)} revoked, {status.pending} pending, in {revoke_seconds:.2f}s", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        usable = sum(pool.map(check, tokens))
    outcome = Outcome(name, len(tokens), revoke_seconds, status.revoked, status.pending,
                      time.perf_counter() - started, usable)  # fmt: skip
    print(f"{name}: {usable} of {len(tokens)} still usable after the revocation", flush=True)
    return outcome


def vault_usable(addr: str, root_token: str) -> Callable[[str], bool]:
    """A root `auth/token/lookup` answers 200 only while the token lives (minted tokens have no `default`
    policy, so no `lookup-self`); one client per thread, a retry on a broken socket."""
    local = threading.local()

    def check(token: str) -> bool:
        for _ in range(3):
            client = getattr(local, "client", None) or httpx.Client(timeout=10.0)
            local.client = client
            try:
                answer = client.post(f"{addr}/v1/auth/token/lookup", json={"token": token},
                                     headers={"X-Vault-Token": root_token})
                return answer.status_code == 200
            except httpx.HTTPError:
                local.client = None
        raise RuntimeError("OpenBao did not answer auth/token/lookup three times")

    return check


def _live(grant) -> bool:  # noqa: ANN001
    return grant is not None and grant.status == "active"


def scenarios(args: argparse.Namespace, directory: Path, vault: OpenBaoServer | None) -> list[Outcome]:
    config = settings(directory, args.database_url, vault)
    if vault:
        apply_plan(make_plan(config), VaultClient(VaultConfig(**vault.vault_config())))
    parts = build(config)
    parts.operations.workers = args.workers
    service, results = parts.service, []
    if "jwt" in args.only:
        jwt_tokens = seed(service, "bench-jwt", "bench:jwt-holder", args.count, args.seed_workers)
        jwt_check = lambda token: _live(introspection.grant_of_token(service, token))  # noqa: E731
        results.append(run(parts, "jwt (boundary)", Selector(boundary="bench-jwt"), jwt_tokens, jwt_check))
    check = vault_usable(vault.addr, vault.root_token) if vault else None
    if vault and "subject" in args.only:
        tokens = seed(service, "bench-kv-a", "bench:victim", args.count, args.seed_workers)
        results.append(run(parts, "vault_token (frozen subject, parent tokens)", Selector(subject="bench:victim"), tokens,
                           check, freeze=True))  # fmt: skip
    if vault and "prefix" in args.only:
        tokens = seed(service, "bench-kv-b", "bench:holder", args.count, args.seed_workers)
        outcome = run(parts, "vault_token (frozen boundary, prefix)", Selector(boundary="bench-kv-b"), tokens, check,
                      freeze=True)  # fmt: skip
        results.append(outcome)
    parts.operations.close()
    return results


def table(results: list[Outcome], workers: int) -> Table:
    view = Table(title=f"mass revocation (target < {TARGET_SECONDS:.0f} s; revoke pool {workers} threads)")
    for column in ("scenario", "grants", "revoke s", "grants/s", "revoked", "pending", "check s", "usable after", "ok"):
        view.add_column(column, justify="right" if column != "scenario" else "left")
    for r in results:
        ok = r.revoke_seconds < TARGET_SECONDS and r.usable_after == 0 and r.pending == 0 and r.revoked == r.grants
        view.add_row(r.name, str(r.grants), f"{r.revoke_seconds:.2f}", f"{r.rate:,.0f}", str(r.revoked),
                     str(r.pending), f"{r.check_seconds:.2f}", str(r.usable_after), "yes" if ok else "NO")  # fmt: skip
    return view


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mass_revoke", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="active grants per scenario")
    parser.add_argument("--workers", type=int, default=16, help="revocation thread pool (accessor by accessor)")
    parser.add_argument("--seed-workers", type=int, default=16, help="threads minting the grants to revoke")
    parser.add_argument("--skip-vault", action="store_true", help="jwt only (no OpenBao)")
    parser.add_argument("--only", default="jwt,subject,prefix", help="scenarios to run (comma-separated)")
    parser.add_argument("--database-url", help="ledger database (default: SQLite in a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-revoke-") as tmp:
        vault = None if args.skip_vault else OpenBaoServer(log_path=Path(tmp) / "openbao.log").start()
        try:
            results = scenarios(args, Path(tmp), vault)
        finally:
            if vault:
                vault.stop()
    Console(width=150).print(table(results, args.workers))


if __name__ == "__main__":
    main()
