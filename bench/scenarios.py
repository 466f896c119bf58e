"""What the bench measures: the broker's endpoints and OpenBao's own, as request shapes for `harness.load`."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.harness import Result, Shape
from broker.backends.plan import apply_plan, make_plan
from broker.backends.vault import VaultClient
from broker.config import VaultConfig, load_settings
from broker.dev_openbao import OpenBaoServer, configure_database_engine
from tests.support.issuer import TestIssuer

SUBJECT_NS, SUBJECT_SA = "bench", "worker"
JWT_BOUNDARY = "bench-jwt"
LIMITED_JWT_BOUNDARY = "bench-jwt-limited"  # the default abuse limits on (see limited_jwt_boundary)
TOKEN_ROLE = "bench-token"
DB_ROLE = "bench-db"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # what OpenBao's database engine connects to


def identity_token(issuer: TestIssuer) -> str:
    """A Kubernetes-style RS256 token, reused by every request as a projected SA token would be."""
    return issuer.k8s_token(SUBJECT_NS, SUBJECT_SA, lifetime=3600)


# the bench measures throughput: one subject issues thousands of grants a minute, so abuse limits are off
NO_LIMITS: dict[str, Any] = {"limits": {"max_active_grants": None, "issue_rate": None}}


def broker_config(issuer: TestIssuer, *, boundaries: list[dict[str, Any]], env: str = "production") -> dict[str, Any]:
    """Attestor, boundaries and a policy allowing the bench subject every boundary at `read`."""
    allow = [{"boundary": b["name"], "scopes": ["read"], "max_ttl": "15m"} for b in boundaries]
    return {
        "env": env,
        # the PostgreSQL run keeps signing keys in the database, sealed with this (a bench-only value)
        "key_encryption_key": secrets.token_hex(32),
        "attestors": [issuer.attestor_config("kubernetes", name="k8s").model_dump(mode="json", exclude_none=True)],
        "boundaries": boundaries,
        "policy": {
            "rules": [
                {"name": "bench", "match": {"attestor": "k8s", "subject": f"system:serviceaccount:{SUBJECT_NS}:*"},
                 "allow": allow},
            ]
        },  # fmt: skip
        **NO_LIMITS,
    }


def jwt_boundary() -> dict[str, Any]:
    return {"name": JWT_BOUNDARY, "backend": "jwt", "scopes": ["read"], "max_ttl": "15m"}


def limited_jwt_boundary() -> dict[str, Any]:
    """A jwt boundary with the documented default abuse limits, as a deployment that sets none has."""
    return {**jwt_boundary(), "name": LIMITED_JWT_BOUNDARY, "limits": {"max_active_grants": 50, "issue_rate": 60}}


def workloads(issuer: TestIssuer, count: int) -> tuple[str, ...]:
    """`count` workloads' Authorization headers, one service account each (wrk takes them in turn)."""
    return tuple(f"Bearer {issuer.k8s_token(SUBJECT_NS, f'w-{n}', lifetime=3600)}" for n in range(count))


# --- request shapes (wrk sends each one over and over; `{n}` is a per-request counter) ----------


def grant_request(base: str, token: str, boundary: str, ttl: int = 300, authorizations: tuple[str, ...] = ()) -> Shape:
    """POST /v1/grants for `boundary`, a new task per request; the identity token is reused until its exp
    (or `authorizations`, many workloads' tokens, are taken in turn)."""
    body = f'{{"task":"bench-{{n}}","boundary":"{boundary}","scopes":["read"],"ttl":{ttl}}}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return Shape("POST", f"{base}/v1/grants", headers, body, authorizations)


def healthz(base: str) -> Shape:
    """GET /healthz: no identity, no ledger; the HTTP floor of this server on this machine."""
    return Shape("GET", f"{base}/healthz")


def bao_token_create(bao: OpenBaoServer) -> Shape:
    """OpenBao's own auth/token/create on the same token role the broker uses."""
    # the same body the vault_token backend sends, so the ratio is the broker's own overhead
    body = json.dumps({
        "ttl": "300s", "explicit_max_ttl": "300s", "renewable": False, "display_name": "broker-bench",
        "policies": ["bench-read"], "meta": {"grant_id": "g_bench", "task": "bench", "subject": "bench"},
    })  # fmt: skip
    return Shape("POST", f"{bao.addr}/v1/auth/token/create/{TOKEN_ROLE}", _root_headers(bao), body)


def bao_jwt_login(bao: OpenBaoServer, token: str) -> Shape:
    """OpenBao's auth/jwt/login with the same identity token (its jwt auth trusts the issuer's JWKS)."""
    body = json.dumps({"role": "bench", "jwt": token})
    return Shape("POST", f"{bao.addr}/v1/auth/jwt/login", {"Content-Type": "application/json"}, body)


def bao_db_creds(bao: OpenBaoServer) -> Shape:
    return Shape("GET", f"{bao.addr}/v1/database/creds/{DB_ROLE}", _root_headers(bao))


# --- OpenBao setup (not timed) -----------------------------------------------------------------


def vault_boundaries() -> list[dict[str, Any]]:
    """A vault_token and a vault_secret boundary; `broker vault plan` derives the token and engine roles."""
    read_rule = {"bench-read": 'path "secret/data/bench/*" { capabilities = ["read"] }'}
    statements = ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"]
    return [
        {"name": "bench-vault-token", "backend": "vault_token", "max_ttl": "15m",
         "scopes": {"read": {"token_role": TOKEN_ROLE, "policies": ["bench-read"], "rules": read_rule}}},
        {"name": "bench-vault-secret", "backend": "vault_secret", "max_ttl": "15m",
         "scopes": {"read": {"path": f"database/creds/{DB_ROLE}",
                             "role": {"db_name": "bench-pg", "creation_statements": statements}}}},
    ]  # fmt: skip


def root(bao: OpenBaoServer, timeout: float = 30.0) -> VaultClient:
    return VaultClient(VaultConfig(**bao.vault_config(timeout=timeout)))


def _root_headers(bao: OpenBaoServer) -> dict[str, str]:
    return {"X-Vault-Token": bao.root_token}


def setup_vault(bao: OpenBaoServer, config: dict[str, Any], issuer: TestIssuer) -> None:
    """Database engine and jwt auth by hand, then the broker's own plan (policies, token and engine roles)."""
    vault = root(bao)
    configure_database_engine(vault, "bench-pg", PG_URL)
    apply_plan(make_plan(load_settings(None, **config)), vault)
    # OpenBao's jwt auth trusting the bench issuer's JWKS, like the broker's attestor
    vault.write("sys/auth/jwt", {"type": "jwt"})
    vault.write("auth/jwt/config", {"jwks_url": issuer.jwks_uri, "bound_issuer": issuer.url})
    vault.write("auth/jwt/role/bench", {"role_type": "jwt", "bound_audiences": ["broker"], "user_claim": "sub",
                                        "token_ttl": "5m", "token_policies": ["default"]})  # fmt: skip


def drop_db_roles(pg_url: str = PG_URL) -> int:
    """Drop the PostgreSQL roles OpenBao made for the bench role (after OpenBao stopped; cleanup, untimed).

    Revoking thousands of leases through OpenBao drops the same roles one lease at a time and can
    take minutes on a busy machine; the roles carry the engine role's name, so SQL finds them.
    """
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        names = [row[0] for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"v-%-{DB_ROLE}-%",))]
        for name in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    return len(names)


# --- completion to inactive --------------------------------------------------------------------


Inactive = Callable[[httpx.Client, dict[str, Any]], bool]


def introspect_inactive(client: httpx.Client, credential: dict[str, Any]) -> bool:
    """The broker's introspection reports the JWT inactive."""
    return client.post("/oauth/introspect", data={"token": credential["token"]}).json().get("active") is False


def vault_lookup_fails(client: httpx.Client, credential: dict[str, Any]) -> bool:
    """OpenBao refuses the token on its own path: a live `bench-read` token reads `secret/data/bench/*`
    (404 when empty), a dead one gets 403 (minted tokens have no `default` policy, so no `lookup-self`)."""
    url = credential["vault_addr"].rstrip("/") + "/v1/secret/data/bench/probe"
    return client.get(url, headers={"X-Vault-Token": credential["token"]}).status_code == 403


def completion_to_inactive(
    label: str, base: str, token: str, boundary: str, inactive: Inactive, *, count: int, time_cap: float
) -> Result:
    """Sequential: issue (untimed), then time `complete` + the check that the credential is dead."""
    result = Result(f"completion→inactive ({label})", 1)
    deadline = time.perf_counter() + time_cap
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30, trust_env=False) as client:
        while result.requests < count and time.perf_counter() < deadline:
            body = {"task": f"done-{label}-{result.requests}", "boundary": boundary, "scopes": ["read"], "ttl": 300}
            credential = client.post("/v1/grants", json=body).json()
            started = time.perf_counter()
            client.post(f"/v1/grants/{credential['grant_id']}/complete")
            dead = inactive(client, credential["credential"])
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            result.errors += 0 if dead else 1
    result.elapsed = sum(result.latencies)
    return result
