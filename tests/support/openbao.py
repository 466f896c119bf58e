"""Real OpenBao and PostgreSQL for the Vault tests: one dev server and one fresh database per session.

Outages are simulated by pausing OpenBao with SIGSTOP/SIGCONT (`OpenBao.outage()`), not by
stopping it: a dev server keeps its state in memory, so a restart would forget every token and
lease and make "revoked after recovery" trivially true. Paused, the kernel still accepts
connections and OpenBao answers nothing, so the broker sees its Vault timeout, as with a hung
cluster; requests sent during the pause may still be served on resume, which is what reconcile
and idempotent revocation exist for.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.exc import SQLAlchemyError

from broker.backends.plan import apply_plan, make_plan
from broker.backends.vault import VaultClient
from broker.config import VaultConfig
from broker.dev import demo_db_boundary
from broker.dev_openbao import OpenBaoServer, configure_database_engine
from tests.support.broker import broker_settings
from tests.support.ci import missing
from tests.support.postgres import fresh_database

TABLE = "orders"
KV_RULES = 'path "secret/data/{area}/*" {{ capabilities = ["read"] }}\n'


class OpenBao(OpenBaoServer):
    """The session's OpenBao dev server and a root client to look inside it."""

    def root(self) -> VaultClient:
        return VaultClient(VaultConfig(**self.vault_config()))

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def token_lookup(self, token: str) -> int:
        """HTTP status of a root `auth/token/lookup` of this token: 200 while it lives, 403 once gone.

        Not `lookup-self` with the token: minted tokens carry no `default` policy, so they may not.
        """
        verify = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        answer = httpx.post(f"{self.addr}/v1/auth/token/lookup", json={"token": token},
                            headers={"X-Vault-Token": self.root_token}, verify=verify)  # fmt: skip
        return answer.status_code

    def accessor_exists(self, accessor: str) -> bool:
        return self.accessor_meta(accessor) is not None

    def accessor_meta(self, accessor: str) -> dict[str, str] | None:
        """The metadata of the token behind `accessor`; None once it is gone or being revoked (403)."""
        answer = httpx.post(f"{self.addr}/v1/auth/token/lookup-accessor", json={"accessor": accessor},
                            headers={"X-Vault-Token": self.root_token})  # fmt: skip
        assert answer.status_code in (200, 400, 403), answer.text  # 400: "invalid accessor"
        return (answer.json()["data"].get("meta") or {}) if answer.status_code == 200 else None

    def lease_exists(self, lease_id: str) -> bool:
        return self.root().write("sys/leases/lookup", {"lease_id": lease_id}, gone=("invalid lease",)) is not None


@dataclass(frozen=True)
class Exchange:
    """One call the broker made to OpenBao, as it went over the wire."""

    method: str
    path: str  # without the /v1/ prefix
    sent: dict[str, Any]
    status: int
    answer: dict[str, Any]


@contextmanager
def recorded(openbao: OpenBaoServer) -> Iterator[tuple[str, list[Exchange]]]:
    """A loopback proxy in front of OpenBao: its address, and every exchange made through it so far.

    For what no OpenBao answer shows afterwards, such as a credential minted and revoked within one
    request (OpenBao refuses audit devices enabled over its API, so the test side records instead).
    """
    exchanges: list[Exchange] = []

    class Relay(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            keep = {k: v for k, v in self.headers.items() if k.lower().startswith("x-vault") or k.lower() == "content-type"}
            answer = httpx.request(self.command, openbao.addr + self.path, content=body, headers=keep, timeout=30)
            exchanges.append(Exchange(self.command, self.path.removeprefix("/v1/"), _json(body), answer.status_code,
                                      _json(answer.content)))  # fmt: skip
            self.send_response(answer.status_code)
            for name in ("Content-Type", "Content-Length"):
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _relay  # http.server dispatches on do_<METHOD>

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", exchanges
    finally:
        server.shutdown()
        server.server_close()


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def kv_boundary(area: str) -> dict[str, Any]:
    """A vault_token boundary whose `read` token reads `secret/data/<area>/*`."""
    policy = f"kv-{area}-read"
    return {
        "name": f"kv-{area}",
        "backend": "vault_token",
        "max_ttl": "15m",
        "scopes": {"read": {"token_role": f"kv-{area}-read", "policies": [policy],
                            "rules": {policy: KV_RULES.format(area=area)}}},
    }


POLICY: dict[str, Any] = {
    "rules": [
        {
            "name": "payments-workers",
            "match": {"attestor": "k8s", "subject": "system:serviceaccount:payments:*"},
            "allow": [
                {"boundary": "orders-db", "scopes": ["read", "write"], "max_ttl": "10m"},
                {"boundary": "kv-payments", "scopes": ["read"], "max_ttl": "10m"},
            ],
        },
        {"name": "operators", "match": {"attestor": "oidc", "subject": "ops-*"}, "roles": ["operator"]},
    ]
}


@dataclass
class VaultBed:
    """OpenBao with the test boundaries applied, and the PostgreSQL database behind `orders-db`."""

    openbao: OpenBao
    pg_url: str | None
    boundaries: list[dict[str, Any]]

    def settings(self, data_dir: Path, issuers: Any, timeout: float = 5.0, **overrides: Any):  # noqa: ANN201
        """Broker settings on this bed. The Vault timeout is the product's default: late in a full run
        OpenBao, expiring thousands of earlier tests' tokens, once took over 2 s to create one token
        (CI, the freeze race); a test of a slow or hung Vault passes its own, shorter timeout."""
        values = {"boundaries": self.boundaries, "policy": POLICY, "vault": self.openbao.vault_config(timeout)}
        return broker_settings(data_dir, issuers, **{**values, **overrides})

    def serve_config(self, issuers: Any, **extra: Any) -> dict[str, Any]:
        """A `broker serve` config (tests/support/replicas.py `start_replica`) on this bed's OpenBao."""
        return {"env": "test", "issuer": "http://broker.test", "sqlite_synchronous": "NORMAL",
                "attestors": issuers.attestors(), "boundaries": self.boundaries, "policy": POLICY,
                "vault": self.openbao.vault_config(2.0), "worker_interval": 0.2, "reconcile_grace": 1, **extra}  # fmt: skip

    def handles(self, boundary: str, task: str) -> list[str]:
        """What OpenBao holds for this boundary now: lease ids (dynamic secrets) or, for tokens, the
        accessors whose metadata names the task."""
        root = self.openbao.root()
        if boundary == "orders-db":
            return [f"database/creds/orders-db-read/{k}" for k in root.list("sys/leases/lookup/database/creds/orders-db-read/")]
        found = []
        for accessor in root.list("auth/token/accessors"):
            meta = self.openbao.accessor_meta(accessor) or {}
            if meta.get("boundary") == boundary and meta.get("task") == task:
                found.append(accessor)
        return found

    def pg(self, user: str | None = None, password: str | None = None) -> psycopg.Connection:
        target = self.pg_url if user is None else self.pg_url.replace("postgres@", f"{user}:{password}@", 1)
        return psycopg.connect(target, autocommit=True, connect_timeout=3)


def pg_unavailable(reason: str) -> None:
    """No PostgreSQL: CI fails loudly, a laptop skips the database tests with the reason."""
    missing("PostgreSQL at 127.0.0.1:5432", reason)


@contextmanager
def orders_database() -> Iterator[str | None]:
    """A fresh database (tests/support/postgres.py) with an `orders` table, as a libpq URL; None if no PostgreSQL."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(fresh_database()).replace("postgresql+psycopg://", "postgresql://", 1)
        except SQLAlchemyError:
            url = None
        if url:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, item text NOT NULL)")
                conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'first')")
        yield url


@pytest.fixture(scope="session")
def vault_bed(tmp_path_factory: pytest.TempPathFactory, issuers: Any) -> Iterator[VaultBed]:
    """OpenBao started from .venv/bin/bao, the plan of the test boundaries applied, KV data written."""
    server = OpenBao(log_path=tmp_path_factory.mktemp("openbao") / "openbao.log").start()
    try:
        with orders_database() as pg_url:
            boundaries = [kv_boundary("payments"), kv_boundary("billing")]
            if pg_url:
                boundaries.append(demo_db_boundary(pg_url, name="orders-db", table=TABLE))
            bed = VaultBed(server, pg_url, boundaries)
            _prepare(bed, tmp_path_factory.mktemp("plan"), issuers)
            yield bed
    finally:
        server.stop()


def _prepare(bed: VaultBed, data_dir: Path, issuers: Any) -> None:
    root = bed.openbao.root()
    if bed.pg_url:
        configure_database_engine(root, "orders-db", bed.pg_url)
    for area in ("payments", "billing"):
        root.write(f"secret/data/{area}/config", {"data": {"owner": area}})
    apply_plan(make_plan(bed.settings(data_dir, issuers)), root)


@pytest.fixture
def pg_bed(vault_bed: VaultBed) -> VaultBed:
    """The bed, for tests that need PostgreSQL (fail in CI, skip elsewhere, when it is missing)."""
    if not vault_bed.pg_url:
        pg_unavailable("could not connect")
    return vault_bed
