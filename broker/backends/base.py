"""The Backend protocol: mint a credential for one boundary and hand back a revocable handle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from broker.config import BoundaryConfig
from broker.errors import BrokerError


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
    cnf_x5t: str | None = None
    authorization_details: tuple[dict[str, str], ...] = ()  # RFC 9396, e.g. one mcp_tool_call binding
    principal: str | None = None  # a derived token's `sub`: whom it acts for (None: `subject` itself)
    act: Mapping[str, Any] | None = None  # RFC 8693 §4.1: the delegation chain, current actor outermost
    txn: Mapping[str, Any] | None = None  # a transaction token's own claims: aud, txn, req_wl, tctx, rctx


@dataclass(frozen=True)
class Minted:
    """A fresh credential: `credential` goes to the caller once; only `handle` and `fingerprint` are stored."""

    credential: dict[str, Any]
    handle: str
    fingerprint: str
    parent_handle: str | None = None  # what it hangs off, when revoking that ends it too (BatchRevoker.revoke_many)


class Backend(Protocol):
    """Mints and revokes the credentials of one boundary kind."""

    kind: str
    calls_out: bool  # minting calls another system (it may wait), or only signs here

    def mint(self, request: MintRequest) -> Minted:
        """Create the credential; raises BackendUnavailable when the downstream system fails."""
        ...

    def revoke(self, boundary: BoundaryConfig, handle: str) -> None:
        """Make the credential unusable; idempotent (already gone is success); raises BackendUnavailable."""
        ...


class BatchRevoker(Protocol):
    """Optional part of a backend: revoke many handles of one boundary in few calls (Vault prefix, batches)."""

    def revoke_many(
        self, boundary: BoundaryConfig, handles: Sequence[str], *, whole_boundary: bool = False,
        parents: Mapping[str, str] | None = None,
    ) -> dict[str, str]:  # fmt: skip
        """Revoke every handle; answer `{handle: error}` for the ones that failed (empty: all done).

        `whole_boundary` means the handles are every live grant of the boundary and the boundary is
        frozen, so one prefix revocation (`sys/leases/revoke-prefix`) may replace thousands of calls.
        `parents` (handle → `Minted.parent_handle`) names the handles whose parent may be revoked
        whole: every live grant under it is being revoked and its subject is frozen.
        """
        ...


def revoke_many(
    backend: Backend, boundary: BoundaryConfig, handles: Sequence[str], *, whole_boundary: bool = False, workers: int = 8,
    parents: Mapping[str, str] | None = None,
) -> dict[str, str]:  # fmt: skip
    """The backend's own `revoke_many` when it has one, else `revoke` on a bounded thread pool."""
    if not handles:
        return {}
    batch = getattr(backend, "revoke_many", None)
    if batch is not None:
        return batch(boundary, handles, whole_boundary=whole_boundary, parents=parents)
    return revoke_each(backend, boundary, handles, workers=workers)


def revoke_each(backend: Backend, boundary: BoundaryConfig, handles: Sequence[str], *, workers: int = 8) -> dict[str, str]:
    """`revoke` per handle on at most `workers` threads; `{handle: error}` for the ones that failed."""
    if not handles:
        return {}

    def one(handle: str) -> tuple[str, str | None]:
        try:
            backend.revoke(boundary, handle)
            return handle, None
        except BrokerError as exc:
            return handle, exc.detail

    with ThreadPoolExecutor(max_workers=min(workers, len(handles))) as pool:
        return {handle: error for handle, error in pool.map(one, handles) if error is not None}

