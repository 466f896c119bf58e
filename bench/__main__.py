"""`make bench`: every scenario in one run against real processes, then ONE table.

    python -m bench [--workers 2] [--quick] [--skip-vault] [--skip-postgres]

Never a timed assertion in tests: targets are judged here, printed, and left to people to read.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from bench import scenarios as sc
from bench.harness import Result, broker_server, openbao, sweep
from bench.signing import floor
from tests.support.issuer import TestIssuer
from tests.support.postgres import fresh_database

JWT_RATE, JWT_P99, JWT_LEVEL = 1500, 25.0, 32
VAULT_RATIO = 0.80
INACTIVE_P99 = 100.0
VAULT_REVOKE_BUDGET = 300.0  # seconds the Vault mass-revocation scenarios need on a busy 2-core machine


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of the broker")
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests (smoke run)")
    parser.add_argument("--skip-vault", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for the whole run (mass revocation adapts)")
    return parser.parse_args(argv)


class Plan:
    """Request counts and time caps per level; --quick divides the counts by ten."""

    def __init__(self, quick: bool) -> None:
        self.div = 10 if quick else 1

    def fast(self) -> dict:
        return {"count": 6000 // self.div, "time_cap": 6.0}

    def slow(self) -> dict:  # database/creds creates a PostgreSQL role per call
        return {"count": 600 // self.div, "time_cap": 6.0}

    def sequential(self) -> dict:
        return {"count": 200 // self.div, "time_cap": 10.0}


def jwt_sqlite(rows: list[Result], tmp: Path, issuer: TestIssuer, token: str, plan: Plan, workers: int) -> None:
    config = sc.broker_config(issuer, boundaries=[sc.jwt_boundary()])
    with broker_server(tmp / "jwt-sqlite", config, workers=workers) as broker:
        rows += sweep("HTTP floor: GET /healthz", sc.healthz(broker.url), **plan.fast())
        rows += sweep("jwt grant, SQLite", sc.grant_request(broker.url, token, sc.JWT_BOUNDARY), **plan.fast())
        rows.append(
            sc.completion_to_inactive(
                "jwt", broker.url, token, sc.JWT_BOUNDARY, sc.introspect_inactive, **plan.sequential()
            )
        )


def jwt_postgres(rows: list[Result], tmp: Path, issuer: TestIssuer, token: str, plan: Plan, workers: int) -> None:
    with fresh_database("broker_bench") as url:
        config = {**sc.broker_config(issuer, boundaries=[sc.jwt_boundary()]), "database_url": url}
        with broker_server(tmp / "jwt-pg", config, workers=workers) as broker:
            rows += sweep("jwt grant, PostgreSQL", sc.grant_request(broker.url, token, sc.JWT_BOUNDARY), **plan.fast())


def vault(rows: list[Result], tmp: Path, issuer: TestIssuer, token: str, plan: Plan, workers: int) -> None:
    """OpenBao's own endpoints next to the broker's Vault backends, same client, same run.

    The broker starts first: its start-up reconcile walks every token accessor in OpenBao, and the
    raw token-create sweep below leaves thousands behind.
    """
    with openbao(tmp / "bao") as bao:
        boundaries = [sc.jwt_boundary(), *sc.vault_boundaries()]
        config = {**sc.broker_config(issuer, boundaries=boundaries), "vault": bao.vault_config(timeout=30.0)}
        sc.setup_vault(bao, config, issuer)
        with broker_server(tmp / "vault", config, workers=workers) as broker:
            rows += sweep("OpenBao auth/jwt/login", sc.bao_jwt_login(bao, token), **plan.fast())
            rows += sweep("OpenBao auth/token/create", sc.bao_token_create(bao), **plan.fast())
            rows += sweep("vault_token grant", sc.grant_request(broker.url, token, "bench-vault-token"), **plan.fast())
            rows.append(
                sc.completion_to_inactive(
                    "vault_token", broker.url, token, "bench-vault-token", sc.vault_lookup_fails, **plan.sequential()
                )
            )
            rows += sweep("OpenBao database/creds", sc.bao_db_creds(bao), **plan.slow())
            rows += sweep("vault_secret grant", sc.grant_request(broker.url, token, "bench-vault-secret"), **plan.slow())
    sc.drop_db_roles()


def mass_revocation(rows: list[Result], tmp: Path, quick: bool, seconds_left: float) -> None:
    """bench/mass_revoke.py's own scenarios (the operators' issue), run here and shown as rows.

    Its Vault scenarios mint 20,000 tokens first; with less than VAULT_REVOKE_BUDGET seconds of the
    run's budget left, only the jwt scenario runs (and a row says so).
    """
    from bench import mass_revoke

    with_vault = seconds_left >= VAULT_REVOKE_BUDGET
    args = argparse.Namespace(count=1000 if quick else 10_000, workers=16, seed_workers=16, database_url=None,
                              only="jwt,subject,prefix", skip_vault=not with_vault)  # fmt: skip
    with openbao(tmp / "bao-revoke") if with_vault else nullcontext() as bao:
        outcomes = mass_revoke.scenarios(args, tmp / "mass-revoke", bao)
    for o in outcomes:
        row = Result(f"mass revocation: {o.name}", args.workers, o.grants, 0, o.revoke_seconds, rate_override=o.rate)
        row.target = f"< {mass_revoke.TARGET_SECONDS:g} s (took {o.revoke_seconds:.1f} s, {o.usable_after} usable after)"
        row.met = o.revoke_seconds < mass_revoke.TARGET_SECONDS and o.usable_after == 0 and o.revoked == o.grants
        rows.append(row)
    if not with_vault:
        rows.append(Result("mass revocation: vault_token", 0, note=f"skipped: {seconds_left:.0f} s of budget left"))


# --- judging and the table --------------------------------------------------------------------


def judge(rows: list[Result]) -> None:
    """Write each target next to the rows it applies to."""
    baseline = {r.concurrency: r.rate for r in rows if r.scenario == "OpenBao auth/token/create"}
    for row in rows:
        p99 = row.percentile(0.99)
        if row.scenario == "jwt grant, SQLite" and row.concurrency == JWT_LEVEL:
            row.target = f">= {JWT_RATE}/s, p99 <= {JWT_P99:g} ms"
            row.met = row.rate >= JWT_RATE and p99 is not None and p99 <= JWT_P99 and not row.errors
        elif row.scenario == "vault_token grant" and baseline.get(row.concurrency):
            ratio = row.rate / baseline[row.concurrency]
            row.target = f">= {VAULT_RATIO:.0%} of OpenBao ({ratio:.0%})"
            row.met = ratio >= VAULT_RATIO and not row.errors
        elif row.scenario.startswith("completion"):
            row.target = f"p99 <= {INACTIVE_P99:g} ms"
            row.met = p99 is not None and p99 <= INACTIVE_P99 and not row.errors


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[Result]) -> str:
    head = ("scenario", "conc", "requests", "grants/s", "p50 ms", "p99 ms", "target", "met?")
    lines = [head]
    for r in rows:
        requests = f"{r.requests}" + (f" ({r.errors} err)" if r.errors else "")
        rate = "-" if r.scenario.startswith("completion") or not r.requests else f"{r.rate:,.0f}"
        met = {True: "met", False: "MISSED", None: ""}[r.met]
        target = r.target or r.note
        lines.append((r.scenario, str(r.concurrency), requests, rate, _ms(r.percentile(0.5)), _ms(r.percentile(0.99)),
                      target, met))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def _run(name: str, step: Callable[[list[Result]], object]) -> list[Result]:
    """Run one step that appends its rows; a failure keeps the rows so far and adds one saying why."""
    started, rows = time.monotonic(), []
    try:
        step(rows)
    except Exception as exc:  # one broken scenario must not hide the others' numbers
        rows.append(Result(name, 0, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}"))
    print(f"  {name}: {time.monotonic() - started:.0f}s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    plan = Plan(args.quick)
    started = time.monotonic()
    print(f"bench: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, broker workers {args.workers}")
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp_name, TestIssuer() as issuer:
        tmp, token = Path(tmp_name), sc.identity_token(issuer)
        rows += _run("jwt SQLite", lambda out: jwt_sqlite(out, tmp, issuer, token, plan, args.workers))
        if not args.skip_postgres:
            rows += _run("jwt PostgreSQL", lambda out: jwt_postgres(out, tmp, issuer, token, plan, args.workers))
        if not args.skip_vault:
            rows += _run("Vault", lambda out: vault(out, tmp, issuer, token, plan, args.workers))
        rows += _run("signing floor", lambda out: out.extend(floor()))
        left = args.budget - (time.monotonic() - started)
        rows += _run("mass revocation", lambda out: mass_revocation(out, tmp, args.quick, 0 if args.skip_vault else left))
    judge(rows)
    print(table(rows))
    print(f"total {time.monotonic() - started:.0f}s; load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
