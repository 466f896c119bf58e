"""One-shot OpenBao setup for the compose demo: engines, the generated plan, the broker's own token.

    python vault_setup.py /vault/plan.yaml /run/vault/broker-token

Reads VAULT_ADDR, VAULT_TOKEN (the dev root token, demo only) and ORDERS_DB_URL. Applies the files
`broker vault plan` generated (deploy/vault/plan.yaml) and writes a periodic token holding only the
`credential-broker` policy for the brokers to read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml


def call(method: str, path: str, body: dict | None = None) -> dict:
    answer = httpx.request(method, f"{os.environ['VAULT_ADDR']}/v1/{path}", json=body, timeout=10,
                           headers={"X-Vault-Token": os.environ["VAULT_TOKEN"]})  # fmt: skip
    if answer.status_code >= 400 and "path is already in use" not in answer.text:
        raise SystemExit(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
    return answer.json() if answer.content else {}


def database_engine(url: str) -> None:
    target = urlsplit(url)
    call("POST", "sys/mounts/database", {"type": "database"})
    call("POST", "database/config/orders", {
        "plugin_name": "postgresql-database-plugin", "allowed_roles": "*",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{target.hostname}:{target.port or 5432}"
                          f"{target.path}?sslmode=disable",
        "username": target.username, "password": target.password,
    })  # fmt: skip


def apply(plan: dict) -> None:
    for name, rules in plan.get("policies", {}).items():
        call("POST", f"sys/policies/acl/{name}", {"policy": rules})
    for name, params in plan.get("token_roles", {}).items():
        call("POST", f"auth/token/roles/{name}", params)
    for path, params in plan.get("engine_roles", {}).items():
        call("POST", path, params)


def broker_token(out: Path) -> None:
    token = call("POST", "auth/token/create-orphan", {"policies": ["credential-broker"], "period": "24h",
                                                      "display_name": "credential-broker"})  # fmt: skip
    out.write_text(token["auth"]["client_token"])
    out.chmod(0o444)  # the broker containers run as another uid


if __name__ == "__main__":
    database_engine(os.environ["ORDERS_DB_URL"])
    apply(yaml.safe_load(Path(sys.argv[1]).read_text()))
    broker_token(Path(sys.argv[2]))
    print("OpenBao ready for the brokers")
