"""Typed results: a Credential that never prints its secret, a Grant (no secret), a TaskCompleted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def fingerprint(secret: str) -> str:
    """The short SHA-256 fingerprint the broker's audit also shows: safe to log."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grant:
    """A grant as the broker shows it: never the secret."""

    grant_id: str
    task: str
    boundary: str
    scopes: list[str]
    subject: str
    status: str
    backend: str
    issued_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    dpop_bound: bool = False
    parent_grant_id: str | None = None  # a delegated token: the grant it was derived from

    @classmethod
    def of(cls, body: dict[str, Any]) -> Grant:
        names = cls.__dataclass_fields__
        values = {k: v for k, v in body.items() if k in names}
        for name in ("issued_at", "expires_at", "ended_at"):
            values[name] = _when(values.get(name))
        return cls(**values)


@dataclass(frozen=True)
class TaskCompleted:
    """What `complete_task` did: how many grants it matched, revoked, and left pending."""

    task: str
    matched: int
    revoked: int
    pending: int
    grant_ids: list[str] = field(default_factory=list)


class Credential:
    """One grant's credential. `repr`/`str` show a fingerprint only; read the secret through attributes."""

    __slots__ = ("grant", "_secret")

    def __init__(self, grant: Grant, secret: dict[str, Any]) -> None:
        self.grant = grant
        self._secret = dict(secret)

    @property
    def type(self) -> str:
        return str(self._secret.get("type", self.grant.backend))

    @property
    def token(self) -> str:
        """The bearer secret of a `jwt` or `vault_token` credential."""
        if "token" not in self._secret:
            raise AttributeError(f"a {self.type} credential has no token; see .data")
        return str(self._secret["token"])

    @property
    def token_type(self) -> str:
        return str(self._secret.get("token_type", "Bearer"))

    @property
    def data(self) -> dict[str, Any]:
        """A `vault_secret` credential's data (e.g. username, password) and the rest of the secret fields."""
        return dict(self._secret.get("data") or {})

    def field(self, name: str, default: Any = None) -> Any:
        """Any other field of the credential (`vault_addr`, `lease_id`, `connection`…)."""
        return self._secret.get(name, default)

    @property
    def grant_id(self) -> str:
        return self.grant.grant_id

    @property
    def expires_at(self) -> datetime:
        return self.grant.expires_at

    @property
    def fingerprint(self) -> str:
        secret = self._secret.get("token") or repr(sorted(self.data.items()))
        return fingerprint(str(secret))

    def env(self) -> dict[str, str]:
        """Environment variables for a child process, named per backend kind (see README, "broker-exec")."""
        found = {"BROKER_GRANT_ID": self.grant_id, "BROKER_TASK": self.grant.task,
                 "BROKER_EXPIRES_AT": self.expires_at.isoformat()}  # fmt: skip
        if self.type == "jwt":
            found.update(BROKER_TOKEN=self.token, BROKER_TOKEN_TYPE=self.token_type)
        elif self.type == "vault_token":
            found.update(VAULT_TOKEN=self.token, VAULT_ADDR=str(self.field("vault_addr", "")))
        elif self.type == "vault_secret":
            found.update(VAULT_ADDR=str(self.field("vault_addr", "")), BROKER_LEASE_ID=str(self.field("lease_id", "")))
            found.update({f"BROKER_SECRET_{k.upper()}": str(v) for k, v in self.data.items()})
            found.update(_postgres_env(self.data, self.field("connection") or {}))
        return found

    def __repr__(self) -> str:
        g = self.grant
        return f"<Credential {self.type} {g.boundary} {' '.join(g.scopes)} grant={g.grant_id} {self.fingerprint}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __reduce__(self) -> Any:
        raise TypeError("a Credential is not picklable: it would copy the secret out of the process")


def _postgres_env(data: dict[str, Any], connection: dict[str, Any]) -> dict[str, str]:
    """libpq's own variables, so `psql` and every driver connect with no arguments."""
    if "database" not in connection or "username" not in data:
        return {}
    return {
        "PGUSER": str(data["username"]),
        "PGPASSWORD": str(data.get("password", "")),
        "PGHOST": str(connection.get("host", "127.0.0.1")),
        "PGPORT": str(connection.get("port", 5432)),
        "PGDATABASE": str(connection["database"]),
    }
