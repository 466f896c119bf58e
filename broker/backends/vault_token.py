"""The `vault_token` backend: a non-renewable Vault token per grant, made through a token role by the
parent token of its (subject, boundary) (vault_parents.py), so that a frozen subject ends in one call."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from broker.backends.base import Minted, MintRequest, revoke_each
from broker.backends.vault import Refused, VaultClient
from broker.backends.vault_parents import ParentTokens
from broker.config import BoundaryConfig
from broker.errors import BackendUnavailable, BadRequest, BrokerError
from broker.fingerprint import fingerprint

log = logging.getLogger(__name__)
PREFIX_WAIT = 120.0  # seconds to wait for Vault to finish a prefix revocation before going token by token
# OpenBao answers a missing accessor with success; Vault with 400 "invalid accessor": both mean gone
GONE = ("invalid accessor", "no token found")


class VaultTokenBackend:
    """Creates tokens via `auth/token/create/<role>` as the subject's parent token, revokes them by
    accessor, or a frozen subject's by its parents.

    Every token carries `deployment` in its metadata: reconcile lists only tokens of this
    deployment, so two brokers (two ledgers) on one Vault never revoke each other's tokens.
    """

    kind = "vault_token"
    calls_out = True  # minting calls Vault

    def __init__(self, vault: VaultClient, deployment: str = "") -> None:
        self.vault = vault
        self.deployment = deployment
        self.parents = ParentTokens(vault, deployment)

    def mint(self, request: MintRequest) -> Minted:
        role, policies = token_role(request.boundary, request.scopes)
        payload: dict[str, Any] = {
            "ttl": f"{request.ttl}s",
            "explicit_max_ttl": f"{request.ttl}s",
            "renewable": False,
            "display_name": f"broker-{request.boundary.name}"[:64],
            "meta": {
                "grant_id": request.grant_id,
                "task": request.task[:128],
                "subject": request.subject[:256],
                "boundary": request.boundary.name,
                "deployment": self.deployment,
            },
        }
        if policies:
            payload["policies"] = policies
        auth, parent = self._create_as_parent(request, f"auth/token/create/{role}", payload)
        credential = {"type": "vault_token", "token": auth["client_token"], "accessor": auth["accessor"],
                      "vault_addr": self.vault.addr, "expires_at": request.expires_at}
        return Minted(credential=credential, handle=auth["accessor"], fingerprint=fingerprint(auth["client_token"]),
                      parent_handle=parent)  # fmt: skip

    def _create_as_parent(self, request: MintRequest, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The child token, made by the subject's parent; a parent Vault refuses (revoked with a frozen
        subject by another process, or gone) is replaced once."""
        # the parent, an orphan, would outlive the broker's own token: mint only while that one is good
        # (revoked, it is noticed here when due and by the readiness check every few seconds)
        self.vault.ensure_session()
        parent = self.parents.get(request.boundary, request.subject)
        try:
            return (self.vault.write_as(parent.token, path, payload) or {})["auth"], parent.accessor
        except Refused:
            self.parents.forget({parent.accessor})
        parent = self.parents.get(request.boundary, request.subject)
        return (self.vault.write_as(parent.token, path, payload) or {})["auth"], parent.accessor

    def revoke(self, boundary: BoundaryConfig, handle: str) -> None:
        self.vault.write("auth/token/revoke-accessor", {"accessor": handle}, gone=GONE)

    def revoke_many(
        self, boundary: BoundaryConfig, handles: Sequence[str], *, whole_boundary: bool = False,
        parents: Mapping[str, str] | None = None,
    ) -> dict[str, str]:  # fmt: skip
        """A frozen boundary's every token: `sys/leases/revoke-prefix` per token role (tokens made through
        `auth/token/create/<role>` lease under that path; promise 2 gives each role one boundary), then
        wait until no lease is left under the prefix. A frozen subject's (`parents`: handle → its
        parent's accessor): each parent revoked once, which revokes its children in the same call.
        Otherwise, or if that fails (it needs `sudo`) or takes too long, accessor by accessor on a
        bounded pool (idempotent, so a retry costs nothing).
        """
        if parents:
            ended = self._revoke_parents(boundary, set(parents.values()))
            handles = [h for h in handles if parents.get(h) not in ended]
            if not handles:
                return {}
        if whole_boundary:
            prefixes = sorted({f"auth/token/create/{cfg.token_role}" for cfg in boundary.scopes.values()})
            try:
                if self._revoke_prefixes(prefixes):
                    return {}
                log.warning("prefix revocation of %s still running after %ss", boundary.name, PREFIX_WAIT)
            except BrokerError as exc:
                log.warning("prefix revocation of %s refused (%s)", boundary.name, exc.code)
        return revoke_each(self, boundary, handles)

    def _revoke_parents(self, boundary: BoundaryConfig, accessors: set[str]) -> set[str]:
        """Revoke each parent (Vault revokes its children with it); the accessors that are now gone."""
        gone = set()
        for accessor in sorted(accessors):
            try:
                self.vault.write("auth/token/revoke-accessor", {"accessor": accessor}, gone=GONE)
                gone.add(accessor)
            except BrokerError as exc:
                log.warning("revoking a parent token of %s failed (%s); its children one by one", boundary.name, exc.code)
        self.parents.forget(gone)
        return gone

    def _revoke_prefixes(self, prefixes: Sequence[str]) -> bool:
        """Ask Vault to revoke every lease under the prefixes until none is left; False at the deadline.

        Ten thousand tokens take Vault longer than one request timeout: a timed-out call is asked
        again (idempotent) until the lease list under the prefix is empty.
        """
        deadline, remaining = time.monotonic() + PREFIX_WAIT, list(prefixes)
        while remaining:
            if time.monotonic() > deadline:
                return False
            for prefix in remaining:
                try:
                    self.vault.write(f"sys/leases/revoke-prefix/{prefix}", {"sync": True})
                except BackendUnavailable as exc:
                    if "permission denied" in exc.detail:
                        raise
                    log.info("prefix revocation of %s still running: %s", prefix, exc.detail)
            remaining = [prefix for prefix in remaining if self.vault.list(f"sys/leases/lookup/{prefix}/")]
        return True

    def ping(self) -> None:
        self.vault.ping()

    def live_handles(self, boundaries: Iterable[BoundaryConfig], created_before: float) -> dict[str, list[str]]:
        """Accessors of tokens carrying our metadata (this deployment, these boundaries), created before the cut-off.

        A token without our deployment id (another deployment's, or minted before deployment ids
        existed) is never listed, so never revoked here; its TTL, capped by the boundary, ends it.
        """
        names = {b.name for b in boundaries if b.backend == self.kind}
        found: dict[str, list[str]] = {name: [] for name in names}
        for accessor in self.vault.list("auth/token/accessors") if names else []:
            data = self._lookup(accessor)
            meta = data.get("meta") or {}
            # a parent names no grant: never an orphan here (revoking it would end live children); its TTL ends it
            ours = meta.get("deployment") == self.deployment and meta.get("boundary") in names and meta.get("grant_id")
            if ours and data.get("creation_time", 0) < created_before:
                found[meta["boundary"]].append(accessor)
        return found

    def _lookup(self, accessor: str) -> dict[str, Any]:
        """The token behind an accessor; {} when it went away meanwhile.

        OpenBao answers 403 for an accessor whose token is being revoked at that instant (seen while
        reconcile lists beside live revocations); our own token was checked alive by VaultClient, so
        that 403 is about this one token: skip it, the next pass sees it again if it still lives.
        """
        try:
            answer = self.vault.write("auth/token/lookup-accessor", {"accessor": accessor}, gone=GONE)
        except BackendUnavailable as exc:
            if "permission denied" not in exc.detail:
                raise
            return {}
        return (answer or {}).get("data") or {}


def token_role(boundary: BoundaryConfig, scopes: Iterable[str]) -> tuple[str, list[str]]:
    """The one token role that serves every requested scope, and the policies to ask for.

    One scope: its role with the role's own policies. Several: the role of a scope whose policies
    cover all of them (e.g. `write` holding the read policy too), asked for exactly that union.
    """
    wanted = [boundary.scopes[s] for s in scopes]
    union = sorted({p for cfg in wanted for p in cfg.policies})
    if len(wanted) == 1:
        return str(wanted[0].token_role), list(wanted[0].policies)
    roles = {cfg.token_role for cfg in wanted}
    if len(roles) == 1:
        return str(roles.pop()), union
    for cfg in wanted:
        if set(union) <= set(cfg.policies):
            return str(cfg.token_role), union
    raise BadRequest(f"scopes {sorted(scopes)} of boundary {boundary.name!r} map to different token roles; ask for them in separate grants")
