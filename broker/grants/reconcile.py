"""Start-up reconcile: revoke backend credentials that no live grant row accounts for (promise 5).

A crash between the mint and the ledger commit leaves a credential in Vault with no grant row.
So can a mint whose answer Vault sent but the broker never got (a timeout), or a failed revoke
after a failed ledger write. Backends that can list what they minted (`live_handles`) are asked
for every handle older than `grace` seconds; a handle that is not the handle of an `active` or
`revoke_pending` grant is revoked and a `reconciled` event is chained. The grace keeps the job
safe beside traffic and beside other replicas: a mint commits or is revoked within milliseconds,
so a handle older than the grace with no row is an orphan. The first pass runs before the broker
serves; later passes every `interval` seconds. Active grants past expiry are the reaper's.

Only this deployment's credentials are touched: `vault_token` lists only tokens whose metadata
carries this deployment's id. Leases have no metadata; a backend whose `reconcile_unknown` is
False (another deployment shares its engine roles) has revoked only the leases this ledger knows
and has ended (a revocation Vault lost), never one that no row accounts for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from broker.backends import Backend
from broker.config import BoundaryConfig
from broker.errors import BrokerError
from broker.fingerprint import fingerprint
from broker.ledger import ACTIVE, FINAL_STATUSES, REVOKE_PENDING, Event, LedgerStore

log = logging.getLogger(__name__)


class Listing(Protocol):
    """Optional part of a backend: the handles it finds in the downstream system, per boundary."""

    kind: str

    def live_handles(self, boundaries: Iterable[BoundaryConfig], created_before: float) -> dict[str, list[str]]: ...


class Reconciler:
    """A worker job: a first pass before serving (retried until Vault answers), then every `interval`."""

    def __init__(
        self,
        backends: dict[str, Backend],
        boundaries: list[BoundaryConfig],
        ledger: LedgerStore,
        *,
        grace: float = 30.0,
        interval: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backends = {id(b): b for b in backends.values() if hasattr(b, "live_handles")}
        self._boundaries = boundaries
        self._ledger = ledger
        self._grace, self._interval, self._clock = grace, interval, clock
        self._next_run = clock()
        self.passes = 0

    def run(self) -> int:
        """When due, revoke orphans of every listing backend; returns how many were revoked."""
        now = self._clock()
        if not self._backends or now < self._next_run:
            return 0
        revoked = sum(self._reconcile(backend, now - self._grace) for backend in self._backends.values())
        self._next_run, self.passes = now + self._interval, self.passes + 1
        return revoked

    def _reconcile(self, backend: Listing, created_before: float) -> int:
        found = backend.live_handles(self._boundaries, created_before)
        revoked = 0
        for name, handles in found.items():
            orphans = set(handles) - self._live(name)
            if not getattr(backend, "reconcile_unknown", True):
                orphans &= self._ended(name)
            revoked += sum(self._revoke(backend, name, handle) for handle in sorted(orphans))
        return revoked

    def _live(self, boundary: str) -> set[str]:
        rows = self._ledger.grants(boundary=boundary, status=ACTIVE) + self._ledger.grants(
            boundary=boundary, status=REVOKE_PENDING
        )
        return {row.handle for row in rows}

    def _ended(self, boundary: str) -> set[str]:
        return {row.handle for row in self._ledger.grants(boundary=boundary) if row.status in FINAL_STATUSES}

    def _revoke(self, backend: Listing, boundary_name: str, handle: str) -> bool:
        boundary = next(b for b in self._boundaries if b.name == boundary_name)
        try:
            backend.revoke(boundary, handle)  # type: ignore[attr-defined]
        except BrokerError as exc:
            log.warning("reconcile could not revoke a %s orphan of %s: %s", backend.kind, boundary_name, exc.code)
            raise
        detail = {"backend": backend.kind, "handle_fp": fingerprint(handle, short=True), "reason": "no live grant row"}
        self._ledger.record(Event(kind="reconciled", boundary=boundary_name, actor="broker:reconcile", detail=detail))
        return True
