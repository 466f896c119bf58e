"""Dev mode: a demo config and a local development identity issuer. Never for production."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from broker.config import DEV_ISSUER, DEV_KID, Settings, load_settings, production_by_env
from broker.errors import ConfigError

DEV_AUDIENCE = "broker-dev"
DEV_MARK = "dev-mode.json"  # written by the dev config into its data dir; `dev-token` needs it
ROOT_TOKEN_FILE = "openbao-root-token"  # 0600: the dev OpenBao's root token, never printed
DEMO_POLICY: dict[str, Any] = {
    "rules": [
        {
            "name": "demo-workload",
            "match": {"attestor": "dev", "subject": "dev:demo-workload"},
            "allow": [{"boundary": "demo", "scopes": ["read", "write"], "max_ttl": "15m"}],
        },
        {"name": "dev-operator", "match": {"attestor": "dev", "subject": "dev:operator"}, "roles": ["operator"]},
        {  # may introspect any broker token (RFC 7662); workloads introspect only their own
            "name": "dev-resource-server",
            "match": {"attestor": "dev", "subject": "dev:resource-server"},
            "roles": ["resource_server"],
        },
        {  # may register Shared Signals streams and hear of every ended grant (docs/signals.md)
            "name": "dev-signal-receiver",
            "match": {"attestor": "dev", "subject": "dev:receiver"},
            "roles": ["signal_receiver"],
        },
        {  # a sub-agent the demo workload may delegate to (docs/agents.md §6): `demo` read, nothing more
            "name": "dev-sub-agent",
            "match": {"attestor": "dev", "subject": "dev:sub-agent"},
            "allow": [{"boundary": "demo", "scopes": ["read"], "max_ttl": "15m"}],
        },
    ]
}
DEV_TRUST_DOMAIN = "dev.local"  # transaction tokens (docs/agents.md §7) of `broker dev`


def _issuer_dir(data_dir: Path) -> Path:
    return data_dir / "dev-issuer"


def private_dir(path: Path) -> Path:
    """Create `path` if missing and make it 0700 even when it already was there (mkdir's mode binds new ones only)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def mark_dev_data_dir(data_dir: Path) -> None:
    """Record that this data dir belongs to a dev config (the only kind `broker dev-token` mints for)."""
    mark = {"env": "development", "data_dir": str(data_dir.resolve()), "issuer": DEV_ISSUER}
    write_private(data_dir / DEV_MARK, json.dumps(mark))


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner may read (0600, even when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def require_dev_data_dir(data_dir: Path) -> None:
    """Refuse (ConfigError) a data dir that `broker dev` did not mark as its own."""
    try:
        mark = json.loads((data_dir / DEV_MARK).read_text())
    except (OSError, ValueError):
        mark = {}
    mine = {"env": "development", "data_dir": str(data_dir.resolve())}
    if not isinstance(mark, dict) or any(mark.get(key) != value for key, value in mine.items()):
        raise ConfigError(f"{data_dir} is not the data dir of a dev config; dev tokens are minted only for "
                          f"`broker dev --data-dir {data_dir}`")


def ensure_dev_issuer(data_dir: Path) -> Path:
    """Create the dev issuer's key (0600) and its JWKS file once; return the JWKS path."""
    folder = private_dir(_issuer_dir(data_dir))
    key_path, jwks_path = folder / "key.pem", folder / "jwks.json"
    if not key_path.exists():
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    jwk = ECAlgorithm(ECAlgorithm.SHA256).to_jwk(private.public_key(), as_dict=True)
    jwks_path.write_text(json.dumps({"keys": [{**jwk, "kid": DEV_KID, "alg": "ES256", "use": "sig"}]}))
    return jwks_path


def dev_token(data_dir: Path, subject: str, lifetime: int = 3600) -> str:
    """An identity token from the dev issuer, accepted only by a broker in dev mode."""
    require_dev_data_dir(data_dir)
    key_path = _issuer_dir(data_dir) / "key.pem"
    if not key_path.exists():
        raise ConfigError(f"{key_path}: no dev issuer here; run `broker dev --data-dir {data_dir}` first")
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": subject,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key_path.read_bytes(), algorithm="ES256", headers={"kid": DEV_KID})


DEMO_KV_RULES = {
    "demo-kv-read": 'path "secret/data/demo/*" { capabilities = ["read"] }\n',
    "demo-kv-write": 'path "secret/data/demo/*" { capabilities = ["create", "update", "read"] }\n',
}
DEMO_TABLE = "broker_demo_orders"


def demo_kv_boundary() -> dict[str, Any]:
    """`demo-kv`: Vault tokens whose policies read (or write) `secret/data/demo/*`."""
    return {
        "name": "demo-kv",
        "backend": "vault_token",
        "max_ttl": "15m",
        "scopes": {
            "read": {"token_role": "demo-kv-read", "policies": ["demo-kv-read"],
                     "rules": {"demo-kv-read": DEMO_KV_RULES["demo-kv-read"]}},
            "write": {"token_role": "demo-kv-write", "policies": ["demo-kv-read", "demo-kv-write"],
                      "rules": {"demo-kv-write": DEMO_KV_RULES["demo-kv-write"]}},
        },
    }


def demo_db_boundary(postgres_url: str, name: str = "demo-db", table: str = DEMO_TABLE) -> dict[str, Any]:
    """A `vault_secret` boundary on OpenBao's database engine: `read` may SELECT, `write` also INSERT/UPDATE."""
    from broker.dev_openbao import postgres_target, role_statements

    pg = postgres_target(postgres_url)
    grants = {"read": "SELECT", "write": "SELECT, INSERT, UPDATE"}
    return {
        "name": name,
        "backend": "vault_secret",
        "max_ttl": "15m",
        "connection": {"host": pg["host"], "port": pg["port"], "database": pg["database"]},
        "scopes": {
            scope: {"path": f"database/creds/{name}-{scope}",
                    "role": {"db_name": name, "creation_statements": role_statements(table, privileges)}}
            for scope, privileges in grants.items()
        },
    }


def create_demo_table(postgres_url: str, table: str = DEMO_TABLE) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, item text NOT NULL)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'demo') ON CONFLICT DO NOTHING")


def postgres_answers(postgres_url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(postgres_url, connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


# an MCP server as a boundary (docs/agents.md): its tools are its scopes; the demo workload may only search
DEMO_MCP: dict[str, Any] = {"name": "demo-mcp", "backend": "mcp", "resource_uri": "https://mcp.demo.invalid/mcp",
                            "scopes": ["search", "delete"], "max_ttl": "15m"}  # fmt: skip


def demo_policy(boundaries: list[str]) -> dict[str, Any]:
    """dev:demo-workload may use every demo boundary; dev:operator is an operator; dev:resource-server introspects."""
    allow = [{"boundary": name, "scopes": ["search"] if name == DEMO_MCP["name"] else ["read", "write"],
              "max_ttl": "15m"} for name in boundaries]  # fmt: skip
    return {"rules": [{**DEMO_POLICY["rules"][0], "allow": allow}, *DEMO_POLICY["rules"][1:]]}


def dev_config(data_dir: Path, port: int, vault: dict[str, Any] | None = None,
               extra_boundaries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The demo configuration: jwt boundary `demo` (plus Vault ones), the dev attestor, the demo policy."""
    boundaries = [{"name": "demo", "backend": "jwt", "scopes": ["read", "write"], "max_ttl": "15m"}, DEMO_MCP]
    boundaries += extra_boundaries or []
    jwks_file = ensure_dev_issuer(data_dir)
    mark_dev_data_dir(data_dir)
    return {
        "env": "development",
        "issuer": f"http://127.0.0.1:{port}",
        "data_dir": str(data_dir),
        "dev_issuer": DEV_ISSUER,
        "attestors": [
            {
                "name": "dev",
                "preset": "oidc",
                "issuer": DEV_ISSUER,
                "audiences": [DEV_AUDIENCE],
                "algorithms": ["ES256"],
                "jwks_file": str(jwks_file),
            }
        ],
        "boundaries": boundaries,
        "policy": demo_policy([b["name"] for b in boundaries]),
        "signal_push_allow_http": True,  # a receiver on loopback (`dev:receiver`) takes pushes over http
        "txn_token_trust_domain": DEV_TRUST_DOMAIN,
        **({"vault": vault} if vault else {}),
    }


def dev_settings(data_dir: Path, port: int, tls: bool = False, **vault_parts: Any) -> Settings:
    """Settings for `broker dev` (`tls`: HTTPS and dev.local X.509-SVIDs); refused when BROKER_ENV=production."""
    if production_by_env():
        raise ConfigError("broker dev is refused when BROKER_ENV=production")
    private_dir(data_dir)
    config = dev_config(data_dir.resolve(), port, **vault_parts)
    if tls:
        from broker.dev_svid import dev_tls_config, dev_x509_rules

        config |= dev_tls_config(data_dir.resolve()) | {"issuer": f"https://127.0.0.1:{port}"}
        demo_allow = [dict(a) for a in config["policy"]["rules"][0]["allow"]]  # the demo workload's: an mcp boundary's scopes are its tools
        config["policy"]["rules"] += dev_x509_rules([b["name"] for b in config["boundaries"]], demo_allow)
    return load_settings(None, **config)


def start_dev_vault(data_dir: Path, postgres_url: str | None) -> tuple[Any, dict[str, Any]]:
    """Start OpenBao, configure the database engine when PostgreSQL answers; the server and dev_settings parts."""
    from broker.dev_openbao import OpenBaoServer

    private_dir(data_dir)
    server = OpenBaoServer(log_path=data_dir / "openbao.log").start()
    write_private(data_dir / ROOT_TOKEN_FILE, server.root_token + "\n")
    boundaries = [demo_kv_boundary()]
    if postgres_url and postgres_answers(postgres_url):
        boundaries.append(demo_db_boundary(postgres_url))
    return server, {"vault": server.vault_config(), "extra_boundaries": boundaries}


def prepare_dev_vault(settings: Settings, postgres_url: str | None) -> list[str]:
    """Apply the plan of the dev config, the demo KV secret and the demo database; what was written."""
    from broker.backends.plan import apply_plan, make_plan
    from broker.backends.vault import VaultClient
    from broker.dev_openbao import configure_database_engine

    vault = VaultClient(settings.vault)  # type: ignore[arg-type]
    if postgres_url and settings.boundary("demo-db"):
        create_demo_table(postgres_url)
        configure_database_engine(vault, "demo-db", postgres_url)
    vault.write("secret/data/demo/hello", {"data": {"greeting": "hello from OpenBao"}})
    return apply_plan(make_plan(settings), vault)
