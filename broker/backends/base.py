"""The Backend protocol: mint a credential for one boundary and hand back a revocable handle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from broker.config import BoundaryConfig


@dataclass(frozen=True)
class MintRequest:
    """Everything a backend needs to mint one grant's credential."""

    grant_id: str
    subject: str
    task: str
    boundary: BoundaryConfig
    scopes: tuple[str, ...]
    ttl: int
    issued_at: float
    expires_at: float
    cnf_jkt: str | None = None


@dataclass(frozen=True)
class Minted:
    """A fresh credential: `credential` goes to the caller once; only `handle` and `fingerprint` are stored."""

    credential: dict[str, Any]
    handle: str
    fingerprint: str


class Backend(Protocol):
    """Mints and revokes the credentials of one boundary kind."""

    kind: str

    def mint(self, request: MintRequest) -> Minted:
        """Create the credential; raises BackendUnavailable when the downstream system fails."""
        ...

    def revoke(self, boundary: BoundaryConfig, handle: str) -> None:
        """Make the credential unusable; idempotent (already gone is success); raises BackendUnavailable."""
        ...


def fingerprint(secret: str) -> str:
    """SHA-256 fingerprint of a secret, safe to store and log."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
