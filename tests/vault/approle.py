"""An AppRole for the broker holding only the planned `credential-broker` policy (least privilege)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from broker.backends.plan import BROKER_POLICY
from tests.support.openbao import VaultBed


def approle(bed: VaultBed, folder: Path, **ttls: str) -> tuple[dict, Callable[[], str]]:
    """A fresh AppRole holding only the planned broker policy; returns its vault config and a secret-id minter."""
    root, name = bed.openbao.root(), "broker-" + secrets.token_hex(4)
    if "approle/" not in (root.read("sys/auth").get("data") or {}):
        root.write("sys/auth/approle", {"type": "approle"})
    root.write(f"auth/approle/role/{name}", {"token_policies": [BROKER_POLICY], "token_ttl": "60s",
                                              "token_max_ttl": "10m", **ttls})
    role_id = root.read(f"auth/approle/role/{name}/role-id")["data"]["role_id"]
    secret_file = folder / "secret-id"

    def new_secret_id() -> str:
        secret_file.write_text(root.write(f"auth/approle/role/{name}/secret-id", {})["data"]["secret_id"])
        return secret_file.read_text()

    new_secret_id()
    config = {**bed.openbao.vault_config(2.0), "auth_method": "approle", "token": None, "role_id": role_id,
              "secret_id_file": str(secret_file)}
    return config, new_secret_id
