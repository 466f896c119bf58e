"""The `vault_secret` backend: a dynamic secret (a lease) per grant from any secrets engine path.

TTL: `broker vault plan` sets the engine role's `max_ttl` to the boundary cap and its `default_ttl`
to the TTL a grant gets when it names none, so that grant's lease is right as it comes: one Vault
call. A lease of another length is set to the grant's with `sys/leases/renew/<lease id>` and
`increment = grant ttl` (Vault and OpenBao set the new expiry to now + increment, capped by the role's
max): shortened, or lengthened up to the cap. If the engine refuses (a non-renewable lease), a
longer lease outlives the grant in Vault only until the reaper: the grant's `expires_at` drives
`expire_due`, which revokes the lease with `sys/leases/revoke/<lease id>`; a shorter one ends first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from broker.backends.base import Minted, MintRequest
from broker.backends.vault import VaultClient
from broker.config import BoundaryConfig
from broker.errors import BackendUnavailable, BadRequest
from broker.fingerprint import fingerprint

log = logging.getLogger(__name__)
GONE = ("invalid lease", "lease not found", "lease id not found")
TTL_SLACK = 1  # seconds a lease may exceed the grant before it is shortened


class VaultSecretBackend:
    """Reads `<engine>/creds/<role>`, caps the lease to the grant TTL, revokes by lease id."""

    kind = "vault_secret"
    calls_out = True  # minting calls Vault

    def __init__(self, vault: VaultClient) -> None:
        self.vault = vault
        # a lease carries no metadata (no deployment id): whether a lease no grant row accounts for
        # is ours to revoke is the operator's statement that no other deployment uses these paths
        self.reconcile_unknown = vault.config.reconcile_unknown_leases

    def mint(self, request: MintRequest) -> Minted:
        answer = self.vault.read(secret_path(request.boundary, request.scopes))
        lease_id = answer.get("lease_id") or ""
        if not lease_id:
            raise BackendUnavailable("the secrets engine returned no lease; a vault_secret path must be dynamic")
        try:
            self._cap(lease_id, int(answer.get("lease_duration") or 0), request.ttl, answer.get("renewable"))
        except BackendUnavailable:
            self.revoke(request.boundary, lease_id)  # never hand out a lease we could not cap
            raise
        data = answer.get("data") or {}
        credential: dict[str, Any] = {"type": "vault_secret", "lease_id": lease_id, "data": data,
                                      "vault_addr": self.vault.addr, "expires_at": request.expires_at}
        if request.boundary.connection:
            credential["connection"] = dict(request.boundary.connection)
        return Minted(credential=credential, handle=lease_id, fingerprint=fingerprint(_secret_of(data, lease_id)))

    def _cap(self, lease_id: str, duration: int, ttl: int, renewable: Any) -> None:
        """The lease to the grant's TTL: as it comes when within TTL_SLACK, else renewed to it."""
        if abs(duration - ttl) <= TTL_SLACK:
            return
        if not renewable:
            log.info("lease %s lasts %ss, the grant %ss, and is not renewable; %s", lease_id, duration, ttl,
                     "the reaper revokes it at grant expiry" if duration > ttl else "it ends first")  # fmt: skip
            return
        self.vault.write(f"sys/leases/renew/{lease_id}", {"increment": ttl})

    def revoke(self, boundary: BoundaryConfig, handle: str) -> None:
        """By the lease id in the URL: the broker's policy allows revocation only under its own paths."""
        self.vault.write(f"sys/leases/revoke/{handle}", gone=GONE)

    def ping(self) -> None:
        self.vault.ping()

    def live_handles(self, boundaries: Iterable[BoundaryConfig], created_before: float) -> dict[str, list[str]]:
        """Lease ids under each boundary's paths (`sys/leases/lookup/<path>/`), issued before the cut-off."""
        found: dict[str, list[str]] = {}
        for boundary in (b for b in boundaries if b.backend == self.kind):
            paths = sorted({str(cfg.path).strip("/") for cfg in boundary.scopes.values()})
            leases = [f"{p}/{key}" for p in paths for key in self.vault.list(f"sys/leases/lookup/{p}/")]
            found[boundary.name] = [lease for lease in leases if self._issued_at(lease) < created_before]
        return found

    def _issued_at(self, lease_id: str) -> float:
        answer = self.vault.write("sys/leases/lookup", {"lease_id": lease_id}, gone=GONE)
        issued = ((answer or {}).get("data") or {}).get("issue_time")
        return datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp() if issued else float("inf")


def secret_path(boundary: BoundaryConfig, scopes: Iterable[str]) -> str:
    """The one engine path every requested scope maps to (a lease comes from one path)."""
    paths = {str(boundary.scopes[s].path).strip("/") for s in scopes}
    if len(paths) != 1:
        raise BadRequest(f"scopes {sorted(scopes)} of boundary {boundary.name!r} map to different paths; ask for one")
    return paths.pop()


def _secret_of(data: dict[str, Any], lease_id: str) -> str:
    """What to fingerprint: the password or secret key when there is one, else the lease id."""
    for key in ("password", "secret_key", "secret_access_key", "token", "private_key"):
        if isinstance(data.get(key), str):
            return data[key]
    return lease_id
